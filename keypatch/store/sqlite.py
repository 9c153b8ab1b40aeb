"""A SQLite store of proposals: one row per (image, settings), written as each image finishes.

The table ``proposals`` is keyed by the image's content (sha256 of the file bytes) and the settings
that determine the result: model id, strategy, ratio, start and the remaining options (canonical
JSON). Re-running with the same settings therefore finds the image already done, even when the file
was moved or renamed. The database runs in WAL mode and every :meth:`ResultStore.add` commits, so an
interrupted run keeps every finished image.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

STORE_NAME = "results.sqlite"
"""File name of the store inside a results folder."""

_SCHEMA = """
CREATE TABLE IF NOT EXISTS proposals (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    image_path TEXT NOT NULL,
    sha256 TEXT NOT NULL,
    model_id TEXT NOT NULL,
    strategy TEXT NOT NULL,
    ratio REAL NOT NULL,
    start TEXT NOT NULL,
    options_json TEXT NOT NULL,
    patches_json TEXT NOT NULL,
    losses_json TEXT NOT NULL,
    loss REAL,
    evaluations INTEGER NOT NULL,
    seconds REAL NOT NULL,
    created TEXT NOT NULL,
    UNIQUE (sha256, model_id, strategy, ratio, start, options_json)
)
"""

_FILTERS = ("id", "image_path", "sha256", "model_id", "strategy", "ratio", "start", "options_json")


class DuplicateRecordError(ValueError):
    """A record with the same image content and settings is already stored."""


def sha256_file(path: str | Path, chunk_size: int = 1 << 20) -> str:
    """Hex sha256 of the bytes of the file at ``path``."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(chunk_size):
            h.update(chunk)
    return h.hexdigest()


def options_key(options: dict[str, Any] | str | None) -> str:
    """Canonical JSON of ``options`` (sorted keys, no spaces): the form stored in ``options_json``."""
    if isinstance(options, str):
        options = json.loads(options) if options else {}
    return json.dumps(options or {}, sort_keys=True, separators=(",", ":"))


def _now() -> str:
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
    def settings(self) -> tuple[str, str, float, str, str]:
        """``(model_id, strategy, ratio, start, options_json)``: everything but the image."""
        return (self.model_id, self.strategy, float(self.ratio), self.start, self.options_json)


class ResultStore:
    """Proposals in a SQLite file.

    Parameters
    ----------
    path : str or Path
        The database file, or an existing folder (then ``folder / "results.sqlite"``).
    create : bool
        Create the file (and its parent folders) if missing; otherwise a missing file raises
        :class:`FileNotFoundError`.

    Examples
    --------
    >>> with ResultStore(tmp / "results.sqlite") as store:     # doctest: +SKIP
    ...     store.add(record)
    ...     store.records(strategy="greedy", ratio=0.1)
    """

    def __init__(self, path: str | Path, create: bool = True) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / STORE_NAME
        if not path.is_file():
            if not create:
                raise FileNotFoundError(f"no results store at {path}")
            path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._conn: sqlite3.Connection | None = sqlite3.connect(str(path), timeout=30.0)
        try:
            self._conn.execute("PRAGMA journal_mode=WAL")
            self._conn.execute(_SCHEMA)
            self._conn.commit()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            self._conn = None
            raise ValueError(f"{path} is not a keypatch results store: {exc}") from exc

    # -- lifecycle ---------------------------------------------------------------------------------

    @property
    def conn(self) -> sqlite3.Connection:
        """The open connection (raises RuntimeError once closed)."""
        if self._conn is None:
            raise RuntimeError(f"the results store {self.path} is closed")
        return self._conn

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __len__(self) -> int:
        return self.conn.execute("SELECT COUNT(*) FROM proposals").fetchone()[0]

    # -- queries -----------------------------------------------------------------------------------

    def has(self, sha256: str, model_id: str, strategy: str, ratio: float, start: str = "",
            options: dict[str, Any] | str | None = None) -> bool:
        """Whether a proposal for this image content and these settings is stored."""
        row = self.conn.execute(
            "SELECT 1 FROM proposals WHERE sha256=? AND model_id=? AND strategy=? AND ratio=? AND start=?"
            " AND options_json=? LIMIT 1",
            (sha256, model_id, strategy, float(ratio), start, options_key(options)),
        ).fetchone()
        return row is not None

    def add(self, record: Record) -> int:
        """Insert ``record`` and commit; sets and returns its ``id`` (and ``created`` if empty).

        Raises
        ------
        DuplicateRecordError
            (a ValueError) If a record with the same image content and settings is already stored.
        ValueError
            If ``patches`` and ``losses`` differ in length.
        """
        if len(record.patches) != len(record.losses):
            raise ValueError(f"{len(record.patches)} patches but {len(record.losses)} losses")
        created = record.created or _now()
        try:
            with self.conn:  # commits on success, rolls back on error
                cur = self.conn.execute(
                    "INSERT INTO proposals (image_path, sha256, model_id, strategy, ratio, start, options_json,"
                    " patches_json, losses_json, loss, evaluations, seconds, created)"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (str(record.image_path), record.sha256, record.model_id, record.strategy, float(record.ratio),
                     record.start, record.options_json, json.dumps([int(p) for p in record.patches]),
                     json.dumps([float(v) for v in record.losses]), record.loss, int(record.evaluations),
                     float(record.seconds), created),
                )
        except sqlite3.IntegrityError as exc:
            raise DuplicateRecordError(
                f"{record.image_path} (sha256 {record.sha256[:12]}) is already stored with these settings"
            ) from exc
        record.id, record.created = cur.lastrowid, created
        return cur.lastrowid

    def records(self, **filters: Any) -> list[Record]:
        """Stored records, oldest first, matching every given filter.

        Filters are column values: ``image_path``, ``sha256``, ``model_id``, ``strategy``, ``ratio``
        (matched to 1e-9), ``start``, ``options_json`` (or ``options`` as a dict), ``id``. A filter
        whose value is None is ignored.
        """
        if "options" in filters:
            opts = filters.pop("options")
            filters["options_json"] = None if opts is None else options_key(opts)
        unknown = sorted(set(filters) - set(_FILTERS))
        if unknown:
            raise ValueError(f"unknown record filter(s) {', '.join(unknown)}; choose from {', '.join(_FILTERS)}")
        where, params = [], []
        for key, value in filters.items():
            if value is None:
                continue
            if key == "ratio":
                where.append("ABS(ratio - ?) < 1e-9")
                params.append(float(value))
            else:
                where.append(f"{key} = ?")
                params.append(value)
        sql = "SELECT id, image_path, sha256, model_id, strategy, ratio, start, options_json, patches_json," \
              " losses_json, evaluations, seconds, created FROM proposals"
        if where:
            sql += " WHERE " + " AND ".join(where)
        rows = self.conn.execute(sql + " ORDER BY id", params).fetchall()
        return [
            Record(image_path=r[1], sha256=r[2], model_id=r[3], strategy=r[4], ratio=r[5], start=r[6],
                   options=json.loads(r[7]), patches=json.loads(r[8]), losses=json.loads(r[9]), evaluations=r[10],
                   seconds=r[11], created=r[12], id=r[0])
            for r in rows
        ]
