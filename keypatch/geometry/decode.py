"""Decoding any image input to 8-bit RGB: one documented rule per kind of input.

Every file, PIL image and numpy array goes through :func:`to_rgb8`, so the command line and the
Python API read an image the same way. The rules:

Files and PIL images
    - **Formats**: whatever Pillow reads (PNG, JPEG, TIFF, WebP, BMP, GIF, PPM, ...).
    - **EXIF orientation** is applied (the image is used upright, as viewers and annotation tools
      show it); the patch grid refers to the upright image.
    - **Modes**: 1-bit and 8-bit grayscale, palette, RGB, CMYK, YCbCr, LAB and HSV are converted to
      RGB by Pillow. 16-bit grayscale (``I;16*``) is scaled by 65535 and rounded to 8 bits; 32-bit
      integer (``I``) by 65535 too, and a value outside ``[0, 65535]`` is a ValueError. An image of
      either mode whose values all lie in 0-255 (not all 0) holds 8-bit values in a 16-bit container:
      at its declared scale it would decode black, so it is refused with a ValueError saying how to
      convert it (files too: viewers show such a file black, and no guess is made). 32-bit float
      (``F``) must lie in ``[0, 1]``. 16-bit RGB(A) files are read by Pillow at 8 bits per channel.
    - **Alpha** (RGBA, LA, PA, palette transparency) is dropped: the stored colour of every pixel is
      used, as ``Image.convert("RGB")`` and the MAE's training loaders do.
    - **Animated** images (GIF, WebP, APNG, multi-page TIFF): the first frame is used.
    - Colour profiles (ICC) are not applied.

Numpy arrays
    ``HxW`` (gray), ``HxWx1``, ``HxWx3`` or ``HxWx4`` (alpha dropped), channels last.
    - ``bool``: False = black, True = white.
    - unsigned integers: scaled by the dtype's range (``uint8`` as is, ``uint16`` / 65535, ...).
    - signed integers: scaled by the dtype's non-negative range (``int16`` / 32767, ...); a negative
      value is a ValueError. An array wider than 8 bits whose values all lie in 0-255 (not all 0:
      ``uint16``, ``int16`` or ``int64`` holding 8-bit values) is refused with a message saying how to
      convert it (``arr.astype(np.uint8)``): at its dtype's scale it would be nearly black.
    - floats: values in ``[0, 1]``; a value outside that range, NaN or inf is a ValueError naming
      the range found.

The result is resized (bicubic by default, bilinear on request; no crop: a non-square image is
squashed, as the KPP reference code does) by :func:`keypatch.geometry.load_image`. What is changed
on purpose (alpha dropped, first frame, squashed, rotated by EXIF) is recorded in
:class:`InputNotes`, which the commands report once per run.
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

NOTE_TEXT: dict[str, tuple[str, str]] = {
    "alpha": ("had an alpha channel: it was dropped (the stored colours are used)",
              "had an alpha channel: it was dropped (the stored colours are used)"),
    "animated": ("had several frames: the first frame was used", "had several frames: the first frame was used"),
    "exif": ("carried an EXIF orientation: it was rotated upright",
             "carried an EXIF orientation: they were rotated upright"),
    "squashed": ("was not square: it was squashed to the model's square size without cropping (as KPP does)",
                 "were not square: squashed to the model's square size without cropping (as KPP does)"),
}
"""What each kind of deliberate change means: ``(one image, several images)``."""


def note_text(kind: str, count: int = 1) -> str:
    """The sentence for ``count`` images with change ``kind``, without the examples."""
    one, many = NOTE_TEXT[kind]
    return f"an image {one}" if count == 1 else f"{count} images {many}"


class InputNote(UserWarning):
    """An image was changed on purpose while loading (alpha dropped, first frame, squashed, rotated)."""


class ImageWarning(UserWarning):
    """An image could not be read; it was skipped and nothing was computed for it."""


class ImageSizeWarning(UserWarning):
    """An image is so large that Pillow warns of a decompression bomb (the file is named)."""


@dataclass
class InputNotes:
    """Deliberate changes made while loading images, counted per kind with example names.

    Pass one to :func:`keypatch.geometry.load_image` to collect the notes instead of warning at
    each image; :meth:`lines` gives one line per kind for a run's summary.
    """

    counts: dict[str, int] = field(default_factory=dict)
    examples: dict[str, list[str]] = field(default_factory=dict)

    def add(self, kind: str, name: str) -> None:
        """Record that image ``name`` had change ``kind`` (a key of :data:`NOTE_TEXT`)."""
        self.counts[kind] = self.counts.get(kind, 0) + 1
        ex = self.examples.setdefault(kind, [])
        if len(ex) < 2:
            ex.append(name)

    def lines(self) -> list[str]:
        """One sentence per kind, e.g. ``"3 images were not square: ... (e.g. a.jpg, b.jpg)"``."""
        return [f"{note_text(kind, n)} ({'e.g. ' if n > 1 else ''}{', '.join(self.examples[kind])})"
                for kind, n in sorted(self.counts.items())]


Note = Callable[[str], None]


_SAID: set[str] = set()
"""The kinds of note already warned in this process (:func:`note_once`)."""


def note_once(kind: str, name: str, stacklevel: int = 3) -> None:
    """Warn an :class:`InputNote` of ``kind``, naming the image ``name``, the first time this process
    meets it, and never again (whatever the warning filters: Python's own "once per place" would
    repeat it at every call site); the warning says that later images are not named."""
    if kind not in _SAID:
        _SAID.add(kind)
        warnings.warn(f"{note_text(kind)} ({name}; said once, for the first such image)", InputNote,
                      stacklevel=stacklevel + 1)


def reset_notes() -> None:
    """Forget which notes were given, so each kind is warned again once (for tests and long sessions)."""
    _SAID.clear()


def _note_to(notes: InputNotes | None, name: str) -> Note:
    if notes is not None:
        return lambda kind: notes.add(kind, name)
    return lambda kind: note_once(kind, name, stacklevel=4)


def open_image_file(path: str | Path) -> Image.Image:
    """Open and fully read the image file at ``path``.

    Raises
    ------
    FileNotFoundError
        If there is no file there.
    ValueError
        If Pillow cannot read it (the message names the file). A decompression-bomb warning is
        re-issued as :class:`ImageSizeWarning` naming the file.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no image file at {path}")
    return _open_fully(path, str(path))


def open_image_bytes(data: bytes, name: str) -> Image.Image:
    """Open and fully read an image file's bytes (e.g. a Ray Dataset's ``bytes`` column) as
    :func:`open_image_file` reads a file; ``name`` stands for the file in messages."""
    return _open_fully(io.BytesIO(bytes(data)), name)


def _open_fully(source: Path | io.BytesIO, name: str) -> Image.Image:
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always", Image.DecompressionBombWarning)
        im = None
        try:
            im = Image.open(source)
            im.load()
        except Exception as exc:  # Pillow raises several types for bad files
            if im is not None:
                im.close()  # a truncated file: no "unclosed file" warning besides the message
            if isinstance(exc, Image.DecompressionBombError):
                raise ValueError(f"{name}: {exc}") from exc
            why = "its format is not one Pillow reads" if isinstance(exc, UnidentifiedImageError) else exc
            raise ValueError(f"{name} is not a readable image: {why}") from exc
    for w in caught:
        if issubclass(w.category, Image.DecompressionBombWarning):
            warnings.warn(f"{name}: {w.message}", ImageSizeWarning, stacklevel=4)
        else:
            warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
    return im


def _pil_to_rgb8(im: Image.Image, name: str, note: Note) -> np.ndarray:
    if getattr(im, "n_frames", 1) > 1:
        im.seek(0)
        note("animated")
    orientation = im.getexif().get(0x0112, 1)
    if orientation not in (0, 1):
        im = ImageOps.exif_transpose(im)
        note("exif")
    mode = im.mode
    if mode.startswith("I;16") or mode == "I":
        arr = np.asarray(im)
        lo, hi = int(arr.min()), int(arr.max())
        if lo < 0 or hi > 65535:
            raise ValueError(f"{name}: 32-bit integer pixels must lie in [0, 65535] (read as 16-bit), "
                             f"found [{lo}, {hi}]")
        if 0 < hi <= 255:
            raise ValueError(
                f"{name}: a {'16' if mode != 'I' else '32'}-bit image whose values all lie in 0-255 (at most {hi}) "
                "would come out black at its 16-bit scale (0-65535); it holds 8-bit values: save it as 8-bit, or "
                "pass Image.fromarray(np.asarray(im).astype(np.uint8))")
        return _gray(np.round(arr.astype(np.float64) * (255.0 / 65535.0)).astype(np.uint8))
    if mode == "F":
        return _gray(_float_to_u8(np.asarray(im), f"{name}: 32-bit float pixels"))
    if mode in ("RGBA", "RGBa", "LA", "La", "PA") or (mode == "P" and "transparency" in im.info):
        note("alpha")
    return np.asarray(im.convert("RGB"))


def _gray(arr: np.ndarray) -> np.ndarray:
    return np.repeat(arr[..., None], 3, axis=-1)


def _float_to_u8(arr: np.ndarray, what: str) -> np.ndarray:
    if not np.isfinite(arr).all():
        raise ValueError(f"{what} must be finite numbers in [0, 1], found NaN or inf")
    lo, hi = float(arr.min()), float(arr.max())
    if lo < 0.0 or hi > 1.0:
        hint = " (divide by 255 for 8-bit values)" if hi <= 255.0 and hi > 1.0 and lo >= 0 else ""
        raise ValueError(f"{what} must lie in [0, 1], found [{lo:g}, {hi:g}]{hint}")
    return np.round(arr.astype(np.float64) * 255.0).astype(np.uint8)


def _a(dtype: np.dtype) -> str:
    return f"{'an' if str(dtype)[0] in 'aeiou' else 'a'} {dtype}"


def _int_to_u8(arr: np.ndarray, what: str) -> np.ndarray:
    info = np.iinfo(arr.dtype)
    if info.min < 0 and int(arr.min()) < 0:
        raise ValueError(f"{what}: {_a(arr.dtype)} array is scaled by its non-negative range [0, {info.max}]; "
                         f"found a negative value ({int(arr.min())})")
    if arr.dtype == np.uint8:
        return arr
    hi = int(arr.max())
    if info.bits > 8 and 0 < hi <= 255:
        raise ValueError(
            f"{what}: {_a(arr.dtype)} array is scaled by the {arr.dtype} range [0, {info.max}], and its values "
            f"all lie in 0-255 (at most {hi}): they would come out black; convert it to the dtype its values were "
            "made for (arr.astype(np.uint8) for 0-255, arr.astype(np.uint16) for 0-65535) or to floats in [0, 1]")
    return np.round(arr.astype(np.float64) * (255.0 / info.max)).astype(np.uint8)


def _array_to_rgb8(arr: np.ndarray, note: Note) -> np.ndarray:
    what = f"an array of shape {arr.shape}"
    if arr.ndim == 3 and arr.shape[0] in (1, 3, 4) and arr.shape[-1] not in (1, 2, 3, 4):
        raise ValueError(f"{what} looks channels-first; arrays are HxWxC (use arr.transpose(1, 2, 0))")
    if arr.ndim == 3 and arr.shape[-1] in (2, 4):
        note("alpha")
        arr = arr[..., :-1]
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim not in (2, 3) or (arr.ndim == 3 and arr.shape[-1] != 3) or 0 in arr.shape:
        raise ValueError(f"expected an HxW, HxWx1, HxWx3 or HxWx4 array, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        u8 = arr.astype(np.uint8) * 255
    elif np.issubdtype(arr.dtype, np.integer):
        u8 = _int_to_u8(arr, what)
    elif np.issubdtype(arr.dtype, np.floating):
        u8 = _float_to_u8(arr, f"{what}: float values")
    else:
        raise TypeError(f"cannot read an image from a numpy array of dtype {arr.dtype}")
    return _gray(u8) if u8.ndim == 2 else np.ascontiguousarray(u8)


def to_rgb8(image: str | Path | bytes | Image.Image | np.ndarray, notes: InputNotes | None = None,
            name: str | None = None) -> np.ndarray:
    """An image as an ``HxWx3`` uint8 array, by the rules in this module's docstring.

    Parameters
    ----------
    image : path, bytes, PIL image or numpy array
        The input (bytes: an image file's, read as the file would be).
    notes : InputNotes, optional
        Where to record deliberate changes; without it each kind is warned once per process
        (:class:`InputNote`).
    name : str, optional
        The image's name in notes and messages (default: the path, or ``"image"``).

    Raises
    ------
    FileNotFoundError, ValueError, TypeError
        A missing file; an unreadable file or values out of the documented range; an unsupported type.
    """
    if isinstance(image, (str, Path)):
        name = name or str(image)
        with open_image_file(image) as im:
            return _pil_to_rgb8(im, name, _note_to(notes, name))
    if isinstance(image, (bytes, bytearray, memoryview)):  # an image file's bytes
        name = name or "image"
        with open_image_bytes(image, name) as im:
            return _pil_to_rgb8(im, name, _note_to(notes, name))
    name = name or "image"
    if isinstance(image, Image.Image):
        return _pil_to_rgb8(image, name, _note_to(notes, name))
    if isinstance(image, np.ndarray):
        return _array_to_rgb8(image, _note_to(notes, name))
    raise TypeError(f"cannot load an image from {type(image).__name__} (give a path, PIL image, numpy array "
                    "or normalised tensor)")
