"""Checking a results store and salvaging the readable records of a damaged one.

``keypatch store check`` runs SQLite's integrity check; ``keypatch store repair`` reads a damaged
store row by row (ranges of ids, halved around every unreadable page), writes every readable
record into a fresh store, and keeps the damaged file beside it under a dated name: nothing that
could be read is lost, and nothing is deleted.
"""

from __future__ import annotations

import json
import sqlite3
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from keypatch.store.errors import StoreError
from keypatch.store.files import APPLICATION_ID, connect_for_reading, foreign_store, header_ids
from keypatch.store.sqlite import STORE_NAME, Record, ResultStore

_COLUMNS = ("id, image_path, sha256, model_id, strategy, ratio, start, options_json, patches_json, losses_json,"
            " evaluations, seconds, created")


def store_path(path: str | Path) -> Path:
    """The store file of a results folder (or the file itself); FileNotFoundError if missing."""
    path = Path(path)
    if path.is_dir():
        path = path / STORE_NAME
    if not path.is_file():
        raise FileNotFoundError(f"no results store at {path}")
    return path


def check_store(path: str | Path, max_problems: int = 20) -> list[str]:
    """SQLite's ``integrity_check`` of the store: ``[]`` when it is intact, else the problems found.

    Raises
    ------
    StoreError
        If the file is not an SQLite database at all.
    """
    path = store_path(path)
    identify(path)
    try:
        conn = connect_for_reading(path)
        try:
            rows = [r[0] for r in conn.execute(f"PRAGMA integrity_check({int(max_problems)})")]
        finally:
            conn.close()
    except sqlite3.DatabaseError as exc:
        if getattr(exc, "sqlite_errorname", "") == "SQLITE_NOTADB":
            raise StoreError(f"{path} is not an SQLite database") from exc
        return [str(exc)]
    return [] if rows == ["ok"] else [r for r in rows if not r.startswith("***")]


def identify(path: Path) -> None:
    """Refuse what is not a keypatch store, exactly as opening one does (:class:`ResultStore`), but
    without needing the store to be intact: a StoreError for a file that is not SQLite or is
    another program's database; a damaged keypatch store passes (its header carries keypatch's
    application id)."""
    app, _ = header_ids(path)
    if app == APPLICATION_ID:
        return
    try:
        conn = connect_for_reading(path)
        try:
            why = foreign_store(path, app, conn)
        finally:
            conn.close()
    except (sqlite3.DatabaseError, StoreError) as exc:
        raise StoreError(f"{path} is not marked as a keypatch results store (application id {app}) and its tables "
                         f"cannot be read ({exc}); it is left as it is") from exc
    if why:
        raise StoreError(why)


def _row_to_record(r: tuple) -> Record:
    return Record(image_path=r[1], sha256=r[2], model_id=r[3], strategy=r[4], ratio=r[5], start=r[6],
                  options=json.loads(r[7]), patches=json.loads(r[8]), losses=json.loads(r[9]), evaluations=r[10],
                  seconds=r[11], created=r[12], id=r[0])


def _max_id(conn: sqlite3.Connection) -> int:
    for sql in ("SELECT MAX(id) FROM proposals", "SELECT seq FROM sqlite_sequence WHERE name='proposals'"):
        try:
            row = conn.execute(sql).fetchone()
            if row and row[0] is not None:
                return int(row[0])
        except sqlite3.DatabaseError:
            continue
    return 1 << 20


def read_readable(path: str | Path, budget: int = 200_000) -> tuple[list[Record], int, bool]:
    """Every record of the store that can be read, oldest first.

    Reads ids in ranges; a range that fails is halved until single ids, so one bad page costs only
    the rows on it. Returns ``(records, unreadable ids, complete)``; ``complete`` is False when the
    query ``budget`` ran out before every id was tried.
    """
    path = store_path(path)
    conn = connect_for_reading(path)
    records: list[Record] = []
    lost, queries = 0, 0
    try:
        todo = [(1, _max_id(conn))]
        while todo:
            lo, hi = todo.pop()
            queries += 1
            if queries > budget:
                return records, lost, False
            try:
                rows = conn.execute(f"SELECT {_COLUMNS} FROM proposals WHERE id BETWEEN ? AND ? ORDER BY id",
                                    (lo, hi)).fetchall()
            except sqlite3.DatabaseError:
                if lo == hi:
                    lost += 1
                else:
                    mid = (lo + hi) // 2
                    todo += [(mid + 1, hi), (lo, mid)]
                continue
            for r in rows:
                try:
                    records.append(_row_to_record(r))
                except (TypeError, ValueError):
                    lost += 1
    finally:
        conn.close()
    records.sort(key=lambda rec: rec.id)
    return records, lost, True


def _readable_paths(path: Path) -> list[tuple[str, str]]:
    """The ``(sha256, image_path)`` rows of the store's ``paths`` table, or none if they cannot be read."""
    try:
        conn = connect_for_reading(path)
        try:
            return [(str(a), str(b)) for a, b in conn.execute("SELECT sha256, image_path FROM paths")]
        finally:
            conn.close()
    except (sqlite3.DatabaseError, StoreError):
        return []


def repair_store(path: str | Path) -> dict[str, Any]:
    """Salvage the readable records of a damaged store into a new store at the same place.

    The damaged file (and its ``-wal`` / ``-shm`` files) is renamed to
    ``results.sqlite.damaged-YYYYmmddTHHMMSS`` beside the new one; claims are not carried over.

    Raises
    ------
    StoreError
        For what opening a store refuses (not SQLite, another program's database): nothing is
        moved or written then.

    Returns
    -------
    dict
        ``store`` (the new store's path), ``damaged`` (where the old file now is), ``recovered``
        (records copied), ``unreadable`` (ids that could not be read), ``complete``.
    """
    path = store_path(path)
    identify(path)  # another program's file, or no SQLite at all: refused and left byte-identical
    records, lost, complete = read_readable(path)
    stamp = datetime.now(UTC).strftime("%Y%m%dT%H%M%S")
    fresh = path.with_name(path.name + f".repairing-{stamp}")
    with ResultStore(fresh) as new:
        for rec in records:
            rec.id = None
            try:
                new.add(rec)
            except ValueError:  # a duplicate key or a malformed row: keep the first
                lost += 1
        new.add_paths(_readable_paths(path))
        new.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    damaged = path.with_name(path.name + f".damaged-{stamp}")
    path.replace(damaged)
    for suffix in ("-wal", "-shm"):
        side = path.with_name(path.name + suffix)
        if side.exists():
            side.replace(damaged.with_name(damaged.name + suffix))
    for suffix in ("", "-wal", "-shm"):
        side = fresh.with_name(fresh.name + suffix)
        if side.exists():
            side.replace(path.with_name(path.name + suffix))
    return {"store": str(path), "damaged": str(damaged), "recovered": len(records), "unreadable": lost,
            "complete": complete}
