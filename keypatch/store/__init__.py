"""Results of proposal runs: a SQLite store, and export to the KPP reference format and pictures."""

from keypatch.store.sqlite import STORE_NAME, DuplicateRecordError, Record, ResultStore, options_key, sha256_file

__all__ = ["STORE_NAME", "DuplicateRecordError", "Record", "ResultStore", "options_key", "sha256_file"]
