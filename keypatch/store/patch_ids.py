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

import json
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keypatch.store.record import Record

JSON_NAME = "patch_ids.json"


def reference_name(path: str | Path) -> str:
    """An image's key in ``patch_ids.json``: its file name up to the first dot (``a.b.jpg`` -> ``a``)."""
    return Path(path).name.split(".")[0]


def unique_names(records: Sequence[Record]) -> list[str]:
    """One distinct name per record, from :func:`reference_name` of its image.

    Records whose images share a name, ignoring case (``a/cat.jpg`` and ``b/Cat.png``), all get
    ``"-" + sha256[:8]`` of their own file appended (``cat-1a2b3c4d``), so names stay stable
    whatever the order of the records; should that still collide, the whole sha256 is used.
    """
    stems = [reference_name(r.image_path) for r in records]
    count: dict[str, int] = defaultdict(int)
    for s in stems:
        count[s.casefold()] += 1  # casefold: Cat.jpg and cat.png would share one PNG on some file systems
    for digits in (8, 64):
        names = [f"{s}-{r.sha256[:digits]}" if count[s.casefold()] > 1 else s
                 for s, r in zip(stems, records, strict=True)]
        if len({n.casefold() for n in names}) == len(names):
            return names
    raise ValueError("two records are for the same image with the same settings; cannot name them apart")


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


def write_patch_ids_per_folder(records: Sequence[Record]) -> list[Path]:
    """One ``patch_ids.json`` in each folder holding a record's image, as the authors' code keeps them.

    An existing ``patch_ids.json`` there is read and updated: the records' images get their entries
    replaced, every other entry is kept. Names are unique within a folder (:func:`unique_names`).

    Raises
    ------
    ValueError
        If an existing ``patch_ids.json`` is not a JSON object (nothing is written then).
    """
    folders: dict[Path, list[Record]] = defaultdict(list)
    for r in records:
        folders[Path(r.image_path).parent].append(r)
    merged: dict[Path, dict[str, Any]] = {}
    for folder, group in folders.items():
        target = folder / JSON_NAME
        data: dict[str, Any] = {}
        if target.exists():
            try:
                data = json.loads(target.read_text())
            except (OSError, ValueError) as exc:
                raise ValueError(f"{target} exists but cannot be read as JSON ({exc}); move it away first") from exc
            if not isinstance(data, dict):
                raise ValueError(f"{target} exists but is not a patch_ids.json (not a JSON object); move it away first")
        data.update({name: entry(r) for name, r in zip(unique_names(group), group, strict=True)})
        merged[target] = data
    return [_write(data, target) for target, data in merged.items()]
