"""Results of proposal runs, persisted: a SQLite store of records keyed by image content and
:class:`Setting` (a result's identity), claims of running jobs, the paths of each content, repair.
Exports live in :mod:`keypatch.exports`."""

from keypatch.store.setting import MAY_MOVE, Setting, count_line
from keypatch.store.sqlite import STORE_NAME, DuplicateRecordError, Record, ResultStore, options_key, sha256_file

__all__ = ["MAY_MOVE", "STORE_NAME", "DuplicateRecordError", "Record", "ResultStore", "Setting", "options_key",
           "count_line", "sha256_file"]
