"""The propose job every engine runs: claims in the store, decoding, computing, keeping records.

:class:`Job` holds one run's settings and summary and the steps the engines share; the engines
(:mod:`keypatch.engines.local`, :mod:`keypatch.engines.ray_data`) only decide where the steps run.
:class:`Heartbeat` renews the run's claims while it lives.
"""

from __future__ import annotations

import logging
import threading
import time
import warnings
from pathlib import Path
from typing import Any

import torch

from keypatch import api
from keypatch.geometry import InputNotes, load_image
from keypatch.geometry.decode import ImageWarning
from keypatch.presets import RunSettings, run_settings
from keypatch.proposers.base import Proposer
from keypatch.proposers.search import start_patch
from keypatch.reconstructors.mae import MAE
from keypatch.reconstructors.precision import resolve_precision
from keypatch.store import MAY_MOVE, DuplicateRecordError, Record, Setting, sha256_file
from keypatch.store.claims import RunId

__all__ = ["Heartbeat", "Job", "stored_settings"]

log = logging.getLogger("keypatch.propose")


def stored_settings(proposer: Proposer, seed: int, mae: MAE,
                    settings: RunSettings | None = None) -> tuple[str, dict[str, Any]]:
    """``(start, options)`` a record of ``proposer`` run with the MAE ``mae`` is stored under: its
    :meth:`~Proposer.settings`, with the ``seed`` only where the answer depends on it, ``precision``
    as used (``"auto"`` resolved for ``mae`` and its device, as :class:`~keypatch.objective.Objective`
    resolves it), the run's ``count`` and ``resize`` where they are not the paper's
    (:meth:`~keypatch.presets.RunSettings.stored`), and ``start`` (``""`` if it takes none or
    ignores it; a ``"row,col"`` start as its index on ``mae``'s grid; ``" (may move)"`` after it for
    a strategy whose refinement may move it, :attr:`~Proposer.start_rule`)."""
    start = getattr(proposer, "start", "") if "start" in proposer.options and proposer.start_rule != "ignored" else ""
    index = start_patch(start, mae.grid) if start else None  # a ValueError for a patch outside the grid
    if "," in start:  # "row,col" is stored as its index, like a start given so
        start = str(index)
    if proposer.start_rule == "moves" and index is not None:
        start += MAY_MOVE
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


class Job:
    """One propose job: its settings, its summary, and the steps every engine shares: hash and claim
    the images in the store (:meth:`claimed`), decode them (:meth:`prepare`), compute
    (:meth:`compute`), store each answer (:meth:`keep`), report an unreadable image
    (:meth:`unreadable`), and wait for images another run holds (:meth:`wait_for`). An engine
    (:class:`keypatch.engines.Engine`) drives these steps; :func:`keypatch.batch.run_propose` opens
    the store and sets :attr:`store` and :attr:`bar` before it does."""

    def __init__(self, mae: Any, proposer: Proposer, ratio: float, seed: int, lease: float, found: int,
                 settings: RunSettings | None = None, model_spec: Any = None) -> None:
        self.mae, self.proposer, self.ratio, self.seed, self.lease = mae, proposer, ratio, seed, lease
        self.model_spec = mae if model_spec is None else model_spec  # how a worker elsewhere loads the model
        self.settings = settings or run_settings()
        self.k = mae.grid.count(ratio, self.settings.count)
        self.start, self.options = stored_settings(proposer, seed, mae, self.settings)
        self.setting = Setting.of(mae.model_id, proposer.name, ratio, self.start, self.options)  # the records' identity
        self.notes, self.run = InputNotes(), RunId()
        self.store: Any = None
        self.bar: Any = None
        self.digests: dict[Any, str] = {}
        self.seen: set[str] = set()
        self.threads = torch.get_num_threads()
        self.summary: dict[str, Any] = {
            "found": found, "done": 0, "skipped": 0, "recomputed": 0, "failed": 0, "failed_paths": [], "notes": [],
            "store": "", "model_id": mae.model_id, "strategy": proposer.name, "ratio": ratio, "k": self.k,
            "start": self.start, "options": self.options, "seconds": 0.0,
        }

    def finish(self) -> None:
        """Give up this run's remaining claims and the torch thread count it started with."""
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
        """The claim key of the image ``digest`` for this job's setting."""
        return self.setting.key(digest)

    def hashed(self, batch: list[Path]) -> list[tuple[Path, str]]:
        """``(path, sha256)`` of the images of ``batch`` not yet seen in this run."""
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

    def named(self, items: list[tuple[str, str]]) -> list[tuple[str, str]]:
        """``(name, sha256)`` of images hashed elsewhere (a dataset's rows: the name is kept as it is,
        not resolved against this machine's folders), those not yet seen in this run; every name is
        recorded as a path of its content."""
        new = [(d, name) for name, d in items if name not in self.digests]
        for name, d in items:
            self.digests[name] = d
        out, taken = [], set()
        for name, d in items:
            if d in self.seen or d in taken:  # the same content at another name: one record
                self.skip()
            else:
                taken.add(d)
                out.append((name, d))
        if new:
            self.store.add_paths(new)
        return out

    def process(self, batch: list[Path]) -> list[Path]:
        """Claim, load and compute ``batch``; returns the paths held by another run."""
        busy, todo = self.prepare(batch)
        if todo:
            self.compute(todo)
        return busy

    def claimed(self, batch: list[Path]) -> tuple[list[Path], list[tuple[Path, str]]]:
        """Hash and claim ``batch``: the paths another run holds, and ``(path, sha256)`` to compute here
        (images already stored are counted as skipped)."""
        return self.claim(self.hashed(batch))

    def claim(self, items: list[tuple[Any, str]]) -> tuple[list[Any], list[tuple[Any, str]]]:
        """Claim ``(path, sha256)`` items already hashed: the paths another run holds, and the items to
        compute here (images already stored are counted as skipped)."""
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
        if self.mae.device.type == "cpu":  # runs sharing this machine split its cores
            torch.set_num_threads(max(1, self.threads // max(1, self.store.live_runs())))
        images = torch.stack([x for _, _, x in todo]).to(self.mae.device)
        results = api.propose_normalised(images, self.ratio, self.proposer, self.mae, self.seed,
                                     self.settings.count)
        for (path, digest, _), res in zip(todo, results, strict=True):
            self.keep(path, digest, res.patches, res.losses, res.evaluations, res.seconds)

    def keep(self, path: Path, digest: str, patches: list[int], losses: list[float], evaluations: int,
             seconds: float) -> None:
        """Store the answer for one image as this run's record (counted as recomputed when another
        run stored it meanwhile, after its claim had expired)."""
        record = Record(
            image_path=str(path.absolute()) if isinstance(path, Path) else str(path),  # a dataset's name as it is
            sha256=digest, model_id=self.mae.model_id,
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
