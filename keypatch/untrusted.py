"""The checks every reader applies to a file that someone else may have made (imports nothing of keypatch).

A quantized dataset's manifest, a results store's records, a ranker's metadata, an existing
``patch_ids.json``, a photo manifest: any of them can be damaged or crafted. Their readers check
what they read with the functions here, one per kind of value, so that each kind is checked the
same way everywhere:

* :func:`relative_name` and :func:`inside` for a name that becomes a path: relative, ``/``
  separated, no ``..``, no drive letter, backslash or control character, and (``inside``) still
  inside its folder once symbolic links are followed;
* :func:`component` for a name that must be one plain file name (a key that names a file);
* :func:`output_path` for a file written under a name read from such a file: :func:`inside` the
  output folder, and never one of the run's inputs (:func:`input_files`), not even through a link;
* :func:`bounded` for an integer, checked against its range before anything is sized by it;
* :func:`read_json` for a JSON document, its size bounded before it is read.

Each refuses with a :class:`HostileFileError` (a ValueError, which the commands report in one line)
naming the file and the entry in it.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from pathlib import Path, PurePosixPath
from typing import Any

__all__ = ["MAX_PATCHES", "HostileFileError", "bounded", "component", "input_files", "inside", "output_path",
           "read_json", "refuse", "relative_name"]

_DRIVE = re.compile(r"^[A-Za-z]:")
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
MAX_NAME = 4096
"""The longest name accepted (characters): longer than any path a file system takes."""
MAX_PATCHES = 1 << 16
"""The most patches of a grid any file may speak of (a 256 x 256 grid)."""


class HostileFileError(ValueError):
    """A file made elsewhere holds what its reader refuses: a name leaving its folder, a size out of
    bounds, a value of the wrong type. ``file`` and ``entry`` say where; nothing was written."""

    def __init__(self, file: str | Path, entry: str, why: str) -> None:
        self.file, self.entry, self.why = str(file), entry, why
        super().__init__(f"{file}: {entry} {why}; refused (a damaged or crafted file), nothing was written")


def refuse(file: str | Path, entry: str, why: str) -> HostileFileError:
    """The error for ``entry`` of ``file`` (to raise): ``why`` completes the sentence ``ENTRY ...``."""
    return HostileFileError(file, entry, why)


def _show(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def relative_name(name: Any, *, file: str | Path, entry: str) -> str:
    """``name`` if it is a relative ``/``-separated path that stays where it is joined to.

    Refused: anything but a non-empty string, an absolute path (``/x``), a drive letter (``C:x``),
    a backslash (a separator on Windows: ``..\\x``, ``\\\\host\\x``), a ``..`` part, control
    characters (a NUL ends a name in the OS; a newline splits a list of names) and names with no
    part but ``.``.
    """
    if not isinstance(name, str):
        raise refuse(file, entry, f"is {_show(name)}, not a file name")
    if not name or len(name) > MAX_NAME:
        raise refuse(file, entry, f"is a name of {len(name)} characters")
    if _CONTROL.search(name):
        raise refuse(file, entry, f"{_show(name)} holds a control character")
    if "\\" in name:
        raise refuse(file, entry, f"{_show(name)} holds a backslash (a separator on Windows)")
    if name.startswith("/") or _DRIVE.match(name):
        raise refuse(file, entry, f"{_show(name)} is an absolute path; a name relative to its folder is expected")
    parts = PurePosixPath(name).parts
    if ".." in name.split("/"):
        raise refuse(file, entry, f"{_show(name)} climbs out of its folder with '..'")
    if not parts or parts == (".",):
        raise refuse(file, entry, f"{_show(name)} names no file")
    return name


def component(name: Any, *, file: str | Path, entry: str) -> str:
    """``name`` if it is one plain file name (:func:`relative_name` without ``/``, not ``.``)."""
    relative_name(name, file=file, entry=entry)
    if "/" in name or name == ".":
        raise refuse(file, entry, f"{_show(name)} is not a plain file name")
    return name


def inside(root: str | Path, name: Any, *, file: str | Path, entry: str) -> Path:
    """``root / name``, after :func:`relative_name`, when it also lies inside ``root`` with every
    symbolic link on the way followed (a link to elsewhere is refused). The path is returned as
    joined, not resolved."""
    path = Path(root) / relative_name(name, file=file, entry=entry)
    top = Path(root).resolve()
    try:
        real = path.resolve()
    except (OSError, RuntimeError) as exc:  # a link loop
        raise refuse(file, entry, f"{_show(name)} cannot be followed under {root} ({exc})") from None
    if real == top or not real.is_relative_to(top):
        raise refuse(file, entry, f"{_show(name)} leads to {real}, outside {root} (through a link)")
    return path


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except (OSError, ValueError):
        return None
    return st.st_dev, st.st_ino


class _Inputs:
    """The files a run reads, by resolved path and by inode (a hard link is the same file)."""

    def __init__(self, paths: Iterable[str | Path]) -> None:
        self.paths, self.ids = set(), set()
        for p in paths:
            try:
                self.paths.add(Path(p).resolve())
            except (OSError, RuntimeError, ValueError):
                continue
            if (ident := _identity(Path(p))) is not None:
                self.ids.add(ident)

    def __contains__(self, path: Path) -> bool:
        if path.resolve() in self.paths:
            return True
        ident = _identity(path)
        return ident is not None and ident in self.ids


def input_files(paths: Iterable[str | Path]) -> _Inputs:
    """The files of a run that no output may overwrite (for :func:`output_path`)."""
    return _Inputs(paths)


def output_path(root: str | Path, name: Any, *, file: str | Path, entry: str, inputs: _Inputs | None = None) -> Path:
    """Where to write a file named ``name`` by ``file``: :func:`inside` ``root``, and not one of
    ``inputs`` (:func:`input_files`) under any path or link."""
    path = inside(root, name, file=file, entry=entry)
    if inputs is not None and path in inputs:
        raise refuse(file, entry, f"{_show(name)} would write {path}, which is one of the inputs")
    return path


def bounded(value: Any, low: int, high: int, *, file: str | Path, entry: str, text: bool = False) -> int:
    """``value`` as an int when it is one (not a bool) in ``[low, high]``; with ``text``, a string
    of at most 20 decimal digits (a metadata value) is read as one first."""
    if text:
        if not isinstance(value, str) or not re.fullmatch(r"-?[0-9]{1,20}", value):
            raise refuse(file, entry, f"is {_show(value)}, not an integer")
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise refuse(file, entry, f"is {_show(value)}, not an integer")
    if not low <= value <= high:
        raise refuse(file, entry, f"is {value}, outside [{low}, {high}]")
    return value


def read_json(path: str | Path, *, max_bytes: int, file: str | Path | None = None) -> Any:
    """The JSON document at ``path``, refused before it is read when it is over ``max_bytes``, and
    when it is not UTF-8 JSON (nesting too deep for the parser included)."""
    path = Path(path)
    file = path if file is None else file
    size = path.stat().st_size
    if size > max_bytes:
        raise refuse(file, "the file", f"is {size:,} bytes, more than the {max_bytes:,} it may be")
    with open(path, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise refuse(file, "the file", f"grew past {max_bytes:,} bytes while read")
    try:
        return json.loads(data.decode("utf-8"))
    except (ValueError, RecursionError) as exc:  # JSONDecodeError, UnicodeDecodeError, over-long integers
        raise refuse(file, "the file", f"is not valid JSON ({str(exc)[:200]})") from None
