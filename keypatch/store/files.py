"""Opening a store file: atomic creation, telling a keypatch store from any other file, read-only
connections that work where nothing can be written, and the check that a folder can be written."""

from __future__ import annotations

import os
import sqlite3
import uuid
from pathlib import Path
from urllib.parse import quote

from keypatch.store.errors import StoreError, translate

APPLICATION_ID = int.from_bytes(b"KPat", "big")
"""SQLite ``PRAGMA application_id`` of a keypatch results store."""

SCHEMA_VERSION = 3
"""``PRAGMA user_version``: 1 = proposals only (unmarked), 2 = with claims, 3 = with paths."""

PATHS_TABLE = """
CREATE TABLE IF NOT EXISTS paths (
    sha256 TEXT NOT NULL,
    image_path TEXT NOT NULL,
    PRIMARY KEY (sha256, image_path)
) WITHOUT ROWID
"""

CLAIMS_TABLE = """
CREATE TABLE IF NOT EXISTS claims (
    key TEXT PRIMARY KEY,
    run_id TEXT NOT NULL,
    host TEXT NOT NULL,
    pid INTEGER NOT NULL,
    expires REAL NOT NULL
)
"""

PROPOSALS_TABLE = """
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

def create_store(path: Path) -> None:
    """Make a new, empty store at ``path`` atomically: set up in a temporary file, then linked into
    place, so that no other run ever opens a half-made store (if another run made one first, it is
    kept)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.new-{uuid.uuid4().hex[:12]}")
    conn = sqlite3.connect(str(tmp))
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        with conn:
            for sql in (PROPOSALS_TABLE, CLAIMS_TABLE, PATHS_TABLE):
                conn.execute(sql)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    finally:
        conn.close()
    try:
        if path.exists():  # an empty file left by someone: replace it
            tmp.replace(path)
        else:
            os.link(tmp, path)
    except FileExistsError:
        pass  # another run made the store meanwhile: use theirs
    finally:
        tmp.unlink(missing_ok=True)


OUR_TABLES = {"proposals", "claims", "paths"}
OUR_COLUMNS = {"sha256", "model_id", "strategy", "ratio", "start", "options_json", "patches_json"}


def header_ids(path: Path) -> tuple[int, int]:
    """``(application_id, user_version)`` read from the database header of ``path``, without SQLite.

    Raises
    ------
    StoreError
        If the file is not an SQLite database (its first 16 bytes are not SQLite's).
    """
    with open(path, "rb") as f:
        head = f.read(100)
    if head[:16] != b"SQLite format 3\x00":
        raise StoreError(f"{path} is not a keypatch results store (not an SQLite database); choose "
                         "another --out folder or move the file away")
    return int.from_bytes(head[68:72], "big"), int.from_bytes(head[60:64], "big")


def foreign_store(path: Path, app: int, conn: sqlite3.Connection) -> str | None:
    """Why the database at ``path`` is another program's (None when it is a keypatch store, or an
    unmarked store of schema 1)."""
    if app == APPLICATION_ID:
        return None
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type='table' "
                                         "AND name NOT LIKE 'sqlite_%'")]
    cols = {r[1] for r in conn.execute("PRAGMA table_info(proposals)")}
    if app != 0 or (tables and not OUR_COLUMNS <= cols) or set(tables) - OUR_TABLES:
        listed = ", ".join(tables) or "none"
        return (f"{path} is an SQLite database of another program (application id {app}, tables: {listed}), not a "
                "keypatch results store; choose another --out folder")
    return None


def connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection to the store at ``path`` that also works where nothing can be written.

    SQLite opens a WAL database read-only only if its ``-shm`` file exists or can be made; in a
    folder that cannot be written (a read-only mount, a shared results folder) and with no
    ``-wal``/``-shm`` files beside the store (a store closed cleanly has none: its WAL was
    checkpointed), the file is opened as immutable, which is then exact.
    """
    uri = f"file:{quote(str(path.absolute()))}"
    conn = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=30.0, check_same_thread=False)
    try:
        conn.execute("SELECT 1 FROM sqlite_master LIMIT 1").fetchall()
        return conn
    except sqlite3.OperationalError as exc:
        conn.close()
        side = [path.with_name(path.name + s) for s in ("-wal", "-shm")]
        if writable(path.parent) or any(p.exists() for p in side):
            raise translate(path, exc) from exc
    return sqlite3.connect(f"{uri}?immutable=1", uri=True, check_same_thread=False)


def connect_for_reading(path: Path) -> sqlite3.Connection:
    """A connection that refuses writes (``query_only``). Where the folder can be written it is an
    ordinary connection otherwise, so that closing it as the last one checkpoints the WAL and removes
    the ``-wal``/``-shm`` files as a writer's close does (a ``mode=ro`` connection leaves them
    behind); elsewhere :func:`connect_readonly`."""
    if not (writable(path.parent) and os.access(path, os.W_OK)):
        return connect_readonly(path)
    conn = sqlite3.connect(str(path), timeout=30.0, check_same_thread=False)
    conn.execute("PRAGMA query_only = ON")
    return conn


def writable(folder: Path) -> bool:
    """Whether files can be made in ``folder`` (False on a read-only mount, even for root)."""
    return os.access(folder, os.W_OK | os.X_OK)


def check_writable(path: Path) -> None:
    """Raise a StoreError naming the folder when the store file ``path`` could not be written there
    (the folder, or its nearest existing parent, is read-only; or the file itself is)."""
    path = Path(path)
    where = next((p for p in (path.parent, *path.parent.parents) if p.exists()), Path("."))
    if not writable(where) or (path.exists() and not os.access(path, os.W_OK)):
        raise StoreError(f"the results folder {where} cannot be written (read-only); choose another --out folder "
                         "(commands that only read a store, such as export, report and store info, work on it)")
