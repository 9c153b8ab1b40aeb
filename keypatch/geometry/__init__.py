"""Image geometry: the patch grid, image loading/normalisation and (un)patchify."""

from keypatch.geometry.grid import PatchGrid
from keypatch.geometry.image import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    ImageLike,
    denormalize,
    load_image,
    load_images,
    normalize,
    patchify,
    to_pil,
    unpatchify,
)

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageLike",
    "PatchGrid",
    "denormalize",
    "load_image",
    "load_images",
    "normalize",
    "patchify",
    "to_pil",
    "unpatchify",
]
