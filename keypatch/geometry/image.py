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

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

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


def _to_pil(image: ImageLike) -> Image.Image:
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise FileNotFoundError(f"no image file at {path}")
        try:
            with Image.open(path) as im:
                im.load()
                return im.convert("RGB")
        except Exception as exc:  # PIL raises several types for bad files
            raise ValueError(f"{path} is not a readable image: {exc}") from exc
    if isinstance(image, Image.Image):
        return image.convert("RGB")
    if isinstance(image, np.ndarray):
        arr = image
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        if arr.ndim != 3 or arr.shape[-1] not in (3, 4):
            raise ValueError(f"expected an HxWx3 array, got shape {arr.shape}")
        if arr.dtype != np.uint8:
            arr = (np.clip(arr, 0, 1) * 255).round().astype(np.uint8)
        return Image.fromarray(arr[..., :3])
    raise TypeError(f"cannot load an image from {type(image).__name__}")


def load_image(image: ImageLike, size: int = 224) -> torch.Tensor:
    """Load one image as a normalised ``(3, size, size)`` float32 tensor.

    Parameters
    ----------
    image : str, Path, PIL.Image, numpy array or torch.Tensor
        A file path (any format PIL reads), a PIL image, an ``HxWx3`` array (uint8, or float in
        ``[0, 1]``), or a tensor that is already normalised, of shape ``(3, size, size)``.
    size : int
        Output side; the image is resized (bicubic, no crop, as the KPP reference code does).

    Returns
    -------
    torch.Tensor
        ``(3, size, size)``, normalised with the ImageNet mean and std.
    """
    if isinstance(image, torch.Tensor):
        if image.shape != (3, size, size):
            raise ValueError(f"tensor images must be normalised (3, {size}, {size}), got {tuple(image.shape)}")
        return image.float()
    pil = _to_pil(image).resize((size, size), Image.Resampling.BICUBIC)
    x = torch.from_numpy(np.asarray(pil, dtype=np.float32).copy()).permute(2, 0, 1) / 255.0
    return normalize(x)


def load_images(images: Sequence[ImageLike] | ImageLike, size: int = 224) -> torch.Tensor:
    """Load one or many images into a ``(B, 3, size, size)`` normalised batch."""
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        return torch.stack([load_image(x, size) for x in images])
    if isinstance(images, (str, Path, Image.Image, np.ndarray, torch.Tensor)):
        images = [images]
    return torch.stack([load_image(x, size) for x in images])


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
