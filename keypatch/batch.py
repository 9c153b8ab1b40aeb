"""Proposals for many image files, stored as they finish (what ``keypatch propose`` runs).

>>> from keypatch.batch import run_propose
>>> run_propose(["photos/"], ratio=0.1, out_dir="results")          # doctest: +SKIP
{'found': 120, 'done': 120, 'skipped': 0, 'failed': 0, ...}
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from keypatch.geometry.files import list_image_files

DEFAULT_OUT = "keypatch-results"
"""Results folder used when none is given."""


class ImageWarning(UserWarning):
    """An image file could not be read; it was skipped and nothing was stored for it."""


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    return float(ratio)


def run_propose(
    paths: str | Path | Sequence[str | Path],
    ratio: float,
    strategy: str = "greedy",
    model: Any = "default",
    start: str = "center",
    device: str = "auto",
    out_dir: str | Path = DEFAULT_OUT,
    batch_size: int = 1,
    seed: int = 0,
    progress: bool = True,
    **options: Any,
) -> dict[str, Any]:
    """Propose key patches for every image under ``paths`` and store one record per image.

    Images already stored with the same settings (same file content by sha256, model id, strategy,
    ratio, start and options) are skipped, so an interrupted run resumes where it stopped. Each
    record is committed as soon as its image is done. Unreadable images are reported with an
    :class:`ImageWarning`, counted in the summary and skipped; the others are processed.

    Parameters
    ----------
    paths : path or sequence of paths
        Image files and folders (see :func:`keypatch.geometry.list_image_files`).
    ratio : float
        Fraction of patches to keep, in ``(0, 1]`` (checked before anything is loaded).
    strategy : str
        A registered strategy (:func:`keypatch.available`).
    model : str or MAE
        A :func:`keypatch.load_mae` spec (``"default"``, ``"random:toy"``, a file...) or a model.
    start : {"center", "none"}
        For strategies that take a start (greedy); ignored (stored as ``""``) for the others.
    device : {"auto", "cpu", "cuda"}
        Where to compute.
    out_dir : str or Path
        Results folder; the store is ``out_dir / "results.sqlite"``.
    batch_size : int
        Images per :func:`keypatch.propose_batch` call (they share MAE passes). Strategies that do
        not use the MAE to choose (``random``) run one image at a time, so every image is seeded
        with ``seed`` exactly as ``keypatch.propose(image, seed=seed)`` would be.
    seed : int
        Seed for randomised strategies (stored with the options).
    progress : bool
        Show a tqdm progress bar (on stderr).
    **options
        Further strategy options (e.g. ``precision="bfloat16"``); stored with the record.

    Returns
    -------
    dict
        ``found``, ``done`` (new records), ``skipped`` (already stored, or the same content twice in
        this run), ``failed`` and ``failed_paths`` (unreadable), ``store``, ``model_id``,
        ``strategy``, ``ratio``, ``k``, ``start``, ``options``, ``seconds`` (wall time).
    """
    from tqdm.auto import tqdm

    from keypatch.api import _takes_start, propose_batch
    from keypatch.geometry import load_image
    from keypatch.proposers import get_proposer
    from keypatch.reconstructors import load_mae, resolve_device
    from keypatch.store import STORE_NAME, DuplicateRecordError, Record, ResultStore, sha256_file

    t0 = time.perf_counter()
    ratio = _check_ratio(ratio)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    takes_start = isinstance(strategy, str) and _takes_start(strategy)
    proposer = get_proposer(strategy, **({"start": start} if takes_start else {}), **options)  # ValueError if bad
    files = list_image_files(paths)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"the results folder {out_dir} is a file")
    mae = load_mae(model, device=resolve_device(device))
    k = mae.grid.count(ratio)
    stored_start = start if takes_start else ""
    stored_options = {"seed": int(seed), **options}
    if not proposer.needs_model:
        batch_size = 1

    summary: dict[str, Any] = {
        "found": len(files), "done": 0, "skipped": 0, "failed": 0, "failed_paths": [], "store": "",
        "model_id": mae.model_id, "strategy": proposer.name, "ratio": ratio, "k": k, "start": stored_start,
        "options": stored_options, "seconds": 0.0,
    }

    def fail(path: Path, reason: object) -> None:
        text = str(reason) if str(path) in str(reason) else f"{path}: {reason}"
        warnings.warn(f"{text}; skipped, nothing stored for it", ImageWarning, stacklevel=3)
        summary["failed"] += 1
        summary["failed_paths"].append(str(path))

    with ResultStore(out_dir / STORE_NAME) as store, tqdm(total=len(files), desc="propose", unit="img",
                                                   disable=not progress) as bar:
        summary["store"] = str(store.path)
        seen: set[str] = set()
        for s in range(0, len(files), batch_size):
            todo: list[tuple[Path, str, torch.Tensor]] = []
            for path in files[s : s + batch_size]:
                try:
                    digest = sha256_file(path)
                    if digest in seen or store.has(digest, mae.model_id, proposer.name, ratio, stored_start,
                                                   stored_options):
                        summary["skipped"] += 1
                        bar.update(1)
                        continue
                    todo.append((path, digest, load_image(path, mae.config.image_size)))
                    seen.add(digest)
                except (OSError, ValueError) as exc:
                    fail(path, exc)
                    bar.update(1)
            if not todo:
                continue
            images = torch.stack([x for _, _, x in todo])
            results = propose_batch(images, ratio, proposer, mae, seed=seed, device=str(mae.device))
            for (path, digest, _), res in zip(todo, results, strict=True):
                record = Record(
                    image_path=str(path.absolute()), sha256=digest, model_id=mae.model_id, strategy=proposer.name,
                    ratio=ratio, start=stored_start, options=stored_options, patches=res.patches, losses=res.losses,
                    evaluations=res.evaluations, seconds=res.seconds,
                )
                try:
                    store.add(record)
                    summary["done"] += 1
                except DuplicateRecordError:  # stored meanwhile by another run on the same folder
                    summary["skipped"] += 1
                bar.update(1)
    summary["seconds"] = time.perf_counter() - t0
    return summary
