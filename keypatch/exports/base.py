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

__all__ = ["EXPORTS", "ExportContext", "ExportWarning", "check_one_setting", "every_path", "match_options",
           "register_export"]


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
    """

    folder: Path
    refs: Any
    json_path: Path
    device: str = "cpu"
    _grid: Any = field(default=None, repr=False)

    def grid(self, records: Sequence[Record]) -> Any:
        """The patch grid of the records' model (loaded once, for the formats that map patches)."""
        if self._grid is None:
            from keypatch.reconstructors import load_mae

            self._grid = load_mae(records[0].model_id, device=self.device).grid
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
