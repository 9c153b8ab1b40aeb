"""What the annotation-tool exports share: patches mapped to each image's original resolution, and
relative image references. The formats are :mod:`keypatch.exports.coco`,
:mod:`keypatch.exports.labelstudio` and :mod:`keypatch.exports.masks`.

The paper's purpose is active learning for segmentation: annotators label only the key patches.
The formats map each kept patch back through the resize (the image was squashed to the model's
square side, so patch column ``c`` covers ``[round(c W / cols), round((c + 1) W / cols))`` of the
original width ``W``, and likewise for rows, :func:`patch_box`) and write:

* ``coco``: COCO JSON, one annotation per kept patch (its box, its mask as an
  uncompressed RLE with ``iscrowd: 1`` as COCO stores masks, and its pick order and loss under
  ``"keypatch"``); pycocotools reads it (``COCO(path).annToMask``).
* ``labelstudio``: Label Studio import tasks, one per image, with the kept patches as a
  ``BrushLabels`` pre-annotation in Label Studio's RLE (the rle-pack format its brush tool and
  label-studio-sdk's converter read), and the labelling config to create the project with.
* ``masks``: one palette PNG mask per image (0 background, 1 key patch) in the
  Pascal VOC layout CVAT imports (``SegmentationClass/``, ``ImageSets/Segmentation/default.txt``,
  ``labelmap.txt``).

Sizes are those of the image as keypatch reads it (after its EXIF orientation is applied); an
image smaller than one patch per grid cell (fewer pixels a side than the grid has patches) is
left out with a warning naming it, as its patches would have no pixels.

Image references are relative (:class:`ImageRefs`), so an export is importable as it is: COCO's
``file_name`` is the path relative to the image root (default: the images' common folder), and a
Label Studio task's ``data.image`` is a URL prefix followed by that relative path (default: Label
Studio's local-files URL, ``/data/local-files/?d=ROOTNAME/REL``, served when Label Studio runs with
``LABEL_STUDIO_LOCAL_FILES_SERVING_ENABLED=true`` and
``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` set to the root's parent folder, with a Local Storage
of the root added to the project).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from urllib.parse import quote

import numpy as np
from PIL import Image

from keypatch.exports.patch_ids import unique_names
from keypatch.geometry import PatchGrid
from keypatch.store.record import Record

LABEL = "key_patch"
"""The one label of every export."""
MASK_COLOR = (128, 0, 0)
"""The key patches' colour in the mask PNGs (Pascal VOC's first class colour)."""


LOCAL_FILES = "/data/local-files/?d="
"""Label Studio's URL for a file of a Local Storage, relative to its document root."""


@dataclass(frozen=True)
class ImageRefs:
    """How an export refers to image files: relative to ``root``, or under a URL ``url`` prefix.

    Parameters
    ----------
    root : Path
        The folder image paths are made relative to (every image must lie under it).
    url : str, optional
        Prefix of a Label Studio task's image URL, followed by the URL-quoted relative path
        (``https://host/images/``, ``/data/local-files/?d=photos/``); default
        ``/data/local-files/?d=ROOTNAME/``.
    """

    root: Path
    url: str | None = None

    @classmethod
    def common(cls, paths: Sequence[str | Path], root: str | Path | None = None, url: str | None = None) -> ImageRefs:
        """References for ``paths``: relative to ``root`` (default: their common folder)."""
        if root is None:
            parents = [str(Path(p).absolute().parent) for p in paths]
            root = os.path.commonpath(parents) if parents else "."
        return cls(Path(root).absolute(), url)

    def relative(self, path: str | Path) -> str:
        """``path`` relative to the root, with ``/`` separators; ValueError if it is not under it."""
        p = Path(path).absolute()
        try:
            return p.relative_to(self.root).as_posix()
        except ValueError:
            raise ValueError(f"the image {p} is not under the image root {self.root}; give --image-root a folder "
                             "that holds every exported image") from None

    def labelstudio(self, path: str | Path) -> str:
        """The image's URL in a Label Studio task."""
        prefix = self.url if self.url is not None else f"{LOCAL_FILES}{quote(self.root.name)}/"
        return prefix + quote(self.relative(path), safe="/")

    @property
    def document_root(self) -> Path:
        """The ``LABEL_STUDIO_LOCAL_FILES_DOCUMENT_ROOT`` the default URLs are relative to."""
        return self.root.parent


def image_size(path: str | Path | BinaryIO) -> tuple[int, int]:
    """``(width, height)`` of an image file (a path or an open binary file) as keypatch reads it, EXIF
    orientation applied, from its header alone: nothing is decoded."""
    with Image.open(path) as im:
        w, h = im.size
        return (h, w) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)


def patch_box(grid: PatchGrid, patch: int, width: int, height: int) -> tuple[int, int, int, int]:
    """``(x0, y0, x1, y1)`` (end exclusive) of ``patch`` in an image of ``width x height`` pixels.

    The boxes of all patches tile the image exactly: no gap, no overlap.
    """
    row, col = grid.rc(patch)
    x0, x1 = round(col * width / grid.cols), round((col + 1) * width / grid.cols)
    y0, y1 = round(row * height / grid.rows), round((row + 1) * height / grid.rows)
    return x0, y0, x1, y1


def kept_mask(grid: PatchGrid, patches: Sequence[int], width: int, height: int) -> np.ndarray:
    """``(height, width)`` bool mask of the kept ``patches`` at the original resolution."""
    mask = np.zeros((height, width), dtype=bool)
    for p in patches:
        x0, y0, x1, y1 = patch_box(grid, int(p), width, height)
        mask[y0:y1, x0:x1] = True
    return mask


def coco_rle(mask: np.ndarray) -> dict:
    """COCO's uncompressed RLE of a bool mask: run lengths in column-major order, zeros first."""
    flat = mask.flatten(order="F").astype(np.uint8)
    change = np.flatnonzero(np.diff(flat)) + 1
    bounds = np.concatenate([[0], change, [flat.size]])
    counts = np.diff(bounds).tolist()
    if flat.size and flat[0]:
        counts = [0, *counts]
    return {"size": [int(mask.shape[0]), int(mask.shape[1])], "counts": counts}


def labelstudio_rle(mask: np.ndarray) -> list[int]:
    """Label Studio's brush RLE of a bool mask (RGBA bytes, 255 where kept, in rle-pack's bit format).

    The stream: the value count (32 bits), the word size less one (5 bits: 8-bit words), four run
    size classes less one (4 bits each: 3, 4, 8, 16 bits), then runs: a 1 bit (a repeated value),
    the size class (2 bits), the run length less one in that class's bits, and the value.
    """
    values = np.repeat(mask.reshape(-1).astype(np.uint8) * 255, 4)
    sizes = (3, 4, 8, 16)
    bits = [f"{values.size:032b}", f"{8 - 1:05b}", *(f"{s - 1:04b}" for s in sizes)]
    change = np.flatnonzero(np.diff(values)) + 1
    starts = np.concatenate([[0], change])
    lengths = np.diff(np.concatenate([starts, [values.size]]))
    for start, length in zip(starts.tolist(), lengths.tolist(), strict=True):
        value = f"{int(values[start]):08b}"
        while length > 0:
            run = min(length, 1 << 16)
            cls = next(i for i, s in enumerate(sizes) if run <= 1 << s)
            bits.append(f"1{cls:02b}{run - 1:0{sizes[cls]}b}{value}")
            length -= run
    stream = "".join(bits)
    stream += "0" * (-len(stream) % 8)
    return [int(stream[i : i + 8], 2) for i in range(0, len(stream), 8)]


def with_sizes(records: Sequence[Record], grid: PatchGrid) -> list[tuple[str, Record, int, int]]:
    """``(name, record, width, height)`` for every record whose image can be read and has a pixel
    for each patch; the others are left out with an :class:`~keypatch.exports.base.ExportWarning`."""
    import warnings

    from keypatch.exports.base import ExportWarning

    out = []
    for name, r in zip(unique_names(records), records, strict=True):
        try:
            w, h = image_size(r.image_path)
        except OSError as exc:
            warnings.warn(f"{r.image_path}: cannot read it ({exc}); left out of the annotations", ExportWarning,
                          stacklevel=3)
            continue
        if w < grid.cols or h < grid.rows:
            warnings.warn(f"{r.image_path} is {w}x{h} pixels, smaller than one pixel per patch of the {grid.cols}x"
                          f"{grid.rows} grid: its patches have no pixels; left out of the annotations", ExportWarning,
                          stacklevel=3)
            continue
        out.append((name, r, w, h))
    return out
