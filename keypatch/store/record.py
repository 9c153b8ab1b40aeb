"""One stored proposal (:class:`Record`) and the file hash that keys it."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keypatch.store.keys import options_key
from keypatch.store.setting import Setting


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of the bytes of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def now() -> str:
    """The current UTC time, ISO 8601 with microseconds (a record's ``created``)."""
    return datetime.now(UTC).isoformat(timespec="microseconds")


@dataclass
class Record:
    """One stored proposal.

    ``start`` is ``""`` for strategies that take no start; ``options`` holds every other setting
    that can change the result (e.g. ``seed``, ``precision``). ``created`` is an ISO-8601 UTC
    timestamp set by :meth:`ResultStore.add`; ``id`` is assigned there too.
    """

    image_path: str
    sha256: str
    model_id: str
    strategy: str
    ratio: float
    start: str
    patches: list[int]
    losses: list[float]
    options: dict[str, Any] = field(default_factory=dict)
    evaluations: int = 0
    seconds: float = 0.0
    created: str = ""
    id: int | None = None

    @property
    def loss(self) -> float | None:
        """Final ``L`` (the last per-step loss), None when there are no losses."""
        return self.losses[-1] if self.losses else None

    @property
    def options_json(self) -> str:
        """``options`` in the canonical JSON form used for uniqueness."""
        return options_key(self.options)

    @property
    def settings(self) -> Setting:
        """The record's :class:`~keypatch.store.setting.Setting`: everything but the image."""
        return Setting(self.model_id, self.strategy, float(self.ratio), self.start, self.options_json)


