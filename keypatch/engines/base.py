"""Engines: where a propose job computes, as values in one registry.

An engine is a small frozen value (its resources: ``RayEngine(workers=4, address=...)``) with a
``name`` and two methods: :meth:`Engine.files` turns what the user gave into the image files, and
:meth:`Engine.run` drives a :class:`~keypatch.engines.job.Job` over them. A new engine is one file
with an :class:`Engine` subclass decorated by :func:`register_engine` and one import line in
``keypatch/engines/__init__.py``; the command line's ``--engine`` choices and the engine contract
test read :data:`ENGINES`. This module imports no torch (Ray's workers import the package).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, ClassVar

__all__ = ["ENGINES", "Engine", "get_engine", "register_engine"]


class Engine:
    """Where a propose job computes (subclasses are frozen dataclasses of their resources)."""

    name: ClassVar[str] = ""
    description: ClassVar[str] = ""

    def check(self) -> None:
        """Raise a ValueError (or the missing extra's error) before any work if the engine cannot run."""

    def files(self, paths: Any) -> list[Path]:
        """The image files of ``paths`` (files, folders and ``file://`` URIs; an engine may take more kinds)."""
        from keypatch.geometry.files import list_image_files, local_sources

        return list_image_files(local_sources(paths, self.name))

    def run(self, job: Any, files: list[Path], batch_size: int, poll: float) -> None:
        """Every file through ``job`` (:class:`~keypatch.engines.job.Job`), each record stored as it is
        done, then the images another run holds (``job.wait_for``); ``job.finish()`` at the end."""
        raise NotImplementedError

    def summary(self) -> dict[str, Any]:
        """What the run's summary says of the engine."""
        return {"engine": self.name}


ENGINES: dict[str, type[Engine]] = {}
"""The registered engines by name."""

ALIASES = {"local": "process"}
"""Former engine names still accepted (``local`` was renamed: it is also a strategy's name)."""


def register_engine(cls: type[Engine]) -> type[Engine]:
    """Class decorator: register an :class:`Engine` subclass under its ``name``."""
    if not cls.name:
        raise ValueError(f"{cls.__name__} has no name")
    ENGINES[cls.name] = cls
    return cls


def get_engine(engine: str | Engine, **resources: Any) -> Engine:
    """An engine value: ``engine`` itself, or the registered engine of that name built with ``resources``."""
    if isinstance(engine, Engine):
        if resources:
            raise ValueError("give an engine's resources to its constructor, not beside an engine value")
        return engine
    name = ALIASES.get(engine, engine)
    if name not in ENGINES:
        raise ValueError(f"engine must be one of {', '.join(sorted(ENGINES))}, got {engine!r}")
    return ENGINES[name](**resources)


def engine_names(aliases: bool = False) -> list[str]:
    """The registered engines' names, sorted (with ``aliases``, the former names too: the command
    line's choices)."""
    return sorted(ENGINES) + (sorted(a for a, n in ALIASES.items() if n in ENGINES) if aliases else [])
