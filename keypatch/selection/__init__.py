"""Dataset-level selection: GraphCut, Dataset Quantization bins, random; embeddings; diversity.

The one-call API is :func:`select_dataset` (the ``keypatch select`` command)::

    from keypatch.selection import select_dataset
    result = select_dataset("photos/", ratio=0.1, method="dq", n_bins=10, seed=0, out="sel/")
    result.files          # the selected image paths
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from keypatch.geometry.files import list_image_files, real_path
from keypatch.selection.bins import (
    SELECTORS,
    DatasetSelection,
    dq_bins,
    n_keep,
    register_selection,
    sample_bins,
    select_indices,
)
from keypatch.selection.contact_sheet import contact_sheet
from keypatch.selection.diversity import coverage, diversity_metrics, diversity_study, spread
from keypatch.selection.embed import embed_images, embed_paths
from keypatch.selection.graphcut import cosine_similarity, graphcut_greedy, graphcut_select, graphcut_value


@dataclass
class SelectionResult:
    """What :func:`select_dataset` chose.

    Attributes
    ----------
    files : list of Path
        The selected images (by bin for DQ).
    bins : list of int
        The DQ bin of each selected image (0 for the other methods).
    selection : DatasetSelection
        Indices into ``all_files``, the bins, method and ratio.
    all_files : list of Path
        Every image considered, in the order of the embeddings.
    embeddings : np.ndarray
        ``(n, d)`` features used.
    json_path, sheet_path : Path or None
        What was written (when ``out`` was given).
    """

    files: list[Path]
    bins: list[int]
    selection: DatasetSelection
    all_files: list[Path]
    embeddings: np.ndarray
    json_path: Path | None = None
    sheet_path: Path | None = None


def _display_root(files: Sequence[Path]) -> Path:
    try:
        return Path(os.path.commonpath([str(real_path(f).parent) for f in files]))
    except ValueError:
        return Path("/")


def select_dataset(paths, ratio: float, method: str = "dq", *, n_bins: int = 10, seed: int = 0, lam: float = 1.0,
                   classifier="efficientnet-lite0", device: str = "cpu", batch_size: int = 16,
                   embeddings: np.ndarray | None = None, cache: str | Path | None = None,
                   out: str | Path | None = None, thumb: int = 128, progress: bool = True) -> SelectionResult:
    """Choose ``round(ratio * n)`` images of a folder (or list of files) with DQ, GraphCut or random.

    Parameters
    ----------
    paths : path or sequence of paths
        Image files and/or folders (searched recursively).
    ratio : float
        Keep ratio in ``(0, 1]``.
    method : {"dq", "graphcut", "random"}
        DQ bins sampled uniformly (default), one GraphCut selection, or uniform random.
    n_bins : int
        DQ's number of bins.
    seed : int
        Seed of the random draws (DQ and random).
    lam : float
        GraphCut's ``lambda``.
    classifier : str or Classifier
        Whose pooled features embed the images (see :mod:`keypatch.classifiers`).
    embeddings : np.ndarray, optional
        Precomputed ``(n, d)`` features, aligned with the sorted image list.
    cache : path, optional
        An ``.npz`` to reuse embeddings from (and save them to).
    out : path, optional
        Folder for ``selection.json`` and ``contact_sheet.jpg``.

    Returns
    -------
    SelectionResult
    """
    if method not in SELECTORS:
        raise ValueError(f"method must be one of {', '.join(sorted(SELECTORS))}, got {method!r}")
    if embeddings is None:
        files, emb = embed_paths(paths, classifier, device=device, batch_size=batch_size, cache=cache,
                                 progress=progress)
    else:
        files, emb = list_image_files(paths), np.asarray(embeddings)
        if emb.shape[0] != len(files):
            raise ValueError(f"{emb.shape[0]} embeddings for {len(files)} images")
    sel = select_indices(emb, ratio, method, n_bins=min(n_bins, len(files)), seed=seed, lam=lam)
    chosen = [files[i] for i in sel.indices]
    bins_of = [int(b) for b in sel.bin_of]
    result = SelectionResult(chosen, bins_of, sel, files, emb)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        root = _display_root(files)

        def rel(f: Path) -> str:
            r = real_path(f)
            return str(r.relative_to(root)) if r.is_relative_to(root) else str(r)

        doc = {
            "method": method, "ratio": float(ratio), "seed": seed, "n_total": len(files), "n_selected": len(chosen),
            "n_bins": len(sel.bins), "bin_sizes": [len(b) for b in sel.bins], "lambda": lam,
            "embedding": classifier if isinstance(classifier, str) else classifier.name,
            "root": str(root),
            "selected": [{"file": rel(f), "bin": b} for f, b in zip(chosen, bins_of, strict=True)],
        }
        result.json_path = out / "selection.json"
        result.json_path.write_text(json.dumps(doc, indent=1))
        labels = [f"bin {b}" if method == "dq" else Path(f).stem for f, b in zip(chosen, bins_of, strict=True)]
        title = f"{method}  r={ratio:g}  {len(chosen)}/{len(files)} images  seed={seed}"
        result.sheet_path = contact_sheet(chosen, out / "contact_sheet.jpg", labels, thumb=thumb, title=title)
    return result


__all__ = [
    "SELECTORS",
    "register_selection",
    "DatasetSelection",
    "SelectionResult",
    "contact_sheet",
    "cosine_similarity",
    "coverage",
    "diversity_metrics",
    "diversity_study",
    "dq_bins",
    "embed_images",
    "embed_paths",
    "graphcut_greedy",
    "graphcut_select",
    "graphcut_value",
    "n_keep",
    "sample_bins",
    "select_dataset",
    "select_indices",
    "spread",
]
