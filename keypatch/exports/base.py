"""What every export shares: the format registry, the export warning, and choosing records.

A format is a function ``write(records, context) -> summary`` registered under its name with
:func:`register_export`: the records (one setting, one per image path), and an
:class:`ExportContext` (the export folder, the image references, the patch grid). A new format
is one file with such a function and one import line in ``keypatch/exports/__init__.py``; the
command line's ``--format`` choices and the export contract test read :data:`EXPORTS`.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from keypatch.store.files import writable
from keypatch.store.record import Record
from keypatch.untrusted import MAX_NAME, MAX_PATCHES, bounded, output_path, refuse

__all__ = ["EXPORTS", "ExportContext", "ExportWarning", "check_one_setting", "checked_records", "every_path",
           "match_options", "record_file", "register_export"]


class ExportWarning(UserWarning):
    """A record could not be exported (e.g. its image file is gone or changed)."""


@dataclass
class ExportContext:
    """Where and how one export is written.

    Attributes
    ----------
    folder : Path
        The export's folder (beside ``patch_ids.json``).
    refs : ImageRefs
        How the files refer to images (:class:`keypatch.exports.annotations.ImageRefs`).
    json_path : Path
        Where ``patch_ids.json`` goes.
    device : str
        Where a model runs, if a format needs one.
    store : Path, optional
        The store the records were read from (named when one of them is refused).
    """

    folder: Path
    refs: Any
    json_path: Path
    device: str = "cpu"
    store: Path | None = None
    _grid: Any = field(default=None, repr=False)

    def grid(self, records: Sequence[Record]) -> Any:
        """The patch grid of the records' model (loaded once, for the formats that map patches); a
        HostileFileError naming the store and the record when a record's patch is outside it."""
        if self._grid is None:
            from keypatch.reconstructors import load_mae

            self._grid = load_mae(records[0].model_id, device=self.device).grid
        for r in records:
            for p in r.patches:
                bounded(p, 0, self._grid.n - 1, file=_source(self.store), entry=f"{_entry(r)}: a patch")
        return self._grid


Writer = Callable[[Sequence[Record], ExportContext], dict[str, Any]]

EXPORTS: dict[str, Writer] = {}
"""The registered export formats by name (``json`` is always written)."""


def register_export(name: str) -> Callable[[Writer], Writer]:
    """Decorator: register ``write(records, context) -> summary`` as the export format ``name``."""

    def add(fn: Writer) -> Writer:
        EXPORTS[name] = fn
        return fn

    return add


def check_one_setting(records: Sequence[Record]) -> None:
    """Raise ValueError unless every record has the same settings (the format holds one); the
    message lists each setting with the flags that select it."""
    settings = sorted({r.settings for r in records})
    if len(settings) > 1:
        listed = "; ".join(st.flags() for st in settings)
        raise ValueError(f"the records have {len(settings)} different settings; select one ({listed}) or export "
                         "each into its own folder with --each-setting")


def match_options(records: Sequence[Record], options: dict[str, Any] | None) -> list[Record]:
    """The records whose stored options include every ``key: value`` of ``options`` (numbers
    compare by value: ``1`` matches ``1.0``; a string matches a stored value with the same text)."""
    if not options:
        return list(records)

    def same(stored: Any, wanted: Any) -> bool:
        return stored == wanted or (isinstance(wanted, str) and str(stored) == wanted)

    return [r for r in records if all(k in r.options and same(r.options[k], v) for k, v in options.items())]


def every_path(records: Sequence[Record], paths: dict[str, list[str]]) -> list[Record]:
    """One record per path of its image content: the store keeps one record per content (sha256),
    and ``paths`` (:meth:`ResultStore.paths`) every path it was found at. Paths where no file is
    now are left out (a file moved or renamed since), unless no path of the content has a file:
    then the record's own path is kept, so no record is lost. Sorted by path."""
    out = []
    for r in records:
        found = [p for p in paths.get(r.sha256, []) if Path(p).is_file()] or [r.image_path]
        for p in found:
            out.append(r if p == r.image_path else dataclasses.replace(r, image_path=p))
    return sorted(out, key=lambda r: (r.image_path, r.id or 0))




def check_output(path: Path, elsewhere: str) -> None:
    """A ValueError when ``path`` (a file or folder to write) cannot be made: its nearest existing
    folder is read-only (a read-only mount, say). ``elsewhere`` names the option that writes it
    elsewhere, so the message says how to go on; the store itself is only read."""
    path = Path(path)
    where = next((p for p in (path, *path.parents) if p.exists()), Path("."))
    if where.is_file():
        where = where.parent
    if not writable(where) or (path.exists() and not os.access(path, os.W_OK)):
        raise ValueError(f"{where} cannot be written (read-only); the results are read from it, and {elsewhere} "
                         "writes this output elsewhere")


def _source(store: str | Path | None) -> str | Path:
    return store if store is not None else "the records"


def _entry(record: Record) -> str:
    path = record.image_path if isinstance(record.image_path, str) else repr(record.image_path)
    return f"record {record.id} ({path[:200]})"


def _image_path(value: Any, store: str | Path, entry: str) -> None:
    if not isinstance(value, str) or not value or len(value) > MAX_NAME or \
            any(ord(c) < 32 or c == "\x7f" for c in value):
        raise refuse(store, entry, f"{str(value)[:80]!r} is not a file path")


def checked_records(records: Sequence[Record], store: str | Path,
                    paths: dict[str, list[Any]] | None = None) -> list[Record]:
    """``records`` read from ``store`` when every field an export uses has its type and range: the
    image path (and every path of ``paths``, :meth:`ResultStore.paths`) a string without control
    characters, patches integers in ``[0, MAX_PATCHES)``, losses numbers, the setting's fields
    strings and numbers. A store may come from anyone: what fails is a
    :class:`~keypatch.untrusted.HostileFileError` naming the store and the record."""
    for sha, found in (paths or {}).items():
        for p in found:
            _image_path(p, store, f"the paths of {str(sha)[:64]!r}")
    for r in records:
        entry = f"record {r.id}"
        bounded(r.id, 0, 1 << 63, file=store, entry=f"{entry}: its id")
        _image_path(r.image_path, store, f"{entry}: its image_path")
        for key in ("sha256", "model_id", "strategy", "start"):
            if not isinstance(getattr(r, key), str):
                raise refuse(store, f"{entry}: its {key}", "is not a string")
        for key in ("ratio", "seconds"):
            value = getattr(r, key)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise refuse(store, f"{entry}: its {key}", f"is {str(value)[:40]!r}, not a number")
        if not isinstance(r.options, dict):
            raise refuse(store, f"{entry}: its options", "are not a JSON object")
        if not isinstance(r.patches, list) or len(r.patches) > MAX_PATCHES:
            raise refuse(store, f"{entry}: its patches", f"are not a list of at most {MAX_PATCHES} patches")
        for p in r.patches:
            bounded(p, 0, MAX_PATCHES - 1, file=store, entry=f"{entry}: a patch")
        if not isinstance(r.losses, list) or len(r.losses) > MAX_PATCHES or \
                any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in r.losses):
            raise refuse(store, f"{entry}: its losses", "are not a list of numbers")
    return list(records)


def record_file(folder: str | Path, name: str, record: Record, *, store: str | Path | None, inputs: Any) -> Path:
    """Where an export writes the file ``name`` made for ``record``: inside ``folder`` and none of
    ``inputs`` (:func:`keypatch.untrusted.output_path`); refused naming the store and the record."""
    return output_path(folder, name, file=_source(store), entry=_entry(record), inputs=inputs)
