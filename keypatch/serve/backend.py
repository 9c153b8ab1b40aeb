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
from keypatch.data.labels import task_image
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

SCORES = ("loss", "gain")
"""A prediction's score: ``loss``, ``L`` after the proposal; ``gain``, what the proposed patches lower ``L`` by
(from the annotated patches' ``L``, or the empty set's for an image with none)."""

ANNOTATED_NAME = "annotated.json"
"""Beside the store: the patches each image's annotations cover, by image content and annotation id."""


def read_annotated(path: Path, n: int) -> dict[str, dict[str, list[int]]]:
    """``annotated.json`` checked (sha256 -> annotation id -> distinct patches of a grid of ``n``);
    empty where there is none. Anything else is a :class:`~keypatch.untrusted.HostileFileError`."""
    from keypatch.untrusted import bounded, read_json, refuse

    if not path.exists():
        return {}
    data = read_json(path, max_bytes=256 << 20)
    if not isinstance(data, dict):
        raise refuse(path, "the file", "is not a JSON object")
    out: dict[str, dict[str, list[int]]] = {}
    for digest, per in data.items():
        if len(digest) != 64 or any(c not in "0123456789abcdef" for c in digest) or not isinstance(per, dict):
            raise refuse(path, f"entry {digest[:70]!r}", "is not a sha256 with its annotations")
        out[digest] = {}
        for aid, patches in per.items():
            at = f"{digest[:12]} annotation {aid[:20]!r}"
            if not aid.isdigit() or not isinstance(patches, list):
                raise refuse(path, at, "is not an annotation id with a list of patches")
            out[digest][aid] = sorted({bounded(p, 0, n - 1, file=path, entry=f"{at}: a patch") for p in patches})
    return out


def write_annotated(path: Path, data: dict[str, dict[str, list[int]]]) -> None:
    """Write ``annotated.json`` whole, through a temporary file (a reader never sees half of it)."""
    import json
    import os

    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, sort_keys=True))
    os.replace(tmp, path)


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
                 preset: str | None = None, thread: bool = True, score: str = "loss", **options: Any) -> None:
        if score not in SCORES:
            raise ValueError(f"score must be one of {', '.join(SCORES)}, got {score!r}")
        self.score = score
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
        self.annotated_path = Path(out) / ANNOTATED_NAME
        self.annotated = read_annotated(self.annotated_path, self.mae.grid.n)
        """Image sha256 -> annotation id -> the patches it covers (what the webhook recorded)."""
        self._continued: dict[tuple[str, tuple[int, ...]], Record] = {}
        self._before: dict[tuple[str, tuple[int, ...]], float] = {}  # L before a proposal (score "gain")
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
                record, width, height, score = p.future.result(timeout=left)
                pred = prediction(record, self.mae.grid, width, height, model_version=self.model_version,
                                  from_name=fit.from_name, to_name=fit.to_name, label=fit.label)
                out.append({**pred, "score": score})
            except FutureTimeout:
                out.append(self._error(TimeoutError(
                    f"{p.name}: not done within the request's {timeout:g} s; it is still being proposed, and "
                    "will be served from the store when asked again")))
            except Exception as exc:  # noqa: BLE001 - each task's failure is its own result
                out.append(self._error(exc))
        return out

    def webhook(self, payload: dict[str, Any]) -> dict[str, Any]:
        """Label Studio's webhook: an annotation created or updated records the patches it covers
        (at least half of their pixels; :func:`keypatch.rounds.after.annotated_patches`) for its
        task's image, by content, in ``OUT/annotated.json``; deleted annotations are forgotten. The
        next ``/predict`` of an image with annotated patches proposes the patches after them (they
        stay out of the prediction). Other events are acknowledged and ignored."""
        action = payload.get("action")
        if action in ("ANNOTATION_CREATED", "ANNOTATION_UPDATED"):
            task, annotation = payload.get("task"), payload.get("annotation")
            if not isinstance(task, dict) or not isinstance(annotation, dict) or not isinstance(task.get("data"), dict):
                raise ValueError(f"{action} without its task and annotation (send_payload must be on)")
            aid = annotation.get("id")
            if isinstance(aid, bool) or not isinstance(aid, int):
                raise ValueError(f"{action}: the annotation has no integer id")
            data = task["data"]
            ref = task_image(data)
            item = _Item(str(ref), self.source.get(ref))
            digest = hashlib.sha256(item.data).hexdigest()
            size = self._size(item)  # within max_pixels, from the header: the annotation must be on this image
            results = annotation.get("result") if isinstance(annotation.get("result"), list) else []
            for res in results:
                if isinstance(res, dict) and "original_width" in res and (
                        res.get("original_width"), res.get("original_height")) != size:
                    raise ValueError(f"{action}: a result of annotation {aid} is on a "
                                     f"{str(res.get('original_width'))[:12]}x{str(res.get('original_height'))[:12]} "
                                     f"image, not the task's {size[0]}x{size[1]}")
            from keypatch.rounds.after import annotated_patches

            found = annotated_patches([{"id": task.get("id", 0), "data": data, "annotations": [annotation]}],
                                      self.mae.grid, source=f"the {action} of annotation {aid}")
            patches = next(iter(found.by_name.values()), [])
            with self._lock:
                self.annotated.setdefault(digest, {})[str(aid)] = patches
                write_annotated(self.annotated_path, self.annotated)
                total = len(set().union(*self.annotated[digest].values()))
            return {"status": "ok", "image": digest[:12], "annotation": aid, "patches": len(patches),
                    "annotated": total}
        if action == "ANNOTATIONS_DELETED":
            gone = {str(a.get("id")) for a in payload.get("annotations") or [] if isinstance(a, dict)}
            with self._lock:
                for per in self.annotated.values():
                    for aid in gone & set(per):
                        del per[aid]
                write_annotated(self.annotated_path, self.annotated)
            return {"status": "ok", "forgotten": len(gone)}
        return {"status": "ok", "note": f"{str(action)[:60]} is not an event key patches use"}

    def _annotated(self, digest: str) -> list[int]:
        with self._lock:
            per = self.annotated.get(digest, {})
            return sorted(set().union(*per.values())) if per else []

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

    def _continue(self, digest: str, item: _Item, after: list[int]) -> Record | None:
        """The proposal after an image's annotated patches ``after``: the next ``k`` patches (the
        annotated ones not among them), its loss ``L`` of all of them; None where the strategy
        cannot continue from given patches (the image is then served as if not annotated)."""
        from keypatch.rounds import check_budget, pool_proposals

        key = (digest, tuple(after))
        if key in self._continued:
            return self._continued[key]
        proposer = self.job.proposer
        try:
            check_budget(proposer)
        except ValueError:
            log.warning("%s cannot continue from annotated patches: %s is served as if none were", proposer.name,
                        item.name)
            return None
        x = self._pixels(item)[None].to(self.mae.device)
        k = min(self.mae.grid.n, len(after) + self.job.k)
        with torch.no_grad():
            p = pool_proposals(self.mae, x, proposer, k=k, after=[after], seed=self.job.seed)[0]
        s = self.job.setting
        self._before[key] = float(p.losses[len(after) - 1])
        record = Record(item.name, digest, s.model_id, s.strategy, s.ratio, s.start, p.patches[len(after):],
                        p.losses[len(after):], {**s.options, "after": len(after)}, p.evaluations, p.seconds)
        with self._lock:
            self._continued[key] = record
            self.stats["computed"] += 1
        return record

    def _score(self, digest: str, record: Record, item: _Item, after: tuple[int, ...]) -> float:
        """The prediction's score (:data:`SCORES`): ``L`` after the proposal, or what it lowers ``L`` by."""
        if self.score == "loss":
            return float(record.loss)
        key = (digest, after)
        if key not in self._before:  # an image with nothing annotated: from the empty set's L (one pass, kept)
            from keypatch.objective import Objective

            x = self._pixels(item)[None].to(self.mae.device)
            with torch.no_grad():
                empty = torch.empty(1, 0, dtype=torch.long, device=self.mae.device)
                self._before[key] = float(Objective(self.mae, x, precision="float32").score(empty)[0])
        return self._before[key] - float(record.loss)

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
        befores: dict[str, tuple[int, ...]] = {}
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
            after = self._annotated(digest)
            try:
                record = self._continue(digest, sized[0][0], after) if after else self._stored(store, digest)
            except Exception as exc:  # noqa: BLE001 - an image that cannot be continued is that task's error
                for item, _, _ in sized:
                    item.future.set_exception(exc)
                continue
            if record is None:
                first = sized[0][0]
                try:
                    todo[digest] = (first.name, self._pixels(first))
                except Exception as exc:  # noqa: BLE001 - an unreadable image is that task's error
                    for item, _, _ in sized:
                        item.future.set_exception(ValueError(str(exc).replace(first.name, item.name)))
                    continue
            ready[digest] = (record, sized)
            befores[digest] = tuple(after)
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
            score = None
            if record is not None:
                try:
                    score = self._score(digest, record, items[0][0], befores.get(digest, ()))
                except Exception as exc:  # noqa: BLE001 - an image that cannot be scored is that task's error
                    for item, _, _ in items:
                        item.future.set_exception(exc)
                    continue
            for item, w, h in items:
                if record is None:
                    item.future.set_exception(RuntimeError(f"{item.name}: no record was stored"))
                else:
                    item.future.set_result((record, w, h, score))
