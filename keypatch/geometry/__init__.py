"""Image geometry: the patch grid, image loading/normalisation and (un)patchify."""

from typing import TYPE_CHECKING

from keypatch._lazy import lazy_attributes
from keypatch.geometry.decode import ImageWarning, InputNote, InputNotes, to_rgb8
from keypatch.geometry.files import IMAGE_SUFFIXES, list_image_files
from keypatch.geometry.grid import COUNT_RULES, PatchGrid
from keypatch.geometry.pixels import IMAGENET_MEAN, IMAGENET_STD, RESIZE_FILTERS, check_resize

if TYPE_CHECKING:
    from keypatch.geometry.image import (
        ImageLike,
        denormalize,
        load_image,
        load_images,
        load_readable,
        normalize,
        patchify,
        to_pil,
        unpatchify,
    )

__all__ = [
    "COUNT_RULES",
    "IMAGE_SUFFIXES",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageLike",
    "RESIZE_FILTERS",
    "check_resize",
    "ImageWarning",
    "InputNote",
    "InputNotes",
    "PatchGrid",
    "denormalize",
    "load_image",
    "list_image_files",
    "load_images",
    "load_readable",
    "normalize",
    "patchify",
    "to_pil",
    "to_rgb8",
    "unpatchify",
]

_TORCH = ["ImageLike", "denormalize", "load_image", "load_images", "load_readable", "normalize", "patchify", "to_pil",
          "unpatchify"]
__getattr__, __dir__ = lazy_attributes(__name__, dict.fromkeys(_TORCH, "keypatch.geometry.image"))  # torch on first use
