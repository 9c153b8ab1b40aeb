"""The test photos: real photographs shipped inside scikit-image, scikit-learn and matplotlib.

The embedded model was never trained on them, so they measure generalisation. Each loader is
tried offline; photos whose package is missing (or which would need a download) are skipped.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np


def _skimage(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return getattr(skimage.data, name)()

    return load


def _motorcycle(side: int) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import skimage.data

        return skimage.data.stereo_motorcycle()[side]

    return load


def _sklearn(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        from sklearn.datasets import load_sample_image

        return load_sample_image(name)

    return load


def _matplotlib(name: str) -> Callable[[], np.ndarray]:
    def load() -> np.ndarray:
        import matplotlib.cbook
        from PIL import Image

        with matplotlib.cbook.get_sample_data(name) as f:
            return np.asarray(Image.open(f).convert("RGB"))

    return load


TEST_PHOTOS: dict[str, Callable[[], np.ndarray]] = {
    "astronaut": _skimage("astronaut"),
    "chelsea": _skimage("chelsea"),
    "coffee": _skimage("coffee"),
    "rocket": _skimage("rocket"),
    "motorcycle_left": _motorcycle(0),
    "motorcycle_right": _motorcycle(1),
    "hubble_deep_field": _skimage("hubble_deep_field"),
    "immunohistochemistry": _skimage("immunohistochemistry"),
    "retina": _skimage("retina"),
    "camera": _skimage("camera"),
    "china": _sklearn("china.jpg"),
    "flower": _sklearn("flower.jpg"),
    "grace_hopper": _matplotlib("grace_hopper.jpg"),
}
"""Name -> loader of an HxWx3 (or HxW) uint8 array."""


def load_test_photos(names: list[str] | None = None) -> dict[str, np.ndarray]:
    """The test photos available offline, as RGB uint8 arrays (grey ones stacked to 3 channels)."""
    out = {}
    for name in names or list(TEST_PHOTOS):
        try:
            arr = np.asarray(TEST_PHOTOS[name]())
        except Exception:  # missing package or data that would need a download
            continue
        if arr.ndim == 2:
            arr = np.stack([arr] * 3, axis=-1)
        out[name] = np.ascontiguousarray(arr[..., :3]).astype(np.uint8)
    return out


def save_test_photos(folder: Path, names: list[str] | None = None) -> list[Path]:
    """Write the available test photos as PNG files into ``folder``; returns their paths."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, arr in load_test_photos(names).items():
        paths.append(folder / f"{name}.png")
        Image.fromarray(arr).save(paths[-1])
    return paths
