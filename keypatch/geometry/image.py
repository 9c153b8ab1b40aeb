"""Loading images into the MAE's normalised pixel space, and patchify/unpatchify.

Pixel layout follows the official MAE: a patch is flattened in ``(row-in-patch, col-in-patch,
channel)`` order, so a 16x16 RGB patch is a vector of 768 values.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from keypatch.geometry.decode import InputNotes
from keypatch.geometry.pixels import IMAGENET_MEAN, IMAGENET_STD, RESIZE_FILTERS, check_resize, decode_pixels

__all__ = ["IMAGENET_MEAN", "IMAGENET_STD", "RESIZE_FILTERS", "ImageLike", "check_resize", "denormalize", "load_image",
           "load_images", "normalize", "patchify", "to_pil", "unpatchify"]

ImageLike = str | Path | Image.Image | np.ndarray | torch.Tensor
"""Anything :func:`load_image` accepts."""


def _stats(device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    mean = torch.tensor(IMAGENET_MEAN, device=device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, device=device).view(3, 1, 1)
    return mean, std


def normalize(x: torch.Tensor) -> torch.Tensor:
    """Map ``[0, 1]`` RGB of shape ``(..., 3, H, W)`` to ImageNet-normalised values."""
    mean, std = _stats(x.device)
    return (x - mean) / std


def denormalize(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`normalize`, clamped to ``[0, 1]``."""
    mean, std = _stats(x.device)
    return (x * std + mean).clamp(0.0, 1.0)


def _check_tensor(image: torch.Tensor, size: int) -> torch.Tensor:
    if image.dim() == 4 and image.shape[0] == 1:
        image = image[0]
    if image.shape != (3, size, size):
        raise ValueError(f"tensor images must be normalised (3, {size}, {size}), got shape {tuple(image.shape)}")
    if not image.is_floating_point():
        raise ValueError(f"a {str(image.dtype).replace('torch.', '')} tensor looks like raw pixels; tensors must be "
                         "ImageNet-normalised floats (keypatch.geometry.normalize(x / 255)), or pass the pixels as "
                         "a numpy HxWx3 array")
    x = image.detach().float()
    if not bool(torch.isfinite(x).all()):
        raise ValueError("the tensor holds NaN or inf")
    mean, std = _stats(x.device)
    lo, hi = (0 - mean) / std, (1 - mean) / std
    tol = 1e-3
    if bool((x < lo - tol).any()) or bool((x > hi + tol).any()):
        raise ValueError(f"the tensor's values [{float(x.min()):.3g}, {float(x.max()):.3g}] are outside the "
                         "ImageNet-normalised range of [0, 1] pixels (about [-2.12, 2.64]): it looks like raw "
                         "pixels; normalise it with keypatch.geometry.normalize(x / 255) or pass a numpy array")
    if float(x.min()) >= 0.0 and float(x.max()) <= 1.0:
        raise ValueError("the tensor's values all lie in [0, 1]: it looks like raw pixels, not normalised ones; "
                         "normalise it with keypatch.geometry.normalize(x), or pass it as a numpy HxWx3 float "
                         "array in [0, 1]")
    return x


def load_image(image: ImageLike, size: int = 224, notes: InputNotes | None = None,
               name: str | None = None, resize: str = "bicubic") -> torch.Tensor:
    """Load one image as a normalised ``(3, size, size)`` float32 tensor.

    Parameters
    ----------
    image : str, Path, PIL.Image, numpy array or torch.Tensor
        A file path, a PIL image or a numpy array, read by the rules of :mod:`keypatch.geometry.decode`
        (8-bit RGB first: EXIF orientation applied, alpha dropped, first frame, integer dtypes scaled
        by their range, floats in ``[0, 1]``); or a tensor that is already ImageNet-normalised, of
        shape ``(3, size, size)`` (an integer tensor, or one whose values look like raw pixels, is
        refused with a ValueError).
    size : int
        Output side; the image is resized without cropping (a non-square image is squashed, as
        the KPP reference code does).
    notes : InputNotes, optional
        Collects the deliberate changes (alpha dropped, first frame, squashed, rotated); without it
        each kind is warned once per process as an :class:`~keypatch.geometry.decode.InputNote`.
    name : str, optional
        The image's name in notes (default: its path).
    resize : {"bicubic", "bilinear"}
        PIL's resampling filter (:data:`RESIZE_FILTERS`); ``"bilinear"`` is the KPP authors' code.
        Tensors are taken as they are.

    Returns
    -------
    torch.Tensor
        ``(3, size, size)``, normalised with the ImageNet mean and std.
    """
    if isinstance(image, torch.Tensor):
        check_resize(resize)  # taken as it is, but a bad name is still an error
        return _check_tensor(image, size)
    return torch.from_numpy(decode_pixels(image, size, notes, name, resize))  # checks resize


def load_images(images: Sequence[ImageLike] | ImageLike, size: int = 224,
                notes: InputNotes | None = None, resize: str = "bicubic") -> torch.Tensor:
    """Load one or many images into a ``(B, 3, size, size)`` normalised batch (see :func:`load_image`).

    Raises
    ------
    ValueError
        If no image is given, or an image breaks :func:`load_image`'s rules.
    """
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        images = list(images)
    elif isinstance(images, (str, Path, Image.Image, np.ndarray, torch.Tensor)):
        images = [images]
    else:
        images = list(images)
    if not images:
        raise ValueError("no images given (an empty batch)")
    return torch.stack([load_image(x, size, notes, resize=resize) for x in images])


def load_readable(images: Sequence[ImageLike], size: int = 224, notes: InputNotes | None = None,
                  resize: str = "bicubic") -> tuple[list[int], torch.Tensor]:
    """Load the images that can be read, and skip the others with a warning each.

    Like :func:`load_images`, but an image that breaks :func:`load_image`'s rules (a missing or
    unreadable file, values out of range, too small) is reported with an
    :class:`~keypatch.geometry.decode.ImageWarning` naming it and left out, as ``keypatch propose``
    does, instead of ending the whole job.

    Returns
    -------
    kept : list of int
        The positions in ``images`` of the images loaded.
    batch : torch.Tensor
        ``(len(kept), 3, size, size)`` normalised.
    """
    import warnings

    from keypatch.geometry.decode import ImageWarning

    kept, loaded = [], []
    for i, image in enumerate(images):
        try:
            loaded.append(load_image(image, size, notes, resize=resize))
        except (OSError, ValueError) as exc:
            name = str(image) if isinstance(image, (str, Path)) else f"image {i}"
            text = str(exc) if name in str(exc) else f"{name}: {exc}"
            warnings.warn(f"{text}; skipped", ImageWarning, stacklevel=2)
            continue
        kept.append(i)
    batch = torch.stack(loaded) if loaded else torch.empty(0, 3, size, size)
    return kept, batch


def patchify(x: torch.Tensor, patch_size: int) -> torch.Tensor:
    """``(B, C, H, W)`` -> ``(B, N, p*p*C)`` in the MAE's ``(p, q, c)`` order."""
    b, c, h, w = x.shape
    p = patch_size
    gh, gw = h // p, w // p
    x = x.reshape(b, c, gh, p, gw, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, gh * gw, p * p * c)


def unpatchify(x: torch.Tensor, patch_size: int, channels: int = 3) -> torch.Tensor:
    """Inverse of :func:`patchify`: ``(B, N, p*p*C)`` -> ``(B, C, H, W)``."""
    b, n, _ = x.shape
    p = patch_size
    g = int(round(n**0.5))
    if g * g != n:
        raise ValueError(f"{n} patches do not form a square grid")
    x = x.reshape(b, g, g, p, p, channels)
    return x.permute(0, 5, 1, 3, 2, 4).reshape(b, channels, g * p, g * p)


def to_pil(x: torch.Tensor) -> Image.Image:
    """A normalised ``(3, H, W)`` tensor as an 8-bit PIL image."""
    arr = (denormalize(x.detach().float().cpu()).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)
    return Image.fromarray(arr)
