"""What can go wrong with a results store, as one-line errors that name the file and what to do."""

from __future__ import annotations

import sqlite3
from pathlib import Path


class DuplicateRecordError(ValueError):
    """A record with the same image content and settings is already stored."""


class StoreError(ValueError):
    """The file is not a keypatch results store (not SQLite, another program's database), or it is
    locked or read-only; the message names the file and what to do."""


class StoreDamagedError(StoreError):
    """The results store is damaged (corrupt pages); the message says how to repair it."""


def damaged_message(path: Path, detail: object) -> str:
    """The one line a damaged store is reported with."""
    lines = [t.strip() for t in str(detail).splitlines() if t.strip() and not t.startswith("***")]
    detail = "; ".join(lines[:2]) or "unknown problem"
    return (f"the results store {path} is damaged ({detail}); nothing was changed. `keypatch store repair --out "
            f"{path.parent}` copies every readable record into a new store and keeps the damaged file beside it")


def translate(path: Path, exc: sqlite3.Error) -> StoreError:
    name = getattr(exc, "sqlite_errorname", "")
    if name in ("SQLITE_NOTADB",) or "not a database" in str(exc):
        return StoreError(f"{path} is not a keypatch results store (not an SQLite database); choose another "
                          "--out folder or move the file away")
    if name.startswith(("SQLITE_BUSY", "SQLITE_LOCKED", "SQLITE_READONLY", "SQLITE_CANTOPEN", "SQLITE_FULL",
                        "SQLITE_IOERR", "SQLITE_PERM")):
        return StoreError(f"the results store {path}: {exc}")
    return StoreDamagedError(damaged_message(path, exc))
