"""How a quantized dataset stores an image's kept patches: a mosaic of the patches, one image file.

The kept patches of an image (its pixels at the model's size, ``uint8``) are laid out in index order,
``cols`` patches per row (the grid's width, so patches of one grid row that are kept together stay
side by side), and the mosaic is encoded with a :class:`Codec`. The empty end of the last row is
black. Nothing of the dropped patches is stored.

Codecs are named ``png``, ``webp`` (both lossless), ``webp:Q`` and ``jpeg:Q`` (lossy, quality
``Q`` in 1-100). JPEG's 8x8 blocks (16x16 with its chroma subsampling) fall inside 16-pixel
patches, so a patch's JPEG error does not depend on its neighbours in the mosaic.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
from PIL import Image

CODECS = ("png", "webp", "webp:Q", "jpeg:Q")
"""The codec spellings :func:`parse_codec` reads."""

DEFAULT_CODEC = "webp"
"""Lossless WebP: the smallest lossless codec measured on the photos (docs/quantize.md)."""


@dataclass(frozen=True)
class Codec:
    """An image codec: ``name`` (``png``, ``webp``, ``jpeg``) and ``quality`` (None: lossless)."""

    name: str
    quality: int | None = None

    @property
    def lossless(self) -> bool:
        """Whether decoding gives back the encoded pixels exactly."""
        return self.quality is None

    @property
    def extension(self) -> str:
        """The file extension of its files (``png``, ``webp``, ``jpg``)."""
        return {"jpeg": "jpg"}.get(self.name, self.name)

    @property
    def spec(self) -> str:
        """The spelling :func:`parse_codec` reads back."""
        return self.name if self.quality is None else f"{self.name}:{self.quality}"

    def encode(self, pixels: np.ndarray) -> bytes:
        """``(H, W, 3)`` uint8 pixels as this codec's bytes (deterministic: same pixels, same bytes)."""
        buf = io.BytesIO()
        im = Image.fromarray(np.ascontiguousarray(pixels, dtype=np.uint8))
        if self.name == "png":
            im.save(buf, "PNG", compress_level=9)
        elif self.name == "webp":
            if self.quality is None:
                im.save(buf, "WEBP", lossless=True, quality=100, method=4, exact=True)
            else:
                im.save(buf, "WEBP", quality=self.quality, method=4)
        else:
            im.save(buf, "JPEG", quality=self.quality)
        return buf.getvalue()

    @staticmethod
    def decode(data: bytes) -> np.ndarray:
        """The ``(H, W, 3)`` uint8 pixels of an encoded image (any of the codecs)."""
        with Image.open(io.BytesIO(data)) as im:
            return np.asarray(im.convert("RGB"))


def parse_codec(spec: str | Codec) -> Codec:
    """The :class:`Codec` spelt ``spec`` (see :data:`CODECS`); a ValueError naming them otherwise."""
    if isinstance(spec, Codec):
        return spec
    name, _, q = str(spec).strip().lower().partition(":")
    name = {"jpg": "jpeg"}.get(name, name)
    if name == "png" and not q:
        return Codec("png")
    if name in ("webp", "jpeg") and (q or name == "webp"):
        if not q:
            return Codec("webp")
        if not q.isdigit() or not 1 <= int(q) <= 100:
            raise ValueError(f"codec quality must be an integer in 1-100, got {spec!r}")
        return Codec(name, int(q))
    raise ValueError(f"codec must be one of {', '.join(CODECS)} (Q a quality in 1-100), got {spec!r}")


def patch_pixels(pixels: np.ndarray, patch_size: int) -> np.ndarray:
    """``(H, W, 3)`` pixels as ``(N, p, p, 3)`` patches in row-major grid order."""
    h, w, c = pixels.shape
    p = patch_size
    return pixels.reshape(h // p, p, w // p, p, c).transpose(0, 2, 1, 3, 4).reshape(-1, p, p, c)


def pack(patches: np.ndarray, cols: int) -> np.ndarray:
    """``(k, p, p, 3)`` patches as one ``(rows*p, cols*p, 3)`` mosaic, ``cols`` per row."""
    k, p, _, c = patches.shape
    rows = -(-k // cols)
    grid = np.zeros((rows * cols, p, p, c), dtype=np.uint8)
    grid[:k] = patches
    return grid.reshape(rows, cols, p, p, c).transpose(0, 2, 1, 3, 4).reshape(rows * p, cols * p, c)


def unpack(mosaic: np.ndarray, k: int, patch_size: int) -> np.ndarray:
    """The first ``k`` ``(p, p, 3)`` patches of a mosaic made by :func:`pack`."""
    p = patch_size
    rows, cols = mosaic.shape[0] // p, mosaic.shape[1] // p
    if rows * cols < k:
        raise ValueError(f"a {mosaic.shape[1]}x{mosaic.shape[0]} mosaic holds {rows * cols} patches, not {k}")
    return patch_pixels(mosaic[: rows * p, : cols * p], p)[:k]


def canvas(patches: np.ndarray, indices: np.ndarray | list[int], side: int) -> np.ndarray:
    """A ``(side, side, 3)`` uint8 image holding ``patches`` at grid ``indices``, black elsewhere."""
    p = patches.shape[1]
    g = side // p
    out = np.zeros((g * g, p, p, 3), dtype=np.uint8)
    out[np.asarray(indices, dtype=np.int64)] = patches
    return out.reshape(g, g, p, p, 3).transpose(0, 2, 1, 3, 4).reshape(side, side, 3)
