"""Datasets beyond one machine: :func:`propose_dataset` runs a propose job on Ray Data."""

from __future__ import annotations

from typing import Any

from keypatch.batch import run_propose


def propose_dataset(source: Any, ratio: float, strategy: Any = "greedy", *, workers: int = 2,
                    cpus_per_worker: float = 1, gpus_per_worker: float = 0, address: str | None = None,
                    **kwargs: Any) -> dict[str, Any]:
    """Propose key patches for image files, folders, URIs or a Ray Dataset, on Ray.

    Files and folders are listed and hashed by the driver. URIs (``s3://bucket/train``,
    ``file:///shared/train``: every source a URI) are read with
    ``ray.data.read_binary_files(uri, include_paths=True)``, and a dataset with ``bytes`` and
    ``path`` columns is taken as it is: the images are read where they live, the workers hash and
    decode them, the driver only claims digests and stores records, and each path is kept as the
    image's name. A dataset with only a ``path`` column names files the driver reads.

    The same job and store as :func:`keypatch.batch.run_propose` (``out_dir``, ``model``, ``seed``,
    ``batch_size``, strategy options... pass through), with ``engine="ray"``: decoding in Ray tasks,
    ``workers`` stateful actors holding the MAE (``cpus_per_worker`` torch threads and
    ``gpus_per_worker`` GPUs each), records streamed back into the SQLite store as they arrive;
    images already stored are left out before anything is scheduled. Returns the run's summary.
    """
    from keypatch.engines import RayEngine

    engine = RayEngine(address=address, workers=workers, cpus_per_worker=cpus_per_worker,
                       gpus_per_worker=gpus_per_worker)
    return run_propose(source, ratio, strategy, engine=engine, **kwargs)
