"""The Ray Data engine: the same job as the local engine, over a Ray cluster's workers.

Ray Data's batch-inference pattern: the driver lists and hashes the files, claims the images that
are not stored yet in the SQLite store (so a re-run, or another run on the same store, skips
them), and builds a dataset of their paths. Ray tasks decode and resize the images
(:func:`decode_batch`); a pool of stateful actors (:class:`ProposeActor`, one per worker, each
holding the MAE on its CPU threads or GPU) runs the same proposers as the local engine; the driver
stores each record as it streams back, so a killed driver loses at most the batches in flight.
Ray restarts a killed actor and retries its batch; the driver's store refuses a second record of
the same image and setting, so nothing is stored twice.

Decoding and proposing run in Ray's worker processes: an unreadable image comes back as a failure
row, is reported and never stops the job.
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from keypatch.engines.base import Engine, register_engine
from keypatch.engines.ray_workers import ProposeActor, decode_batch, hash_batch
from keypatch.geometry.files import IMAGE_SUFFIXES, is_uri, no_images

__all__ = ["DatasetImages", "ProposeActor", "RayEngine", "dataset_paths", "decode_batch", "hash_batch",
           "require_ray"]

CLAIM_BATCH = 4096
"""Images the driver hashes (files) or takes digests of (a dataset's bytes) and claims at a time: one
store transaction each."""

BLOCKS_PER_WORKER = 256
"""At most this many blocks per model actor when the driver lists the files (:meth:`RayEngine.blocks`)."""

DECODE_CPUS = 0.5
"""CPUs a hashing or decoding task asks for: the cluster must hold them beside the model actors."""


class DatasetImages:
    """A user's Ray Dataset of image bytes (columns ``bytes`` and ``path``) as a job's images: read where
    they live, by Ray's workers; ``len()`` counts its rows (on the workers)."""

    def __init__(self, dataset: Any) -> None:
        self.dataset = dataset
        self._count: int | None = None

    def __len__(self) -> int:
        if self._count is None:
            self._count = int(self.dataset.count())
        return self._count

RAY_PACKAGES = {"ray": "ray[data]"}

QUIET_LOGGERS = {
    "ray": logging.WARNING,
    "ray.data": logging.WARNING,  # Ray Data's plan and timing lines (it has its own level)
    "ray.data._internal.progress": logging.ERROR,  # "Progress bars disabled": the driver's own bar counts images
}
"""Log levels the engine sets for Ray's loggers: warnings and errors through, Ray's chatter not."""


def require_ray() -> Any:
    """``ray`` and ``ray.data``, or :class:`~keypatch.classifiers.MissingExtraError` naming the extra."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError as exc:
        from keypatch.classifiers import MissingExtraError

        raise MissingExtraError("--engine ray needs Ray Data, the 'ray' extra (ray[data] is missing): "
                                "pip install 'keypatch[ray]'") from exc
    return ray


@register_engine
@dataclass(frozen=True)
class RayEngine(Engine):
    """Ray Data: decoding in Ray tasks, ``workers`` stateful actors holding the MAE.

    Parameters
    ----------
    address : str, optional
        The cluster to join (default: a local instance with the workers' CPUs and one more).
    workers : int
        Model actors.
    cpus_per_worker, gpus_per_worker : float
        The CPUs (torch threads) and GPUs each actor holds.
    """

    name = "ray"
    description = "Ray Data: decoding in Ray tasks, proposing on --workers actors (pip install 'keypatch[ray]')"
    address: str | None = None
    workers: int = 2
    cpus_per_worker: float = 1
    gpus_per_worker: float = 0

    def check(self) -> None:
        require_ray()
        if isinstance(self.workers, bool) or not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        for what, value, least in (("cpus_per_worker", self.cpus_per_worker, 0.0),
                                   ("gpus_per_worker", self.gpus_per_worker, -1.0)):
            if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > least:
                raise ValueError(f"{what} must be a number {'> 0' if least == 0 else '>= 0'}, got {value!r}")

    def files(self, paths: Any) -> Any:
        """Files and folders; a Ray Dataset with a ``path`` column (files this machine reads); or one
        with ``bytes`` and ``path`` columns (``read_binary_files(..., include_paths=True)``): images
        read where they live, the path only their name (:class:`DatasetImages`)."""
        if hasattr(paths, "select_columns"):
            if "bytes" in (paths.columns() or []):
                if "path" not in paths.columns():
                    raise ValueError("a Ray Dataset of image bytes needs a 'path' column to name them "
                                     "(read_binary_files(..., include_paths=True) gives one)")
                return DatasetImages(paths)
            paths = dataset_paths(paths)
        items = [paths] if isinstance(paths, (str, Path)) else list(paths)
        uris = [p for p in items if is_uri(p)]
        if uris:
            return self._read_uris(items, uris)
        return super().files(items)

    def _read_uris(self, items: list[Any], uris: list[str]) -> DatasetImages:
        """URIs (``file://``, ``s3://``, ``gs://``...) as a dataset of their image files' bytes, listed by
        Ray on the driver (names and sizes only) and read by the workers."""
        if len(uris) != len(items):
            local = next(p for p in items if not is_uri(p))
            raise ValueError(f"give every source as a URI or every source as a path, not both ({local} beside "
                             f"{uris[0]}): a folder every worker sees is file:///abs/path")
        ray = require_ray()
        self._start(ray)
        extensions = sorted(s[1:] for s in IMAGE_SUFFIXES)
        try:
            dataset = ray.data.read_binary_files(uris, include_paths=True, file_extensions=extensions)
        except FileNotFoundError as exc:
            raise FileNotFoundError(f"no such file or folder: {exc}") from exc
        images = DatasetImages(dataset)
        if len(images) == 0:
            raise no_images(uris)
        return images

    def summary(self) -> dict[str, Any]:
        return {"engine": self.name, "workers": self.workers}

    def run(self, job: Any, files: list[Path], batch_size: int, poll: float) -> None:
        """Claim the images not stored yet, stream them through Ray, store each record as it comes back;
        then wait, as the local engine does, for images another run holds."""
        ray = require_ray()
        try:
            if isinstance(files, DatasetImages):
                self._run_dataset(ray, job, files.dataset, batch_size, poll)
                return
            waiting, todo = [], []
            for s in range(0, len(files), CLAIM_BATCH):  # hashed and claimed in bounded batches
                busy, mine = job.claimed(files[s : s + CLAIM_BATCH])
                waiting += busy
                todo += mine
            if todo:
                self._stream(ray, job, todo, batch_size)
            job.wait_for(waiting, batch_size, poll)
        finally:
            job.finish()

    def _run_dataset(self, ray: Any, job: Any, dataset: Any, batch_size: int, poll: float) -> None:
        """Images as a dataset's bytes: the workers hash them, the driver claims the digests in
        batches of :data:`CLAIM_BATCH` (it never holds the bytes), the workers decode the claimed ones
        and the actors propose; images another run holds are waited for and then taken over."""
        self._start(ray)
        rows = dataset.select_columns(["path", "bytes"])
        self.check_resources(ray)
        hashed = rows.map_batches(hash_batch, batch_format="numpy", num_cpus=DECODE_CPUS)
        busy: list[tuple[str, str]] = []
        todo: list[tuple[str, str]] = []
        for batch in hashed.iter_batches(batch_size=CLAIM_BATCH, batch_format="numpy"):
            held, mine = job.claim(job.named([(str(p), str(d)) for p, d in zip(batch["path"], batch["sha256"],
                                                                                strict=True)]))
            busy += [(p, job.digests[p]) for p in held]
            todo += mine
        while True:
            if todo:
                self._stream(ray, job, todo, batch_size, rows)
            if not busy:
                return
            job.bar.set_postfix_str(f"{len(busy)} held by another run")
            time.sleep(poll)
            held, todo = job.claim(busy)
            busy = [(p, job.digests[p]) for p in held]

    def _start(self, ray: Any) -> None:
        for name, level in QUIET_LOGGERS.items():
            logging.getLogger(name).setLevel(level)
        if ray.is_initialized():
            return
        if self.address:
            ray.init(address=self.address, logging_level=logging.WARNING, log_to_driver=False)
            return
        # a local instance: the actors' CPUs, and one for the decoding tasks
        cpus = int(np.ceil(self.workers * self.cpus_per_worker)) + 1
        # an instance of this process only, shut down with it: Ray's notice about its access token is not for the user
        logging.getLogger("ray._private.authentication.authentication_token_setup").setLevel(logging.ERROR)
        ray.init(num_cpus=cpus, num_gpus=int(np.ceil(self.workers * self.gpus_per_worker)) or None,
                 include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)

    def check_resources(self, ray: Any) -> None:
        """A ValueError when the cluster cannot hold the actors and still run a decoding task beside
        them (Ray would wait for the CPUs forever): say so before any work."""
        total = ray.cluster_resources()
        cpus, gpus = float(total.get("CPU", 0)), float(total.get("GPU", 0))
        need = self.workers * self.cpus_per_worker
        if need + DECODE_CPUS > cpus:
            raise ValueError(f"the Ray cluster has {cpus:g} CPUs; {self.workers} workers x {self.cpus_per_worker:g} "
                             f"CPUs each leave less than the {DECODE_CPUS:g} a decoding task needs, and the job "
                             "would wait forever: use fewer --workers or --cpus-per-worker, or a larger cluster")
        if self.workers * self.gpus_per_worker > gpus:
            raise ValueError(f"the Ray cluster has {gpus:g} GPUs; {self.workers} workers x {self.gpus_per_worker:g} "
                             "GPUs each do not fit")

    def blocks(self, images: int, batch_size: int) -> int:
        """Blocks to cut ``images`` listed files into: one batch a block (a batch goes to the first actor
        free, so none idles at the end while another holds a queue), at most :data:`BLOCKS_PER_WORKER`
        per actor (a block is scheduled at a cost: past that, the last block's imbalance is a small
        part of the job)."""
        return max(1, min(-(-images // batch_size), BLOCKS_PER_WORKER * self.workers))

    def _stream(self, ray: Any, job: Any, todo: list[tuple[Any, str]], batch_size: int, rows: Any = None) -> None:
        """Decode and propose ``todo`` (``(path, sha256)``), storing each record as it comes back; with
        ``rows`` (a dataset's ``path`` and ``bytes``), its rows whose ``(path, sha256)`` are in ``todo``."""
        self._start(ray)
        self.check_resources(ray)
        ctx = ray.data.DataContext.get_current()
        ctx.enable_progress_bars = False  # the driver's own bar counts images
        digests = {str(p): d for p, d in todo}
        decode = {"size": job.mae.config.image_size, "resize": job.settings.resize}
        if rows is None:
            ds = ray.data.from_items([{"path": str(p), "sha256": d} for p, d in todo],
                                     override_num_blocks=self.blocks(len(todo), batch_size))
        else:
            ds, decode["wanted"] = rows, frozenset(digests.items())
        ds = ds.map_batches(decode_batch, batch_size=batch_size, batch_format="numpy", num_cpus=DECODE_CPUS,
                            fn_kwargs=decode)
        device = "cuda" if self.gpus_per_worker > 0 else "cpu"
        # one batch in flight per actor: a batch goes to the first actor free, so none idles while another
        # holds a queue (at the start, when one actor is ready first, and at the end)
        pool = ray.data.ActorPoolStrategy(size=self.workers, max_tasks_in_flight_per_actor=1)
        ds = ds.map_batches(
            ProposeActor, batch_size=batch_size, batch_format="numpy", compute=pool,
            num_cpus=self.cpus_per_worker, num_gpus=self.gpus_per_worker or None,
            fn_constructor_kwargs={"model": job.model_spec, "proposer": job.proposer, "ratio": job.ratio,
                                   "count": job.settings.count, "seed": job.seed,
                                   "threads": max(1, int(self.cpus_per_worker)), "device": device},
        )
        for row in ds.iter_rows():
            path = Path(row["path"]) if rows is None else str(row["path"])  # a dataset's name stays a name
            for kind in json.loads(row["notes"]):
                job.notes.add(kind, str(path))
            if row["error"]:
                job.unreadable(path, digests[str(path)], row["error"])
            else:
                job.keep(path, row["sha256"], json.loads(row["patches"]), json.loads(row["losses"]),
                         int(row["evaluations"]), float(row["seconds"]))


def dataset_paths(dataset: Any) -> list[Path]:
    """The ``path`` column of a user's Ray Dataset (e.g. ``ray.data.read_images(..., include_paths=True)``)."""
    if "path" not in (dataset.columns() or []):
        raise ValueError("a Ray Dataset of images needs a 'path' column (read_images(..., include_paths=True) or "
                         "read_binary_files(..., include_paths=True) give one)")
    return [Path(p) for p in dataset.select_columns(["path"]).to_pandas()["path"]]
