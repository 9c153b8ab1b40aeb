"""From an image input to the MAE's normalised pixels, in numpy only (no torch).

:func:`decode_pixels` is what :func:`keypatch.geometry.load_image` does to a file, PIL image or
numpy array, without torch: the Ray engine's decoding tasks run it in worker processes that never
import torch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from keypatch.geometry.decode import InputNotes, note_once, to_rgb8

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

RESIZE_FILTERS = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}
"""How an image is resized to the model's side: ``"bicubic"`` (keypatch's default, MAE's evaluation
transform) or ``"bilinear"`` (what the KPP authors' ``transforms.Resize((224, 224))`` does to a PIL
image: PIL's antialiased bilinear filter)."""


MIN_SIDE = 16
"""The smallest image side read, in pixels: one patch of the models' 16x16 patches. A smaller
image has less than a pixel per patch of one row or column, so its patches could not be mapped
back to it (an annotation of area 0) and its key patches would be those of an upscaled blur."""


def check_resize(resize: str) -> str:
    """``resize`` if it names one of :data:`RESIZE_FILTERS`; a ValueError naming them otherwise."""
    if resize not in RESIZE_FILTERS:
        raise ValueError(f"resize must be one of {', '.join(RESIZE_FILTERS)}, got {resize!r}")
    return resize


def resized_rgb8(image: str | Path | bytes | Image.Image | np.ndarray, size: int = 224,
                 notes: InputNotes | None = None, name: str | None = None, resize: str = "bicubic") -> np.ndarray:
    """One image as ``(size, size, 3)`` uint8 pixels: read by the rules of :mod:`keypatch.geometry.decode`
    and resized with ``resize``'s filter without cropping (a non-square image is squashed and noted).
    :func:`decode_pixels` is :func:`normalize_rgb8` of this."""
    check_resize(resize)
    name = name or (str(image) if isinstance(image, (str, Path)) else "image")
    rgb = to_rgb8(image, notes, name)
    if min(rgb.shape[:2]) < MIN_SIDE:
        raise ValueError(f"{name} is {rgb.shape[1]}x{rgb.shape[0]} pixels, smaller than one {MIN_SIDE}x{MIN_SIDE} "
                         "patch: too small to propose patches of")
    if rgb.shape[0] != rgb.shape[1]:
        if notes is not None:
            notes.add("squashed", name)
        else:
            note_once("squashed", name, stacklevel=4)
    return np.asarray(Image.fromarray(rgb).resize((size, size), RESIZE_FILTERS[resize]))


def normalize_rgb8(rgb: np.ndarray) -> np.ndarray:
    """``(H, W, 3)`` uint8 pixels as the MAE's ``(3, H, W)`` float32 input: scaled to ``[0, 1]`` and
    normalised with the ImageNet mean and std."""
    x = np.asarray(rgb, dtype=np.float32).transpose(2, 0, 1) / np.float32(255.0)
    mean = np.asarray(IMAGENET_MEAN, dtype=np.float32).reshape(3, 1, 1)
    std = np.asarray(IMAGENET_STD, dtype=np.float32).reshape(3, 1, 1)
    return np.ascontiguousarray((x - mean) / std)


def decode_pixels(image: str | Path | bytes | Image.Image | np.ndarray, size: int = 224,
                  notes: InputNotes | None = None, name: str | None = None, resize: str = "bicubic") -> np.ndarray:
    """One image as a normalised ``(3, size, size)`` float32 array (see :func:`keypatch.geometry.load_image`):
    :func:`normalize_rgb8` of :func:`resized_rgb8`."""
    return normalize_rgb8(resized_rgb8(image, size, notes, name, resize))
