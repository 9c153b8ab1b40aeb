"""The Label Studio ML backend's work: tasks in, key-patch predictions out, through one warm model.

:class:`Backend` loads the MAE once. Every ``/predict`` call hands its images to one batching
thread, which gathers the images of concurrent calls (up to ``batch_size``, waiting at most
``linger`` seconds for more), serves those already in the store, proposes the rest in one batched
call and stores them (the records ``keypatch export`` and ``keypatch report`` read, under the same
setting as ``keypatch propose`` with the same arguments). A task whose image cannot be fetched or
read, or a config without a brush control, gets an error result with a message; the server goes on.
"""

from __future__ import annotations

import hashlib
import io
import logging
import queue
import threading
import time
from concurrent.futures import Future
from concurrent.futures import TimeoutError as FutureTimeout
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from PIL import UnidentifiedImageError

from keypatch import api
from keypatch.engines.job import Job
from keypatch.exports.annotations import image_size
from keypatch.exports.labelstudio import prediction
from keypatch.geometry import InputNotes
from keypatch.geometry.decode import to_rgb8
from keypatch.geometry.pixels import decode_pixels
from keypatch.presets import run_settings
from keypatch.serve.config import fit_config
from keypatch.serve.images import ImageSource
from keypatch.store import STORE_NAME, Record, ResultStore
from keypatch.store.sqlite import DEFAULT_LEASE

log = logging.getLogger("keypatch.serve")


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_postfix_str(self, text: str) -> None:
        pass


@dataclass
class _Item:
    name: str
    data: bytes
    future: Future = field(default_factory=Future)


class Backend:
    """Key patches for Label Studio tasks, with the model loaded once and results kept in a store.

    Parameters
    ----------
    ratio : float
        Keep ratio of every proposal.
    strategy, model, device, seed, preset, **options
        As for ``keypatch propose``.
    out : path
        Results folder; its ``results.sqlite`` holds every record served.
    batch_size : int
        Most images proposed in one call.
    linger : float
        Seconds the batching thread waits for more images once it has one.
    source : ImageSource, optional
        Where task images are fetched from, and the limits.
    max_pixels : int
        Largest image (width x height) read.
    thread : bool
        Run the model's work in a background thread (default). With ``False`` the caller runs it
        with :meth:`serve_batches` in a thread of its choosing, normally the main one: torch's
        OpenMP threads compute up to ~1.7x slower for a Python thread other than the main one
        (measured: the same greedy batch took 13-16 s from the main thread, 22-31 s from another).
    """

    def __init__(self, ratio: float, strategy: str = "greedy", model: Any = "default",
                 out: str | Path = "keypatch-results", *, device: str = "auto", seed: int = 0, batch_size: int = 8,
                 linger: float = 0.02, source: ImageSource | None = None, max_pixels: int = 64_000_000,
                 preset: str | None = None, thread: bool = True, **options: Any) -> None:
        settings = run_settings(preset)
        proposer = api.build_proposer(strategy, settings, options, start_given=False)
        self.mae = api.resolve_model(model, device)
        self.job = Job(self.mae, proposer, float(ratio), seed, DEFAULT_LEASE, 0, settings)
        self.job.bar = _NoBar()
        self.store_path = Path(out) / STORE_NAME
        self.store_path.parent.mkdir(parents=True, exist_ok=True)
        self.batch_size, self.linger, self.max_pixels = batch_size, linger, max_pixels
        self.source = source or ImageSource()
        self.model_version = f"keypatch {self.job.setting.label(with_model=True)}"
        self.stats = {"requests": 0, "tasks": 0, "computed": 0, "from_store": 0, "errors": 0, "batches": 0}
        self._queue: queue.Queue[_Item | None] = queue.Queue()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if thread:
            self._thread = threading.Thread(target=self.serve_batches, name="keypatch-batches", daemon=True)
            self._thread.start()

    # ---------------------------------------------------------------- protocol
    def setup(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Label Studio's ``/setup``: its host and token, taken together (:meth:`ImageSource.bind`;
        never when they were given at start), and the model version."""
        if not self.source.bind(payload.get("hostname"), payload.get("access_token")) and payload.get("hostname"):
            log.warning("/setup named %r: not taken (the Label Studio host is pinned to %s, or that is not an "
                        "http(s) URL)", str(payload.get("hostname"))[:200], self.source.label_studio)
        return {"model_version": self.model_version}

    def predict(self, tasks: list[Any], label_config: Any = None, timeout: float | None = None) -> list[dict[str, Any]]:
        """One prediction per task, in order: the kept patches as a brush mask, ``score`` the loss
        ``L``; or ``{"result": [], "error": MESSAGE}`` for a task that could not be served (whatever
        went wrong with it: the other tasks are answered). With ``timeout``, a task whose image is
        not done within that many seconds of the call gets an error saying so; its image is still
        proposed and stored, and served from the store when asked again."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._lock:
            self.stats["requests"] += 1
            self.stats["tasks"] += len(tasks)
        try:
            if label_config is not None and not isinstance(label_config, str):
                raise ValueError("label_config must be a string (the project's XML config)")
            fit = fit_config(label_config)
        except ValueError as exc:
            return [self._error(exc) for _ in tasks]
        pending: list[_Item | Exception] = []
        for task in tasks:
            try:
                data = task.get("data") if isinstance(task, dict) else None
                ref = data.get(fit.data_key) if isinstance(data, dict) else None
                if ref is None:
                    raise ValueError(f"the task has no data field {fit.data_key!r} (the config's image)")
                item = _Item(str(ref), self.source.get(ref))
                self._queue.put(item)
                pending.append(item)
            except Exception as exc:  # noqa: BLE001 - a bad task is that task's error, never the request's
                pending.append(exc)
        out = []
        for p in pending:
            if isinstance(p, Exception):
                out.append(self._error(p))
                continue
            try:
                left = None if deadline is None else max(0.0, deadline - time.monotonic())
                record, width, height = p.future.result(timeout=left)
                out.append(prediction(record, self.mae.grid, width, height, model_version=self.model_version,
                                      from_name=fit.from_name, to_name=fit.to_name, label=fit.label))
            except FutureTimeout:
                out.append(self._error(TimeoutError(
                    f"{p.name}: not done within the request's {timeout:g} s; it is still being proposed, and "
                    "will be served from the store when asked again")))
            except Exception as exc:  # noqa: BLE001 - each task's failure is its own result
                out.append(self._error(exc))
        return out

    def _error(self, exc: BaseException) -> dict[str, Any]:
        with self._lock:
            self.stats["errors"] += 1
        text = " ".join(str(exc).split()) or type(exc).__name__
        return {"result": [], "score": None, "model_version": self.model_version, "error": text}

    def close(self) -> None:
        """Stop the batching loop (after the images already handed to it)."""
        self._queue.put(None)
        if self._thread is not None:
            self._thread.join(timeout=60)

    # ---------------------------------------------------------------- batching loop
    def serve_batches(self) -> None:
        """Batch and propose the images handed in by :meth:`predict` until :meth:`close`; runs in
        the background thread, or, with ``thread=False``, in the caller's."""
        with ResultStore(self.store_path) as store:
            self.job.store = store
            while True:
                first = self._queue.get()
                if first is None:
                    return
                batch = [first]
                deadline = time.monotonic() + self.linger
                while len(batch) < self.batch_size:
                    try:
                        nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                    except queue.Empty:
                        break
                    if nxt is None:
                        self._queue.put(None)
                        break
                    batch.append(nxt)
                try:
                    self._serve(store, batch)
                except Exception as exc:  # noqa: BLE001 - never let one batch stop the server
                    log.exception("a batch failed")
                    for item in batch:
                        if not item.future.done():
                            item.future.set_exception(exc)

    def _size(self, item: _Item) -> tuple[int, int]:
        """``(width, height)`` from the image's header (nothing decoded), within ``max_pixels``."""
        try:
            w, h = image_size(io.BytesIO(item.data))
        except Exception as exc:  # noqa: BLE001 - Pillow raises several types for bad files
            why = "its format is not one Pillow reads" if isinstance(exc, UnidentifiedImageError) else exc
            raise ValueError(f"{item.name} is not a readable image: {why}") from None
        if w * h > self.max_pixels:
            raise ValueError(f"{item.name} is {w}x{h} pixels, over the limit of {self.max_pixels:,}")
        return w, h

    def _pixels(self, item: _Item) -> torch.Tensor:
        rgb = to_rgb8(item.data, InputNotes(), item.name)
        return torch.from_numpy(decode_pixels(rgb, self.mae.config.image_size, InputNotes(), item.name,
                                              self.job.settings.resize))

    def _stored(self, store: ResultStore, digest: str) -> Record | None:
        s = self.job.setting
        found = store.records(sha256=digest, model_id=s.model_id, strategy=s.strategy, ratio=s.ratio, start=s.start,
                              options_json=s.options_json)
        return found[0] if found else None

    def _serve(self, store: ResultStore, batch: list[_Item]) -> None:
        """Serve one batch: duplicates dropped by content before anything is decoded; each content's
        size read from its header and checked, then looked up in the store; only the contents the
        store lacks are decoded and proposed (in one call)."""
        with self._lock:
            self.stats["batches"] += 1
        groups: dict[str, list[_Item]] = {}
        for item in batch:
            groups.setdefault(hashlib.sha256(item.data).hexdigest(), []).append(item)
        ready: dict[str, tuple[Record | None, list[tuple[_Item, int, int]]]] = {}
        todo: dict[str, tuple[str, torch.Tensor]] = {}
        for digest, items in groups.items():
            sized = []
            for item in items:
                try:
                    sized.append((item, *self._size(item)))
                except Exception as exc:  # noqa: BLE001 - an unreadable image is that task's error
                    item.future.set_exception(exc)
            if not sized:
                continue
            record = self._stored(store, digest)
            if record is None:
                first = sized[0][0]
                try:
                    todo[digest] = (first.name, self._pixels(first))
                except Exception as exc:  # noqa: BLE001 - an unreadable image is that task's error
                    for item, _, _ in sized:
                        item.future.set_exception(ValueError(str(exc).replace(first.name, item.name)))
                    continue
            ready[digest] = (record, sized)
        if todo:
            store.add_paths([(d, name) for d, (name, _) in todo.items()])
            images = torch.stack([x for _, x in todo.values()]).to(self.mae.device)
            with torch.no_grad():
                results = api.propose_normalised(images, self.job.ratio, self.job.proposer, self.mae, self.job.seed,
                                                 self.job.settings.count)
            for (digest, (name, _)), res in zip(todo.items(), results, strict=True):
                self.job.keep(name, digest, res.patches, res.losses, res.evaluations, res.seconds)
        with self._lock:
            self.stats["computed"] += len(todo)
            self.stats["from_store"] += sum(len(v) for d, (_, v) in ready.items() if d not in todo)
        for digest, (record, items) in ready.items():
            if record is None:
                record = self._stored(store, digest)
            for item, w, h in items:
                if record is None:
                    item.future.set_exception(RuntimeError(f"{item.name}: no record was stored"))
                else:
                    item.future.set_result((record, w, h))
