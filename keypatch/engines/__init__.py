"""Engines: where a propose job computes (:mod:`keypatch.engines.base`: the registry).

``process`` (:mod:`keypatch.engines.local`, the default) computes in this process, files decoded
ahead in a thread; ``ray`` (:mod:`keypatch.engines.ray_data`) runs the same job on a Ray cluster.
Both drive the same :class:`keypatch.engines.job.Job`. Nothing here imports torch: Ray's decoding
tasks import this package.
"""

from keypatch.engines import local, ray_data  # noqa: F401  (each registers its engine)
from keypatch.engines.base import ALIASES, ENGINES, Engine, engine_names, get_engine, register_engine
from keypatch.engines.local import ThisProcess
from keypatch.engines.ray_data import RayEngine

__all__ = ["ALIASES", "ENGINES", "Engine", "RayEngine", "ThisProcess", "engine_names", "get_engine",
           "register_engine"]
