"""``QuantizedDataset``: a map-style torch Dataset over a quantized dataset, rebuilt by the MAE on first touch."""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from keypatch.data.reconstruction import model_for, rebuild, write_png
from keypatch.data.shards import MANIFEST, QuantizedFolder
from keypatch.geometry.image import to_pil
from keypatch.reconstructors import MAE
from keypatch.untrusted import output_path


def _to_tensor(image: Image.Image) -> torch.Tensor:
    """A PIL RGB image as a ``(3, H, W)`` float tensor in ``[0, 1]`` (torchvision's ``ToTensor``)."""
    return torch.from_numpy(np.asarray(image, dtype=np.float32) / np.float32(255.0)).permute(2, 0, 1)


class QuantizedDataset(torch.utils.data.Dataset):
    """The images of a quantized dataset, rebuilt by an MAE from their kept patches, with labels.

    ``dataset[i]`` is ``(transform(image), label)``: ``image`` the rebuilt ``PIL.Image`` at the
    model's size (kept patches pasted back), ``label`` the class index (-1 for a source without
    class folders). Without a ``transform``, the image comes as a ``(3, H, W)`` float tensor in
    ``[0, 1]`` (as torchvision's ``ToTensor`` gives it), so a ``DataLoader`` batches it as it is.
    Images are rebuilt in blocks of ``block`` consecutive indices: touching one
    rebuilds its block in one MAE pass and keeps the last ``cache_blocks`` blocks in memory, so a
    sequential pass costs one pass per block. With ``cache_dir``, rebuilt images are also written
    there (``KEY.png``) and read back on later touches, by any process.

    Works in a ``DataLoader`` with worker processes: a model given by its spec (the default: the
    manifest's model) is loaded in each worker on its first touch; one given as an :class:`MAE`
    is pickled to them.

    Parameters
    ----------
    root : path
        A folder written by :func:`keypatch.data.pipeline`; its manifest is checked whole on opening
        (:func:`keypatch.data.shards.check_manifest`: a ValueError naming the entry it refuses).
    model : MAE or str, optional
        The reconstructor (default: the model the patches were chosen with).
    transform : callable, optional
        Applied to each PIL image (default: a ``(3, H, W)`` float tensor in ``[0, 1]``).
    device : str
        Where the MAE runs (``"cpu"`` by default: DataLoader workers share no GPU context).
    block, cache_blocks : int
        Rebuild granularity and how many blocks are kept in memory per process.
    cache_dir : path, optional
        A folder for rebuilt images shared across processes and epochs.

    Examples
    --------
    >>> from keypatch.data import QuantizedDataset                       # doctest: +SKIP
    >>> ds = QuantizedDataset("quantized/")                               # doctest: +SKIP
    >>> loader = torch.utils.data.DataLoader(ds, batch_size=32, num_workers=2)  # doctest: +SKIP
    """

    def __init__(self, root: str | Path, model: MAE | str | None = None,
                 transform: Callable[[Image.Image], Any] | None = None, *, device: str = "cpu", block: int = 16,
                 cache_blocks: int = 8, cache_dir: str | Path | None = None) -> None:
        if block < 1 or cache_blocks < 1:
            raise ValueError("block and cache_blocks must be >= 1")
        self.folder = QuantizedFolder.open(root)
        self.model_spec = model if model is not None else self.folder.manifest["model"]
        self.transform = transform or _to_tensor
        self.device, self.block, self.cache_blocks = device, block, cache_blocks
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self._mae: MAE | None = model if isinstance(model, MAE) else None
        self._blocks: OrderedDict[int, list[Image.Image]] = OrderedDict()
        self.labels = [int(e.get("label", -1)) for e in self.folder.images]
        self.classes = list(self.folder.classes)

    def __len__(self) -> int:
        return len(self.folder)

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_blocks"] = OrderedDict()
        if not isinstance(self.model_spec, MAE):
            state["_mae"] = None  # each worker loads its own from the spec
        return state

    def model(self) -> MAE:
        """The reconstructor (loaded on first use in this process)."""
        if self._mae is None:
            self._mae = model_for(self.folder, self.model_spec, self.device)
        return self._mae

    def reconstruction(self, indices: list[int]) -> torch.Tensor:
        """The normalised ``(B, 3, H, W)`` reconstructions of ``indices`` (what the images are made of)."""
        return rebuild(self.folder, indices, self.model())

    def image(self, i: int) -> Image.Image:
        """Image ``i`` rebuilt, as a PIL image."""
        if not -len(self) <= i < len(self):
            raise IndexError(f"index {i} is outside the dataset's {len(self)} images")
        i %= len(self)
        b = i // self.block
        if b not in self._blocks:
            self._blocks[b] = self._load_block(b)
            while len(self._blocks) > self.cache_blocks:
                self._blocks.popitem(last=False)
        self._blocks.move_to_end(b)
        return self._blocks[b][i - b * self.block]

    def _load_block(self, b: int) -> list[Image.Image]:
        idx = list(range(b * self.block, min(len(self), (b + 1) * self.block)))
        paths = [output_path(self.cache_dir, f"{self.folder.images[i]['key']}.png", file=self.folder.root / MANIFEST,
                             entry=f"images[{i}].key") for i in idx] if self.cache_dir else []
        if paths and all(p.is_file() for p in paths):
            return [Image.open(p).convert("RGB") for p in paths]
        images = [to_pil(x) for x in self.reconstruction(idx)]
        for p, im in zip(paths, images, strict=False):
            write_png(im, p)
        return images

    def __getitem__(self, i: int) -> tuple[Any, int]:
        return self.transform(self.image(i)), self.labels[i]
