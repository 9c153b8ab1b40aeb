"""Proposals for many image files, stored as they finish (what ``keypatch propose`` runs): the
front door of the engines (:mod:`keypatch.engines`), which run the job of :mod:`keypatch.engines.job`.

Images already stored with the same settings (same file content by sha256, model id, strategy,
ratio, start and the strategy's settings, the seed only for strategies that use one) are skipped,
so an interrupted run resumes where it stopped; each record is committed as soon as its image is
done. Runs on the same store share the work: each image is claimed before it is computed, images
claimed by another live run are left to it, and a run ends only once every image is stored (it
waits for the others' images, and takes over those of a run that died). On a CPU, runs of this
host on the same store split its torch threads between them (``threads // live runs``, at least
1). Unreadable images are reported with an :class:`ImageWarning`, counted and skipped; deliberate
changes made while loading (alpha dropped, first frame, squashed, EXIF rotation) are reported once
per run as :class:`~keypatch.geometry.InputNote` warnings, one line per kind.

>>> from keypatch.batch import run_propose
>>> run_propose(["photos/"], ratio=0.1, out_dir="results")          # doctest: +SKIP
{'found': 120, 'done': 120, 'skipped': 0, 'failed': 0, ...}
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from keypatch.api import build_proposer, resolve_model
from keypatch.engines import Engine, get_engine
from keypatch.engines.job import Heartbeat, Job, stored_settings
from keypatch.geometry.decode import ImageWarning, InputNote, InputNotes
from keypatch.presets import RunSettings, run_settings
from keypatch.proposers.base import Proposer, check_seed
from keypatch.store import STORE_NAME, ResultStore
from keypatch.store.sqlite import DEFAULT_LEASE, check_writable

__all__ = ["DEFAULT_OUT", "Claims", "ImageWarning", "run_pool", "run_propose", "stored_settings"]

DEFAULT_OUT = "keypatch-results"
"""Results folder used when none is given."""


@dataclass(frozen=True)
class Claims:
    """How runs sharing a store hold their images: a claim lives ``lease`` seconds without renewal
    (a live run renews it every quarter of that), and images another run holds are looked at
    every ``poll`` seconds."""

    lease: float = DEFAULT_LEASE
    poll: float = 1.0


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    return float(ratio)


class Interrupted(KeyboardInterrupt):
    """A run stopped by the user (Ctrl-C): ``summary`` is what it had done, as :func:`run_propose`
    returns it, with ``interrupted`` set; the finished records are stored."""

    def __init__(self, summary: dict[str, Any]) -> None:
        super().__init__("interrupted")
        self.summary = summary


def run_propose(paths: str | Path | Sequence[str | Path], ratio: float, strategy: str | Proposer = "greedy",
                model: Any = "default", start: str | int | tuple[int, int] | None = None, device: str = "auto",
                out_dir: str | Path = DEFAULT_OUT, batch_size: int | str = "auto", seed: int = 0, progress: bool = True,
                preset: str | RunSettings | None = None, engine: str | Engine = "process", claims: Claims | None = None,
                **options: Any) -> dict[str, Any]:
    r"""Propose key patches for every image under ``paths`` and store one record per image.

    How runs resume, share a store and report images is said in this module's docstring.

    Parameters
    ----------
    paths : path or sequence of paths
        Image files and folders (:func:`keypatch.geometry.list_image_files`) or ``file://`` URIs;
        with Ray, also other URIs (``s3://...``, read by the workers), a Ray Dataset with a ``path``
        column, or one with ``bytes`` and ``path`` columns (the images' bytes, read by the workers;
        the path only names them).
    ratio : float
        Fraction of patches to keep, in ``(0, 1]`` (checked before anything is loaded).
    strategy, model, start, device, seed
        As for :func:`keypatch.propose`; ``start`` is stored as ``""`` for strategies without one,
        and the seed only for strategies whose answer depends on it.
    out_dir : str or Path
        Results folder; the store is ``out_dir / "results.sqlite"``.
    batch_size : int or "auto"
        Images per MAE batch (they share MAE passes); the answers do not depend on it. ``"auto"``
        (the default): 1 on a CPU, on a GPU as many as fill a pass sized from free memory
        (:func:`keypatch.objective.auto_batch`); 8 for Ray actors with GPUs.
    progress : bool
        Show a tqdm progress bar (on stderr).
    preset : {"paper", "reference"} or RunSettings, optional
        The paper's text (default), the KPP authors' code (``"reference"``), or a
        :class:`~keypatch.presets.RunSettings` value from :func:`keypatch.presets.run_settings`
        (a preset with its count rule or resize filter overridden); ``count`` and ``resize`` are
        stored in the record's options where they are not the paper's.
    engine : str or Engine
        ``"process"`` (the default) or ``"ray"``, or an engine value with its resources, e.g.
        ``RayEngine(workers=4, address="auto")`` (:mod:`keypatch.engines`).
    claims : Claims, optional
        Claim lease and polling of images another run holds (default :class:`Claims`\ ``()``).
    **options
        Further strategy options (e.g. ``precision="bfloat16"``).

    Returns
    -------
    dict
        ``found``, ``done`` (new records), ``skipped`` (already stored, stored meanwhile by another
        run, or the same content twice), ``recomputed`` (computed here too, another run having stored
        it after its claim expired), ``failed`` and ``failed_paths``, ``notes``, ``store``,
        ``model_id``, ``strategy``, ``ratio``, ``k``, ``start``, ``options``, ``engine``, ``seconds``.

    Raises
    ------
    Interrupted
        On Ctrl-C (a KeyboardInterrupt), carrying the summary of what was done.
    """
    from tqdm.auto import tqdm

    t0 = time.perf_counter()
    ratio = _check_ratio(ratio)
    if batch_size != "auto" and (isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1):
        raise ValueError(f"batch_size must be a positive integer or 'auto', got {batch_size!r}")
    seed = check_seed(seed)
    claims = claims or Claims()
    settings = preset if isinstance(preset, RunSettings) else run_settings(preset)
    settings = run_settings(None, settings.start if start is None else start, settings.count, settings.resize)
    proposer = build_proposer(strategy, settings, options, start_given=start is not None)  # ValueError if bad
    runner = get_engine(engine)
    runner.check()
    files = runner.files(paths)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"the results folder {out_dir} is a file")
    check_writable(out_dir / STORE_NAME)  # before the model loads
    mae = resolve_model(model, device)
    if batch_size == "auto":
        from keypatch.objective import auto_batch

        batch_size = 8 if getattr(runner, "gpus_per_worker", 0) else auto_batch(mae)
    job = Job(mae, proposer, ratio, seed, claims.lease, len(files), settings,
              model_spec=model if isinstance(model, str) else mae)
    job.summary.update(runner.summary())
    try:
        with ResultStore(out_dir / STORE_NAME) as store, Heartbeat(store, job.run, claims.lease), \
                tqdm(total=len(files), desc="propose", unit="img", disable=not progress) as bar:
            job.summary["store"] = str(store.path)
            job.store, job.bar = store, bar
            runner.run(job, files, batch_size, claims.poll)
    except KeyboardInterrupt:
        job.summary.update(interrupted=True, notes=job.notes.lines(), seconds=time.perf_counter() - t0)
        raise Interrupted(job.summary) from None
    job.summary["notes"] = job.notes.lines()
    for line in job.summary["notes"]:
        warnings.warn(line, InputNote, stacklevel=2)
    job.summary["seconds"] = time.perf_counter() - t0
    return job.summary


def run_pool(paths: str | Path | Sequence[str | Path], *, budget: int | None = None, ratio: float | None = None,
             after: str | Path | None = None, strategy: str | Proposer = "greedy", model: Any = "default",
             start: str | int | tuple[int, int] | None = None, device: str = "auto", out_dir: str | Path = DEFAULT_OUT,
             seed: int = 0, progress: bool = True, preset: str | RunSettings | None = None,
             **options: Any) -> dict[str, Any]:
    """A round over the pool of images under ``paths``: ``budget`` patches in all (the pool's greedy,
    :mod:`keypatch.rounds.budget`) or ``ratio`` each, continuing from the patches ``after`` gives
    each image (a results folder, a ``patch_ids.json`` or a Label Studio JSON export,
    :mod:`keypatch.rounds.after`); one record per image into ``out_dir``'s store.

    The records share one setting, the pool's: the strategy's, with ``budget``, ``pool`` (a digest
    of the images' contents) and ``after`` (a digest of the patches they began with) in its
    options, and as ratio the pool's share of patches kept. A run whose every image is stored under
    that setting computes nothing (a re-run resumes as a whole: a pool's answer depends on all of
    its images). Two runs of one pool at once compute the same answer; the store keeps one record
    per image. Unreadable images are left out of the pool with an :class:`ImageWarning`; the same
    content at two paths is one image.

    Returns
    -------
    dict
        As :func:`run_propose`'s, with ``budget``, ``spent`` (patches this round added), ``after``
        (images that had earlier patches), ``mean_loss`` (the pool's mean final ``L``).
    """
    import hashlib
    import json

    from tqdm.auto import tqdm

    from keypatch.geometry import list_image_files, load_images
    from keypatch.rounds import check_budget, pool_proposals
    from keypatch.rounds.after import match_earlier, read_earlier
    from keypatch.store import DuplicateRecordError, Record, Setting, sha256_file

    t0 = time.perf_counter()
    if (budget is None) == (ratio is None):
        raise ValueError("give a budget (patches over the pool) or a ratio (per image), not both")
    if ratio is not None:
        ratio = _check_ratio(ratio)
    seed = check_seed(seed)
    settings = preset if isinstance(preset, RunSettings) else run_settings(preset)
    settings = run_settings(None, settings.start if start is None else start, settings.count, settings.resize)
    proposer = build_proposer(strategy, settings, options, start_given=start is not None)
    check_budget(proposer, budget)  # a strategy without a step-by-step form fails before any work
    files = list_image_files(paths)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"the results folder {out_dir} is a file")
    check_writable(out_dir / STORE_NAME)
    mae = resolve_model(model, device)
    earlier = read_earlier(after, mae.grid) if after is not None else None
    summary: dict[str, Any] = {"found": len(files), "done": 0, "skipped": 0, "recomputed": 0, "failed": 0,
                               "failed_paths": [], "notes": [], "store": "", "model_id": mae.model_id,
                               "strategy": proposer.name, "budget": budget, "engine": "process"}
    notes = InputNotes()
    paths_ok, digests, tensors = [], [], []
    for f in files:
        try:
            digest = sha256_file(f)
            image = load_images([f], mae.config.image_size, notes=notes, resize=settings.resize)
        except (OSError, ValueError) as exc:
            summary["failed"] += 1
            summary["failed_paths"].append(str(f))
            warnings.warn(f"{f}: {exc}; skipped, left out of the pool", ImageWarning, stacklevel=2)
            continue
        if digest in digests:
            summary["skipped"] += 1
            continue
        paths_ok.append(f)
        digests.append(digest)
        tensors.append(image)
    summary["notes"] = notes.lines()
    if not paths_ok:
        summary["seconds"] = time.perf_counter() - t0
        summary.update(ratio=ratio or 0.0, k=None, start="", options={}, spent=0, after=0, mean_loss=None)
        return summary
    begun = match_earlier(earlier, paths_ok, digests) if earlier is not None else None
    k = None if ratio is None else mae.grid.count(ratio, settings.count)
    start_value, stored = stored_settings(proposer, seed, mae, settings)
    order = sorted(range(len(digests)), key=digests.__getitem__)
    stored["pool"] = hashlib.sha256("".join(digests[i] for i in order).encode()).hexdigest()[:16]
    if budget is not None:
        stored["budget"] = int(budget)
    if begun is not None and any(begun):
        stored["after"] = hashlib.sha256(json.dumps([begun[i] for i in order]).encode()).hexdigest()[:16]
    n = mae.grid.n
    given = sum(len(b) for b in begun) if begun else 0
    pool_ratio = float(ratio) if ratio is not None else round((budget + given) / (n * len(paths_ok)), 9)
    setting = Setting.of(mae.model_id, proposer.name, pool_ratio, start_value, stored)
    summary.update(ratio=pool_ratio, k=k, start=start_value, options=stored,
                   after=sum(1 for b in begun if b) if begun else 0)
    with ResultStore(out_dir / STORE_NAME) as store:
        summary["store"] = str(store.path)
        have = {r.sha256: r for r in store.records(model_id=setting.model_id, strategy=setting.strategy,
                                                   ratio=setting.ratio, start=setting.start,
                                                   options_json=setting.options_json)}
        if all(d in have for d in digests):
            summary["skipped"] += len(digests)
            found = [have[d] for d in digests]
        else:
            images = torch.cat(tensors).to(mae.device)
            total = budget if budget is not None else len(paths_ok) * k
            with tqdm(total=total, desc="pool", unit="patch", disable=not progress) as bar:
                def tick(spent: int) -> None:
                    bar.update(spent - bar.n)

                proposals = pool_proposals(mae, images, proposer, budget=budget, k=k, after=begun, seed=seed,
                                           progress=tick)
                bar.update(total - bar.n)
            found = []
            for f, d, p in zip(paths_ok, digests, proposals, strict=True):
                record = Record(str(f), d, mae.model_id, proposer.name, pool_ratio, start_value, p.patches,
                                p.losses, stored, p.evaluations, p.seconds)
                try:
                    store.add(record)
                    summary["done"] += 1
                except DuplicateRecordError:  # another run of the same pool stored it meanwhile
                    summary["skipped"] += 1
                found.append(record)
    summary["spent"] = sum(len(r.patches) for r in found) - given
    summary["mean_loss"] = sum(r.loss for r in found) / len(found)
    summary["seconds"] = time.perf_counter() - t0
    for line in summary["notes"]:
        warnings.warn(line, InputNote, stacklevel=2)
    return summary
