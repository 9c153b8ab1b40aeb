"""Proposals for many image files, stored as they finish (what ``keypatch propose`` runs).

>>> from keypatch.batch import run_propose
>>> run_propose(["photos/"], ratio=0.1, out_dir="results")          # doctest: +SKIP
{'found': 120, 'done': 120, 'skipped': 0, 'failed': 0, ...}
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from keypatch.geometry.decode import ImageWarning, InputNote
from keypatch.geometry.files import list_image_files
from keypatch.presets import RunSettings, run_settings
from keypatch.proposers.base import Proposer
from keypatch.proposers.search import start_patch
from keypatch.reconstructors.mae import MAE
from keypatch.reconstructors.precision import resolve_precision

__all__ = ["DEFAULT_OUT", "ENGINES", "ImageWarning", "run_propose", "stored_settings"]

log = logging.getLogger("keypatch.propose")

ENGINES = ("local", "ray")
"""Where :func:`run_propose` computes: this process, or a Ray cluster (:mod:`keypatch.engines.ray_data`)."""

DEFAULT_OUT = "keypatch-results"
"""Results folder used when none is given."""


def _check_ratio(ratio: Any) -> float:
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    return float(ratio)


def stored_settings(proposer: Proposer, seed: int, mae: MAE,
                    settings: RunSettings | None = None) -> tuple[str, dict[str, Any]]:
    """``(start, options)`` a record of ``proposer`` run with the MAE ``mae`` is stored under: its
    :meth:`~Proposer.settings`, with the ``seed`` only where the answer depends on it, ``precision``
    as used (``"auto"`` resolved for ``mae`` and its device, as :class:`~keypatch.objective.Objective`
    resolves it), the run's ``count`` and ``resize`` where they are not the paper's
    (:meth:`~keypatch.presets.RunSettings.stored`), and ``start`` (``""`` if it takes none; a
    ``"row,col"`` start as its index on ``mae``'s grid)."""
    start = getattr(proposer, "start", "") if "start" in proposer.options else ""
    index = start_patch(start, mae.grid) if start else None  # a ValueError for a patch outside the grid
    if "," in start:  # "row,col" is stored as its index, like a start given so
        start = str(index)
    options = proposer.settings()
    if "precision" in options:
        options["precision"] = resolve_precision(options["precision"], mae.device, mae.config.embed_dim)
    if proposer.uses_seed:
        options["seed"] = int(seed)
    if settings is not None:
        options.update(settings.stored())
    return start, options


class Heartbeat:
    """Renews a run's claims every quarter of the lease in a background thread, through the run's
    own store (whose connection is shared under its lock)."""

    def __init__(self, store: Any, run: Any, lease: float) -> None:
        self.store, self.run, self.lease = store, run, lease
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, name="keypatch-claims", daemon=True)

    def _beat(self) -> None:
        while not self._stop.wait(self.lease / 4):
            try:
                self.store.renew(self.run, self.lease)
            except (ValueError, RuntimeError):  # the main thread reports store problems itself
                return

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(timeout=5)


def run_propose(
    paths: str | Path | Sequence[str | Path],
    ratio: float,
    strategy: str | Proposer = "greedy",
    model: Any = "default",
    start: str | int | tuple[int, int] | None = None,
    device: str = "auto",
    out_dir: str | Path = DEFAULT_OUT,
    batch_size: int = 1,
    seed: int = 0,
    progress: bool = True,
    lease: float | None = None,
    poll: float = 1.0,
    preset: str | None = None,
    count: str | None = None,
    resize: str | None = None,
    engine: str = "local",
    address: str | None = None,
    workers: int = 2,
    cpus_per_worker: float = 1,
    gpus_per_worker: float = 0,
    **options: Any,
) -> dict[str, Any]:
    """Propose key patches for every image under ``paths`` and store one record per image.

    Images already stored with the same settings (same file content by sha256, model id, strategy,
    ratio, start and the strategy's settings, the seed only for strategies that use one) are
    skipped, so an interrupted run resumes where it stopped. Each record is committed as soon as
    its image is done. Runs on the same store share the work: each image is claimed before it is
    computed, images claimed by another live run are left to it, and a run ends only once every
    image is stored (it waits for the others' images, and takes over those of a run that died).
    On a CPU, runs of this host on the same store split its torch threads between them (each uses
    ``threads // live runs``, at least 1), so that they do not oversubscribe the cores.
    Unreadable images are reported with an :class:`ImageWarning`, counted in the summary and
    skipped; the others are processed. Deliberate changes made while loading (alpha dropped, first
    frame of an animation, squashed to a square, EXIF rotation) are reported once per run as
    :class:`~keypatch.geometry.InputNote` warnings, one line per kind.

    Parameters
    ----------
    paths : path or sequence of paths
        Image files and folders (see :func:`keypatch.geometry.list_image_files`).
    ratio : float
        Fraction of patches to keep, in ``(0, 1]`` (checked before anything is loaded).
    strategy : str or Proposer
        A registered strategy (:func:`keypatch.available`).
    model : str or MAE
        A :func:`keypatch.load_mae` spec (``"default"``, ``"random:toy"``, a file...) or a model.
    start : {"center", "none"}, int or (row, col), optional
        For strategies that take a start (greedy; default the centre); stored as ``""`` for the
        others.
    device : {"auto", "cpu", "cuda"}
        Where to compute.
    out_dir : str or Path
        Results folder; the store is ``out_dir / "results.sqlite"``.
    batch_size : int
        Images per MAE batch (they share MAE passes); the answers do not depend on it.
    seed : int
        Seed for randomised strategies (stored with the record only for them).
    progress : bool
        Show a tqdm progress bar (on stderr).
    lease : float, optional
        Seconds a claim lives without renewal (default
        :data:`keypatch.store.sqlite.DEFAULT_LEASE`); this run renews its claims while it lives.
    poll : float
        Seconds between looks at images held by another run.
    preset : {"paper", "reference"}, optional
        ``"reference"``: the KPP authors' released code (start 98, ``int(ratio * N) + 1``
        patches, bilinear resize); default the paper's text (:mod:`keypatch.presets`).
    count, resize : str, optional
        Override the preset's count rule and resize filter; stored in the record's options where
        they are not the paper's.
    engine : {"local", "ray"}
        ``"ray"``: decode on Ray tasks and propose on ``workers`` Ray actors
        (:mod:`keypatch.engines.ray_data`; needs the ``ray`` extra), the records streamed back into
        the same store. ``paths`` may then also be a Ray Dataset with a ``path`` column.
    address : str, optional
        Ray: the cluster to join (default: start a local instance with the workers' CPUs and one more).
    workers, cpus_per_worker, gpus_per_worker
        Ray: actors, and the CPUs (torch threads) and GPUs each one holds.
    **options
        Further strategy options (e.g. ``precision="bfloat16"``).

    Returns
    -------
    dict
        ``found``, ``done`` (new records), ``skipped`` (already stored, stored meanwhile by another
        run, or the same content twice in this run), ``recomputed`` (of those, computed here too because
        another run stored it after its claim had expired), ``failed`` and ``failed_paths`` (unreadable),
        ``notes`` (the deliberate-change lines), ``store``, ``model_id``, ``strategy``, ``ratio``,
        ``k``, ``start``, ``options``, ``seconds`` (wall time).
    """
    from tqdm.auto import tqdm

    from keypatch.api import resolve_model
    from keypatch.proposers.base import check_seed
    from keypatch.store import STORE_NAME, ResultStore
    from keypatch.store.sqlite import DEFAULT_LEASE, check_writable

    t0 = time.perf_counter()
    ratio = _check_ratio(ratio)
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
    seed = check_seed(seed)
    lease = DEFAULT_LEASE if lease is None else float(lease)
    from keypatch.api import build_proposer

    settings = run_settings(preset, start, count, resize)
    proposer = build_proposer(strategy, settings, options, start_given=start is not None)  # ValueError if bad
    if engine not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(ENGINES)}, got {engine!r}")
    if engine == "ray":
        from keypatch.engines.ray_data import RayJob, dataset_paths, require_ray

        require_ray()
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be a positive integer, got {workers!r}")
        if hasattr(paths, "select_columns"):  # a Ray Dataset
            paths = dataset_paths(paths)
    files = list_image_files(paths)
    out_dir = Path(out_dir)
    if out_dir.exists() and not out_dir.is_dir():
        raise ValueError(f"the results folder {out_dir} is a file")
    check_writable(out_dir / STORE_NAME)  # before the model loads
    mae = resolve_model(model, device)
    if engine == "ray":
        job: _Job = RayJob(mae, proposer, ratio, seed, lease, len(files), settings)
        job.configure(model if isinstance(model, str) else mae, address=address, workers=workers,
                      cpus_per_worker=cpus_per_worker, gpus_per_worker=gpus_per_worker)
    else:
        job = _Job(mae, proposer, ratio, seed, lease, len(files), settings)
    with ResultStore(out_dir / STORE_NAME) as store, Heartbeat(store, job.run, lease), \
            tqdm(total=len(files), desc="propose", unit="img", disable=not progress) as bar:
        job.summary["store"] = str(store.path)
        job.store, job.bar = store, bar
        job.run_all(files, batch_size, poll)
    job.summary["notes"] = job.notes.lines()
    for line in job.summary["notes"]:
        warnings.warn(line, InputNote, stacklevel=2)
    job.summary["seconds"] = time.perf_counter() - t0
    return job.summary


class _Job:
    """One :func:`run_propose`: its settings, its summary, and the claim-load-compute-store steps."""

    def __init__(self, mae: Any, proposer: Proposer, ratio: float, seed: int, lease: float, found: int,
                 settings: RunSettings | None = None) -> None:
        from keypatch.geometry import InputNotes
        from keypatch.store.sqlite import RunId

        self.mae, self.proposer, self.ratio, self.seed, self.lease = mae, proposer, ratio, seed, lease
        self.settings = settings or run_settings()
        self.k = mae.grid.count(ratio, self.settings.count)
        self.start, self.options = stored_settings(proposer, seed, mae, self.settings)
        self.notes, self.run = InputNotes(), RunId()
        self.store: Any = None
        self.bar: Any = None
        self.digests: dict[Path, str] = {}
        self.seen: set[str] = set()
        self.threads = torch.get_num_threads()
        self.summary: dict[str, Any] = {
            "found": found, "done": 0, "skipped": 0, "recomputed": 0, "failed": 0, "failed_paths": [], "notes": [],
            "store": "", "model_id": mae.model_id, "strategy": proposer.name, "ratio": ratio, "k": self.k,
            "start": self.start, "options": self.options, "seconds": 0.0,
        }

    def run_all(self, files: list[Path], batch_size: int, poll: float) -> None:
        """Every file, in batches; then the images another run held, until they are stored.

        The next batch is hashed, claimed and decoded in a background thread while the model
        works on the current one, so the model does not wait for files.
        """
        from concurrent.futures import ThreadPoolExecutor

        try:
            with ThreadPoolExecutor(1, thread_name_prefix="keypatch-decode") as ahead:
                waiting: list[Path] = []
                batches = [files[s : s + batch_size] for s in range(0, len(files), batch_size)]
                pending = ahead.submit(self.prepare, batches[0]) if batches else None
                for i in range(len(batches)):
                    busy, todo = pending.result()
                    pending = ahead.submit(self.prepare, batches[i + 1]) if i + 1 < len(batches) else None
                    waiting += busy
                    if todo:
                        self.compute(todo)
            self.wait_for(waiting, batch_size, poll)
        finally:
            self.store.release(self.run)
            torch.set_num_threads(self.threads)

    def wait_for(self, waiting: list[Path], batch_size: int, poll: float) -> None:
        """Images another run holds: wait until they are stored, or take them over (and compute them here)."""
        while waiting:
            self.bar.set_postfix_str(f"{len(waiting)} held by another run")
            time.sleep(poll)
            still: list[Path] = []
            for s in range(0, len(waiting), batch_size):
                still += self.process(waiting[s : s + batch_size])
            waiting = still

    def fail(self, path: Path, reason: object) -> None:
        text = str(reason) if str(path) in str(reason) else f"{path}: {reason}"
        warnings.warn(f"{text}; skipped, nothing stored for it", ImageWarning, stacklevel=4)
        self.summary["failed"] += 1
        self.summary["failed_paths"].append(str(path))
        self.bar.update(1)

    def skip(self) -> None:
        self.summary["skipped"] += 1
        self.bar.update(1)

    def key_of(self, digest: str) -> str:
        from keypatch.store.sqlite import claim_key

        return claim_key(digest, self.mae.model_id, self.proposer.name, self.ratio, self.start, self.options)

    def hashed(self, batch: list[Path]) -> list[tuple[Path, str]]:
        """``(path, sha256)`` of the images of ``batch`` not yet seen in this run."""
        from keypatch.store import sha256_file

        items, found = [], []
        for path in batch:
            try:
                digest = self.digests.get(path) or sha256_file(path)
            except OSError as exc:
                self.fail(path, exc)
                continue
            if path not in self.digests:
                found.append((digest, str(path.absolute())))
            self.digests[path] = digest
            if digest in self.seen:
                self.skip()
            else:
                items.append((path, digest))
        if found:  # every path of a content is kept, and exported with its one record
            self.store.add_paths(found)
        return items

    def process(self, batch: list[Path]) -> list[Path]:
        """Claim, load and compute ``batch``; returns the paths held by another run."""
        busy, todo = self.prepare(batch)
        if todo:
            self.compute(todo)
        return busy

    def claimed(self, batch: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
        """Hash and claim ``batch``: the paths another run holds, and ``(path, sha256)`` to compute here
        (images already stored are counted as skipped)."""
        items = self.hashed(batch)
        busy, todo = [], []
        statuses = self.store.claim([self.key_of(d) for _, d in items], self.run, self.lease)
        for (path, digest), status in zip(items, statuses, strict=True):
            if status == "busy":
                busy.append(path)
                continue
            self.seen.add(digest)
            if status == "stored":
                self.skip()
            else:
                todo.append((path, digest))
        return busy, todo

    def prepare(self, batch: list[Path]) -> tuple[list[Path], list[tuple[Path, str, torch.Tensor]]]:
        """Hash, claim and decode ``batch``: the paths another run holds, and ``(path, sha256, image)`` to compute."""
        from keypatch.geometry import load_image

        busy, claimed = self.claimed(batch)
        todo = []
        for path, digest in claimed:
            try:
                todo.append((path, digest, load_image(path, self.mae.config.image_size, self.notes,
                                                      resize=self.settings.resize)))
            except (OSError, ValueError) as exc:
                self.unreadable(path, digest, exc)
        return busy, todo

    def unreadable(self, path: Path, digest: str, reason: object) -> None:
        """Give up the claim on an image that could not be read, and report it."""
        self.store.release(self.run, [self.key_of(digest)])
        self.fail(path, reason)

    def compute(self, todo: list[tuple[Path, str, torch.Tensor]]) -> None:
        """Propose for the loaded images and store one record each."""
        from keypatch.api import propose_normalised

        if self.mae.device.type == "cpu":  # runs sharing this machine split its cores
            torch.set_num_threads(max(1, self.threads // max(1, self.store.live_runs())))
        images = torch.stack([x for _, _, x in todo]).to(self.mae.device)
        results = propose_normalised(images, self.ratio, self.proposer, self.mae, self.seed,
                                     self.settings.count)
        for (path, digest, _), res in zip(todo, results, strict=True):
            self.keep(path, digest, res.patches, res.losses, res.evaluations, res.seconds)

    def keep(self, path: Path, digest: str, patches: list[int], losses: list[float], evaluations: int,
             seconds: float) -> None:
        """Store the answer for one image as this run's record (counted as recomputed when another
        run stored it meanwhile, after its claim had expired)."""
        from keypatch.store import DuplicateRecordError, Record

        record = Record(
            image_path=str(path.absolute()), sha256=digest, model_id=self.mae.model_id,
            strategy=self.proposer.name, ratio=self.ratio, start=self.start, options=self.options,
            patches=patches, losses=losses, evaluations=evaluations, seconds=seconds,
        )
        try:
            self.store.add(record)
            self.summary["done"] += 1
            log.info("%s: %d patches, L %.5f, %d evaluations, %.2f s", path, len(patches), losses[-1] if losses
                     else float("nan"), evaluations, seconds)
        except DuplicateRecordError:
            self.summary["recomputed"] += 1
            self.skip()
        else:
            self.bar.update(1)
