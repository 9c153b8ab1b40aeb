"""A SQLite store of proposals: one row per (image, settings), written as each image finishes.

The table ``proposals`` is keyed by the image's content (sha256 of the file bytes) and the settings
that determine the result: model id, strategy, ratio, start and the remaining options (canonical
JSON). Re-running with the same settings therefore finds the image already done, even when the file
was moved or renamed. The database runs in WAL mode and every :meth:`ResultStore.add` commits, so an
interrupted run keeps every finished image.

Concurrent runs on one store share the work through the table ``claims``: a run claims an image
(for one setting) before computing it, with its run id, host, process id and a lease that it
renews while it lives (:meth:`ResultStore.claim`, :meth:`ResultStore.renew`). A claim is released
when the record is stored, or at the end of the run; a claim whose lease has expired, or whose
process is gone from this host, is taken over by the next run that wants the image.

A store is marked with SQLite's ``application_id`` (:data:`APPLICATION_ID`); a file that is not an
SQLite database, or is another program's database, is refused with a :class:`StoreError`, and a
damaged one (``PRAGMA quick_check`` fails on opening, or a read fails later) with a
:class:`StoreDamagedError` that points to :func:`keypatch.store.repair.repair_store`.
"""

from __future__ import annotations

import functools
import json
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any

from keypatch.store.claims import DEFAULT_LEASE, RunId, alive, claim_key
from keypatch.store.errors import DuplicateRecordError, StoreDamagedError, StoreError, damaged_message, translate
from keypatch.store.files import (
    APPLICATION_ID,
    CLAIMS_TABLE,
    PATHS_TABLE,
    PROPOSALS_TABLE,
    SCHEMA_VERSION,
    check_writable,
    connect_for_reading,
    create_store,
    foreign_store,
    header_ids,
)
from keypatch.store.keys import options_key
from keypatch.store.record import Record, now, sha256_file
from keypatch.store.setting import Setting

__all__ = ["DEFAULT_LEASE", "DuplicateRecordError", "Record", "ResultStore", "RunId", "StoreDamagedError",
           "StoreError", "claim_key", "options_key", "sha256_file"]

STORE_NAME = "results.sqlite"
"""File name of the store inside a results folder."""

_FILTERS = ("id", "image_path", "sha256", "model_id", "strategy", "ratio", "start", "options_json")


def _locked(method):
    """Run ``method`` holding the store's lock (the heartbeat thread shares the connection)."""

    @functools.wraps(method)
    def wrapper(self, *args, **kwargs):
        with self.lock:
            return method(self, *args, **kwargs)

    return wrapper


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

    def __init__(self, path: str | Path, create: bool = True, check: bool = True, read_only: bool = False) -> None:
        path = Path(path)
        if path.is_dir():
            path = path / STORE_NAME
        self.path, self.read_only = path, read_only
        if not path.is_file() or not path.stat().st_size:
            if not create or read_only:
                raise FileNotFoundError(f"no results store at {path}")
            check_writable(path)
            create_store(path)
        else:
            header_ids(path)  # StoreError if not SQLite
            if not read_only:
                check_writable(path)
        # one connection per store, shareable with the run's heartbeat thread under ``lock``: a
        # second connection to the same file in the same process can make SQLite drop the WAL
        self.lock = threading.RLock()
        self._conn: sqlite3.Connection | None = None
        try:
            self._conn = (connect_for_reading(path) if read_only else
                          sqlite3.connect(str(path), timeout=30.0, check_same_thread=False))
            self._open(check)
        except sqlite3.Error as exc:
            self.close()
            raise translate(path, exc) from exc
        except StoreError:
            self.close()
            raise

    def _open(self, check: bool) -> None:
        conn = self.conn
        if check:
            problem = conn.execute("PRAGMA quick_check(1)").fetchone()[0]
            if problem != "ok":
                raise StoreDamagedError(damaged_message(self.path, problem))
        app = conn.execute("PRAGMA application_id").fetchone()[0]
        why = foreign_store(self.path, app, conn)
        if why:
            raise StoreError(why)
        self._tables = {r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table'")}
        if self.read_only:
            return
        conn.execute("PRAGMA journal_mode=WAL")
        if app != APPLICATION_ID or conn.execute("PRAGMA user_version").fetchone()[0] < SCHEMA_VERSION:
            with conn:
                for sql in (PROPOSALS_TABLE, CLAIMS_TABLE, PATHS_TABLE):
                    conn.execute(sql)
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
                conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._tables |= {"proposals", "claims", "paths"}

    def _execute(self, sql: str, params: Any = ()) -> sqlite3.Cursor:
        try:
            with self.lock:
                return self.conn.execute(sql, params)
        except sqlite3.IntegrityError:
            raise
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc

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
        return self._execute("SELECT COUNT(*) FROM proposals").fetchone()[0]

    # -- queries -----------------------------------------------------------------------------------

    def has(self, sha256: str, model_id: str, strategy: str, ratio: float, start: str = "",
            options: dict[str, Any] | str | None = None) -> bool:
        """Whether a proposal for this image content and these settings is stored."""
        row = self._execute(
            "SELECT 1 FROM proposals WHERE sha256=? AND model_id=? AND strategy=? AND ratio=? AND start=?"
            " AND options_json=? LIMIT 1",
            (sha256, model_id, strategy, float(ratio), start, options_key(options)),
        ).fetchone()
        return row is not None

    @_locked
    def add(self, record: Record) -> int:
        """Insert ``record``, release its claim (if any) and commit; sets and returns its ``id`` (and
        ``created`` if empty).

        Raises
        ------
        DuplicateRecordError
            (a ValueError) If a record with the same image content and settings is already stored.
        ValueError
            If ``patches`` and ``losses`` differ in length.
        StoreError
            If the store cannot be written (damaged, locked, read-only, disk full).
        """
        if len(record.patches) != len(record.losses):
            raise ValueError(f"{len(record.patches)} patches but {len(record.losses)} losses")
        created = record.created or now()
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
                self.conn.execute("DELETE FROM claims WHERE key = ?", (record.settings.key(record.sha256),))
        except sqlite3.IntegrityError as exc:
            raise DuplicateRecordError(
                f"{record.image_path} (sha256 {record.sha256[:12]}) is already stored with these settings"
            ) from exc
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc
        record.id, record.created = cur.lastrowid, created
        return cur.lastrowid

    # -- claims ------------------------------------------------------------------------------------

    @_locked
    def claim(self, keys: list[str], run: RunId, lease: float = DEFAULT_LEASE) -> list[str]:
        """Try to claim each of ``keys`` (from :func:`claim_key`) for ``run``, in one transaction.

        Returns
        -------
        list of str
            Per key: ``"claimed"`` (now held by ``run``: compute it), ``"stored"`` (a record exists)
            or ``"busy"`` (held by another live run whose lease has not expired).
        """
        now = time.time()
        out = []
        try:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")
                for key in keys:
                    sha, model_id, strategy, ratio, start, opts = json.loads(key)
                    if self.conn.execute(
                            "SELECT 1 FROM proposals WHERE sha256=? AND model_id=? AND strategy=? AND ratio=? AND "
                            "start=? AND options_json=? LIMIT 1", (sha, model_id, strategy, ratio, start, opts)
                    ).fetchone():
                        out.append("stored")
                        continue
                    row = self.conn.execute("SELECT run_id, host, pid, expires FROM claims WHERE key=?",
                                            (key,)).fetchone()
                    if row and row[0] != run.run_id and row[3] > now and alive(row[1], row[2]):
                        out.append("busy")
                        continue
                    self.conn.execute("INSERT OR REPLACE INTO claims (key, run_id, host, pid, expires) "
                                      "VALUES (?, ?, ?, ?, ?)", (key, run.run_id, run.host, run.pid, now + lease))
                    out.append("claimed")
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc
        return out

    @_locked
    def renew(self, run: RunId, lease: float = DEFAULT_LEASE) -> int:
        """Extend every claim of ``run`` by ``lease`` seconds from now; returns how many it holds."""
        with self.conn:
            cur = self._execute("UPDATE claims SET expires = ? WHERE run_id = ?", (time.time() + lease, run.run_id))
        return cur.rowcount

    @_locked
    def release(self, run: RunId, keys: list[str] | None = None) -> None:
        """Drop ``run``'s claims on ``keys`` (default: all of them)."""
        with self.conn:
            if keys is None:
                self._execute("DELETE FROM claims WHERE run_id = ?", (run.run_id,))
            else:
                for key in keys:
                    self._execute("DELETE FROM claims WHERE key = ? AND run_id = ?", (key, run.run_id))

    def live_runs(self) -> int:
        """How many runs on this host hold live claims on this store (lease not expired, process alive)."""
        rows = self._execute("SELECT DISTINCT run_id, host, pid FROM claims WHERE expires > ?",
                             (time.time(),)).fetchall()
        here = socket.gethostname()
        return sum(1 for _, host, pid in rows if host == here and alive(host, pid))

    def claims(self) -> list[tuple[str, str, str, int, float]]:
        """Every claim as ``(key, run_id, host, pid, expires)``."""
        if "claims" not in self._tables:  # an old store opened read-only
            return []
        return self._execute("SELECT key, run_id, host, pid, expires FROM claims ORDER BY key").fetchall()

    # -- paths -------------------------------------------------------------------------------------

    @_locked
    def add_paths(self, items: list[tuple[str, str]]) -> None:
        """Remember that the file content ``sha256`` was found at ``image_path``, for each
        ``(sha256, image_path)`` of ``items``: records are keyed by content, and every path of it
        is exported (:meth:`paths`)."""
        try:
            with self.conn:
                self.conn.execute("BEGIN IMMEDIATE")  # the write lock first, waiting for other runs' writes
                self.conn.executemany("INSERT OR IGNORE INTO paths (sha256, image_path) VALUES (?, ?)",
                                      [(d, str(p)) for d, p in items])
        except sqlite3.Error as exc:
            raise translate(self.path, exc) from exc

    def paths(self, sha256s: list[str] | None = None) -> dict[str, list[str]]:
        """Every path each file content was found at (sorted), by sha256; the records' own paths
        included."""
        out: dict[str, set[str]] = {}
        rows = self._execute("SELECT sha256, image_path FROM proposals").fetchall()
        if "paths" in self._tables:
            rows += self._execute("SELECT sha256, image_path FROM paths").fetchall()
        wanted = None if sha256s is None else set(sha256s)
        for sha, p in rows:
            if wanted is None or sha in wanted:
                out.setdefault(sha, set()).add(p)
        return {sha: sorted(ps) for sha, ps in out.items()}

    # -- records -----------------------------------------------------------------------------------

    def contents(self) -> set[str]:
        """The sha256 of every image content that has a record."""
        return {r[0] for r in self._execute("SELECT DISTINCT sha256 FROM proposals").fetchall()}

    def settings_counts(self) -> list[tuple[Setting, int]]:
        """Every distinct :class:`~keypatch.store.setting.Setting` stored, with its record count."""
        rows = self._execute("SELECT model_id, strategy, ratio, start, options_json, COUNT(*) FROM proposals "
                             "GROUP BY model_id, strategy, ratio, start, options_json ORDER BY MIN(id)").fetchall()
        return [(Setting(*r[:5]), r[5]) for r in rows]

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
        rows = self._execute(sql + " ORDER BY id", params).fetchall()
        out = []
        for r in rows:
            try:
                options, patches, losses = (json.loads(r[i]) for i in (7, 8, 9))
            except (ValueError, TypeError, RecursionError) as exc:  # a store made elsewhere: not our JSON
                raise StoreError(f"{self.path}: record {r[0]!r} holds a column that is not JSON ({exc}); refused, "
                                 "nothing was written") from None
            out.append(Record(image_path=r[1], sha256=r[2], model_id=r[3], strategy=r[4], ratio=r[5], start=r[6],
                              options=options, patches=patches, losses=losses, evaluations=r[10], seconds=r[11],
                              created=r[12], id=r[0]))
        return out
