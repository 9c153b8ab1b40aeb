"""``patch_ids.json``: the KPP authors' file of key patches, written as their code writes and reads it.

Their search (``KPP_utils.update_data``) keeps one JSON object per image folder, keyed by the image's
file name up to its first dot (``os.path.basename(path).split('.')[0]``)::

    {
        "n01440764_10026": {
            "patch": [98, 112, 13],
            "loss": [0.61, 0.52]
        }
    }

``patch`` holds the patches in the order they were chosen, ``loss`` the loss after each patch the
search *added*: one fewer than ``patch``, as the start patch is not scored. Their fine-tuning
dataset (``ImagenetteKPP``) reads ``ROOT/CLASS/patch_ids.json`` beside the class's images and needs
an entry for every ``.png`` / ``.JPEG`` image there. :func:`write_patch_ids` writes one file;
:func:`write_patch_ids_per_folder` one per image folder, merged into a file already there as their
code does (entries of other images are kept).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keypatch.exports.base import ExportContext, check_one_setting, record_file, register_export
from keypatch.store.record import Record
from keypatch.untrusted import MAX_PATCHES, bounded, input_files, read_json, refuse

JSON_NAME = "patch_ids.json"


def reference_name(path: str | Path) -> str:
    """An image's key in ``patch_ids.json``: its file name up to the first dot (``a.b.jpg`` -> ``a``)."""
    return Path(path).name.split(".")[0]


def unique_names(records: Sequence[Record]) -> list[str]:
    """One distinct name per record (per image path), following the authors' loader.

    A name is :func:`reference_name` of the image (its stem, as their ``ImagenetteKPP`` looks it up
    in ``CLASS/patch_ids.json``), whatever the order of the records:

    * images whose stems clash (ignoring case) but that sit in different folders are named by their
      folder relative to the images' common folder (both as absolute paths without ``..``):
      ``cats/img`` and ``dogs/img`` (each is ``img`` in its own folder's file, see
      :func:`write_patch_ids_per_folder`);
    * of images of one folder whose stems clash (``cat.jpg`` and ``cat.png``), the first by path
      keeps the stem and the others are named by their whole file name (``cat.png``): the authors'
      loader finds one entry per stem, which :func:`folder_clashes` reports;
    * should a name still clash, ``-`` and the first 8 hex digits of the sha256 of its path are added.
    """
    paths = [Path(r.image_path) for r in records]
    stems = [reference_name(p) for p in paths]
    by_stem: dict[str, list[int]] = defaultdict(list)
    for i, s in enumerate(stems):
        by_stem[s.casefold()].append(i)
    parents = [Path(os.path.normpath(p.absolute().parent)) for p in paths]  # no '..': names stay below the root
    root = _common_folder(parents)
    names = list(stems)
    for group in by_stem.values():
        if len(group) == 1:
            continue
        folders = {parents[i] for i in group}
        for i in group:
            if len(folders) > 1:
                rel = parents[i].relative_to(root).as_posix() if root else parents[i].as_posix()
                names[i] = f"{rel}/{stems[i]}" if rel != "." else stems[i]
        by_name: dict[str, list[int]] = defaultdict(list)
        for i in group:
            by_name[names[i].casefold()].append(i)
        for same in by_name.values():
            for i in sorted(same, key=lambda j: str(paths[j]))[1:]:
                names[i] = names[i][: len(names[i]) - len(stems[i])] + paths[i].name
    seen: dict[str, int] = defaultdict(int)
    for n in names:
        seen[n.casefold()] += 1
    return [f"{n}-{hashlib.sha256(str(p).encode()).hexdigest()[:8]}" if seen[n.casefold()] > 1 else n
            for n, p in zip(names, paths, strict=True)]


def folder_clashes(records: Sequence[Record]) -> list[list[str]]:
    """Groups of image paths of one folder that share a ``patch_ids.json`` key (a stem, ignoring
    case), each sorted: the authors' loader finds only one entry for them."""
    groups: dict[tuple[str, str], set[str]] = defaultdict(set)
    for r in records:
        p = Path(r.image_path)
        groups[(str(p.parent), reference_name(p).casefold())].add(str(p))
    return [sorted(g) for _, g in sorted(groups.items()) if len(g) > 1]


def clash_message(clashes: list[list[str]]) -> str:
    """One line saying which files of one folder share a key, and what each is written as."""
    shown = "; ".join(" and ".join(group) for group in clashes[:3]) + ("; ..." if len(clashes) > 3 else "")
    return (f"{len(clashes)} group(s) of files of one folder share a patch_ids.json key (the file name up to its first "
            f"dot, which the KPP authors' loader looks up): {shown}; the first of each keeps the key, the others are "
            "written under their whole file name")


def _common_folder(folders: Sequence[Path]) -> Path | None:
    try:
        return Path(os.path.commonpath([str(p) for p in folders])) if folders else None
    except ValueError:  # folders on different drives
        return None


def entry(record: Record) -> dict[str, list]:
    """A record's ``{"patch": [...], "loss": [...]}``: the losses after each added patch."""
    return {"patch": [int(p) for p in record.patches], "loss": [float(v) for v in record.losses[1:]]}


def _write(data: dict[str, Any], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=4))
    tmp.replace(path)
    return path


def write_patch_ids(records: Sequence[Record], path: str | Path) -> Path:
    """Write ``records`` (one setting) as one ``patch_ids.json`` at ``path``; returns ``path``.

    Keys are :func:`unique_names`; the file is replaced atomically.
    """
    data = {name: entry(r) for name, r in zip(unique_names(records), records, strict=True)}
    return _write(data, Path(path))


MAX_PATCH_IDS_BYTES = 256 << 20
"""The largest existing ``patch_ids.json`` read (256 MiB: some hundred thousand images in one folder)."""


def read_patch_ids(path: str | Path) -> dict[str, Any]:
    """An existing ``patch_ids.json``, checked: at most :data:`MAX_PATCH_IDS_BYTES`, a JSON object
    whose every entry is an object with a ``patch`` list of patch indices and, if any, a ``loss``
    list of numbers. Anything else is a :class:`~keypatch.untrusted.HostileFileError` naming the
    file and the entry."""
    path = Path(path)
    try:
        data = read_json(path, max_bytes=MAX_PATCH_IDS_BYTES)
    except OSError as exc:
        raise refuse(path, "the file", f"cannot be read ({exc}); move it away first") from None
    if not isinstance(data, dict):
        raise refuse(path, "the file", "is not a patch_ids.json (not a JSON object); move it away first")
    for name, item in data.items():
        at = f"entry {name[:80]!r}"
        if not isinstance(item, dict) or not isinstance(item.get("patch"), list):
            raise refuse(path, at, "is not a patch_ids.json entry ({\"patch\": [...], \"loss\": [...]})")
        for p in item["patch"]:
            bounded(p, 0, MAX_PATCHES - 1, file=path, entry=f"{at}: a patch")
        loss = item.get("loss", [])
        if not isinstance(loss, list) or any(isinstance(v, bool) or not isinstance(v, (int, float)) for v in loss):
            raise refuse(path, f"{at}: its loss", "is not a list of numbers")
    return data


def per_folder_files(records: Sequence[Record], *, store: str | Path | None = None) -> dict[Path, dict[str, Any]]:
    """What :func:`write_patch_ids_per_folder` writes, by file: each folder's ``patch_ids.json`` with
    the records' entries merged in. Reads and checks the files there (:func:`read_patch_ids`) and
    where they are (:func:`~keypatch.exports.base.record_file`: not a link to elsewhere, not an input
    image); writes nothing."""
    folders: dict[Path, list[Record]] = defaultdict(list)
    for r in records:
        folders[Path(r.image_path).parent].append(r)
    inputs = input_files(r.image_path for r in records)
    merged: dict[Path, dict[str, Any]] = {}
    for folder, group in folders.items():
        target = record_file(folder, JSON_NAME, group[0], store=store, inputs=inputs)
        data = read_patch_ids(target) if target.exists() else {}
        data.update({name: entry(r) for name, r in zip(unique_names(group), group, strict=True)})
        merged[target] = data
    return merged


def write_patch_ids_per_folder(records: Sequence[Record], *, store: str | Path | None = None,
                               merged: dict[Path, dict[str, Any]] | None = None) -> list[Path]:
    """One ``patch_ids.json`` in each folder holding a record's image, as the authors' code keeps them.

    An existing ``patch_ids.json`` there is read and updated: the records' images get their entries
    replaced, every other entry is kept. Names are unique within a folder (:func:`unique_names`).
    ``merged`` is :func:`per_folder_files` of ``records`` when already read; ``store`` names where
    the records came from in an error.

    Raises
    ------
    ValueError
        If an existing ``patch_ids.json`` is not one (:func:`read_patch_ids`), or is a link to
        elsewhere (nothing is written then).
    """
    merged = per_folder_files(records, store=store) if merged is None else merged
    return [_write(data, target) for target, data in merged.items()]


def export_json(records: Sequence[Record], path: str | Path) -> Path:
    """Write ``records`` as the KPP authors' ``patch_ids.json`` (:mod:`keypatch.exports.patch_ids`).

    Parameters
    ----------
    records : sequence of Record
        Proposals sharing one setting (see :func:`check_one_setting`).
    path : str or Path
        The JSON file to write (parent folders are created).

    Returns
    -------
    Path
        ``path``. Keys are image file names up to the first dot, as the authors' loader reads them;
        clashes are resolved as :func:`~keypatch.exports.patch_ids.unique_names` says.
    """
    check_one_setting(records)
    return write_patch_ids(records, path)


@register_export("json")
def write_json(records: Sequence[Record], context: ExportContext) -> dict[str, Any]:
    """The ``json`` format (always written): ``patch_ids.json`` at ``context.json_path``."""
    return {"json": str(export_json(records, context.json_path))}
