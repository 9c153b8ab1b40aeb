"""Rebuilding a quantized dataset's images with an MAE: in memory, or as an ImageFolder on disk.

Each image is rebuilt from its stored patches alone: they are put back at their grid positions,
the MAE predicts every other patch, and the stored patches are pasted over the prediction (DQ's
``im_paste``). With a lossless codec the kept patches of a rebuilt image are the original's pixels
at the model's size, and the rest equal :func:`keypatch.reconstruct` of the original with the same
patches (the MAE reads nothing of a masked patch).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from keypatch.data.codec import canvas
from keypatch.data.shards import MANIFEST, QuantizedFolder
from keypatch.geometry.image import to_pil
from keypatch.geometry.pixels import normalize_rgb8
from keypatch.reconstructors import MAE, load_mae
from keypatch.untrusted import input_files, output_path


def model_for(folder: QuantizedFolder, model: MAE | str | None = None, device: str = "auto") -> MAE:
    """The MAE that rebuilds ``folder``: ``model``, or the one its patches were chosen with (the
    manifest's ``model``). A ValueError when its image or patch size differs from the dataset's."""
    mae = model if isinstance(model, MAE) else load_mae(model or folder.manifest["model"], device=device)
    c = mae.config
    if (c.image_size, c.patch_size) != (folder.image_size, folder.patch_size):
        raise ValueError(f"the MAE works on {c.image_size}px images in {c.patch_size}px patches; the dataset was "
                         f"stored at {folder.image_size}px in {folder.patch_size}px patches")
    return mae.eval()


@torch.no_grad()
def rebuild(folder: QuantizedFolder, indices: Sequence[int], model: MAE) -> torch.Tensor:
    """The images ``indices`` of ``folder`` rebuilt by ``model``: ``(B, 3, H, W)`` normalised, on the CPU.

    Images with the same number of kept patches share one MAE pass.
    """
    side = folder.image_size
    kept = [folder.kept_pixels(i) for i in indices]
    out = torch.empty(len(kept), 3, side, side)
    by_k: dict[int, list[int]] = {}
    for j, (idx, _) in enumerate(kept):
        by_k.setdefault(len(idx), []).append(j)
    for group in by_k.values():
        x = torch.from_numpy(np.stack([normalize_rgb8(canvas(kept[j][1], kept[j][0], side)) for j in group]))
        vis = torch.from_numpy(np.stack([kept[j][0] for j in group]))
        out[group] = model.reconstruct(x.to(model.device), vis.to(model.device)).cpu()
    return out


def output_names(entries: Sequence[dict[str, Any]]) -> list[str]:
    """Where each image goes in an ImageFolder: its name with ``.png`` for its suffix, ``NAME-KEY.png``
    when two names would meet (``a.jpg`` and ``a.png`` in one folder)."""
    plain = [str(Path(e["name"]).with_suffix(".png")) for e in entries]
    seen: dict[str, int] = {}
    for n in plain:
        seen[n] = seen.get(n, 0) + 1
    return [n if seen[n] == 1 else str(Path(n).with_name(f"{Path(n).stem}-{e['key']}.png"))
            for n, e in zip(plain, entries, strict=True)]


def write_png(image: Any, path: Path) -> None:
    """Save a PIL image as the PNG ``path`` whole or not at all: written beside it under a name of this
    process's, then renamed (so a file that exists is whole, and processes writing the same file at
    once do not mix their bytes)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.name}.{os.getpid()}.part")
    image.save(tmp, "PNG")
    tmp.replace(path)


def reconstruct_folder(root: str | Path, out: str | Path, model: MAE | str | None = None, *, device: str = "auto",
                       batch_size: int = 16, progress: bool = True) -> dict[str, Any]:
    """Write every image of the quantized dataset ``root`` rebuilt by the MAE as ``out/CLASS/NAME.png``.

    Parameters
    ----------
    root : path
        A folder written by :func:`keypatch.data.pipeline`.
    out : path
        The ImageFolder to write (``CLASS/NAME.png``, the original's path below the source folder;
        a source without class folders gives ``NAME.png``). Every file lies inside it: a name that
        would leave it, or land on the dataset's own files, is refused before anything is written
        (:func:`keypatch.untrusted.output_path`).
    model : MAE or str, optional
        The reconstructor (default: the model the patches were chosen with, from the manifest).
    batch_size : int
        Images per MAE pass.
    progress : bool
        Show a progress bar.

    Returns
    -------
    dict
        ``written``, ``skipped`` (already there: a re-run resumes), ``out``, ``model_id``.
    """
    from tqdm.auto import tqdm

    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    folder = QuantizedFolder.open(root)
    out = Path(out)
    names = output_names(folder.images)
    inputs = input_files([folder.root / MANIFEST, *(folder.root / s["name"] for s in folder.manifest["shards"])])
    targets = [output_path(out, n, file=folder.root / MANIFEST, entry=f"images[{i}].name", inputs=inputs)
               for i, n in enumerate(names)]  # every one before anything is written
    todo = [i for i, t in enumerate(targets) if not t.is_file()]
    summary: dict[str, Any] = {"written": 0, "skipped": len(names) - len(todo), "out": str(out), "model_id": None}
    if not todo:
        return summary
    mae = model_for(folder, model, device)
    summary["model_id"] = mae.model_id
    with tqdm(total=len(todo), desc="reconstruct", unit="img", disable=not progress) as bar:
        for s in range(0, len(todo), batch_size):
            chunk = todo[s:s + batch_size]
            for i, x in zip(chunk, rebuild(folder, chunk, mae), strict=True):
                write_png(to_pil(x), targets[i])
                summary["written"] += 1
            bar.update(len(chunk))
    return summary
