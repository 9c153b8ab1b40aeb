"""The patches images already have, from an earlier round: what ``--after PATH`` reads.

Three kinds of file, told apart by what they are:

* **a results folder** (or its ``results.sqlite``): the patches of each image's record, matched by
  the image's content (sha256). An image with records of more than one setting there is an error
  naming them (``keypatch export --format patch_ids`` with the setting's flags picks one);
* **a** ``patch_ids.json`` (the KPP authors' format, a JSON object): matched by file name up to the
  first dot, as their loader does;
* **a Label Studio JSON export** (a list of tasks): the patches the annotations cover, matched by
  the task image's file name without its suffix. The rule: a patch counts as annotated where at
  least :data:`COVER` of its pixels carry a label (brush, polygon or rectangle, drawn as
  ``keypatch labels`` draws them, on the image's own pixels; the grid laid over the whole image as
  the model's resize squashes it onto the grid).

Everything read is checked (:mod:`keypatch.untrusted`): patches inside the grid, distinct.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from keypatch.geometry import PatchGrid
from keypatch.store import STORE_NAME, ResultStore
from keypatch.untrusted import bounded, read_json, refuse

__all__ = ["COVER", "Earlier", "annotated_patches", "match_earlier", "patches_covered", "read_earlier"]

COVER = 0.5
"""A patch counts as annotated where at least this share of its pixels carries a label."""

MAX_EXPORT_BYTES = 1 << 30


@dataclass
class Earlier:
    """Patches per image from an earlier round: ``by_sha256`` (a store) or ``by_name`` (a file
    keyed by names), and what the file was (``kind``, ``source``)."""

    kind: str
    source: Path
    by_sha256: dict[str, list[int]] = field(default_factory=dict)
    by_name: dict[str, list[int]] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.by_sha256) + len(self.by_name)


def _checked(patches: object, n: int, *, file: Path, entry: str) -> list[int]:
    if not isinstance(patches, list):
        raise refuse(file, entry, "is not a list of patch indices")
    out = [bounded(p, 0, n - 1, file=file, entry=f"{entry}: a patch") for p in patches]
    if len(set(out)) != len(out):
        raise refuse(file, entry, "holds a patch twice")
    return out


def read_earlier(path: str | Path, grid: PatchGrid, *, cover: float = COVER) -> Earlier:
    """The patches an earlier round gave each image (this module's docstring says which files and
    how they are matched); a :class:`~keypatch.untrusted.HostileFileError` (a ValueError) naming
    the file and entry for anything that is not as it should be."""
    path = Path(path)
    if path.is_dir() or path.name == STORE_NAME:
        return _from_store(path if path.is_dir() else path.parent, grid)
    if not path.is_file():
        raise FileNotFoundError(f"--after {path}: no such results folder or file")
    if _first_char(path) == "{":  # an object: a patch_ids.json, read (once) by its own checked reader
        from keypatch.exports.patch_ids import read_patch_ids

        checked = read_patch_ids(path)
        return Earlier("patch_ids.json", path, by_name={
            name: _checked(item["patch"], grid.n, file=path, entry=f"entry {name[:80]!r}")
            for name, item in checked.items()})
    data = read_json(path, max_bytes=MAX_EXPORT_BYTES)
    if isinstance(data, list):
        return annotated_patches(data, grid, source=path, cover=cover)
    raise refuse(path, "the file", "is neither a patch_ids.json (an object) nor a Label Studio JSON export (a list)")


def _first_char(path: Path) -> str:
    """The first character of a JSON file after white space and a byte-order mark ("" for none)."""
    with open(path, "rb") as f:
        head = f.read(4096)
        while head and not head.lstrip(b"\xef\xbb\xbf \t\r\n"):
            head = f.read(4096)
    text = head.lstrip(b"\xef\xbb\xbf \t\r\n")
    return chr(text[0]) if text else ""


def _from_store(folder: Path, grid: PatchGrid) -> Earlier:
    if not (folder / STORE_NAME).is_file():
        raise FileNotFoundError(f"--after {folder}: no {STORE_NAME} there (not a results folder)")
    with ResultStore(folder, create=False, read_only=True) as store:
        records = store.records()
    out = Earlier("results folder", folder)
    settings: dict[str, set] = {}
    for r in records:
        settings.setdefault(r.sha256, set()).add(r.settings)
        out.by_sha256[r.sha256] = _checked(list(r.patches), grid.n, file=folder / STORE_NAME,
                                           entry=f"the record of {str(r.image_path)[:80]}")
    many = {sha: s for sha, s in settings.items() if len(s) > 1}
    if many:
        sha, s = next(iter(many.items()))
        flags = "; ".join(sorted(x.flags() for x in s))
        raise ValueError(f"--after {folder}: {len(many)} images have records of more than one setting (image "
                         f"{sha[:12]}: {flags}); write the round to continue with keypatch export {folder} "
                         f"--format patch_ids and its flags, and pass that file")
    return out


def patches_covered(labelled: np.ndarray, grid: PatchGrid, cover: float = COVER) -> list[int]:
    """The patches of ``grid`` of which at least ``cover`` of the pixels are True in ``labelled``
    ``(H, W)`` (the grid laid over the whole image, as the model's resize squashes it), ascending."""
    h, w = labelled.shape
    rows = np.linspace(0, h, grid.rows + 1).round().astype(int)
    cols = np.linspace(0, w, grid.cols + 1).round().astype(int)
    counts = np.zeros((grid.rows, w), dtype=np.int64)  # labelled pixels per band of rows, column by column
    for r in range(grid.rows):
        counts[r] = labelled[rows[r] : rows[r + 1]].sum(0, dtype=np.int64)
    out = []
    for r in range(grid.rows):
        for c in range(grid.cols):
            area = (rows[r + 1] - rows[r]) * (cols[c + 1] - cols[c])
            if area and counts[r, cols[c] : cols[c + 1]].sum() >= cover * area:
                out.append(r * grid.cols + c)
    return out


def annotated_patches(tasks: list, grid: PatchGrid, *, source: str | Path = "the export",
                      cover: float = COVER) -> Earlier:
    """The patches of ``grid`` that the annotations of Label Studio ``tasks`` (an export's list,
    or tasks with their annotations as a webhook sends them) cover at least ``cover`` of, by the
    task image's file stem (``by_name``); a task without drawn results has no entry."""
    import warnings

    from PIL import Image

    from keypatch.data.labels import IGNORE, LabelsWarning, write_label_masks

    out = Earlier("Label Studio export", Path(source))
    with tempfile.TemporaryDirectory() as tmp, warnings.catch_warnings():
        warnings.simplefilter("ignore", LabelsWarning)  # other result types: not drawn, so not covered
        masks = write_label_masks(tasks, tmp, source=source)
        for stem, png in masks.masks.items():
            with Image.open(png) as im:
                labelled = np.asarray(im) != IGNORE
            out.by_name[stem] = patches_covered(labelled, grid, cover)
    return out


def _names(path: Path) -> list[str]:
    """The names an image file may be known by: its file name up to the first dot (patch_ids.json),
    its stem (a Label Studio export's), its file name."""
    return list(dict.fromkeys([path.name.split(".")[0], path.stem, path.name]))


def match_earlier(earlier: Earlier, paths: Sequence[str | Path], digests: Sequence[str]) -> list[list[int]]:
    """Each image's earlier patches (``[]`` where ``earlier`` has none), by content for a store and
    by name otherwise. Two images of one name where ``earlier`` knows that name are an error."""
    out: list[list[int]] = []
    if earlier.by_sha256:
        return [list(earlier.by_sha256.get(d, [])) for d in digests]
    seen: dict[str, str] = {}
    for p in map(Path, paths):
        hit = next((n for n in _names(p) if n in earlier.by_name), None)
        if hit is not None and hit in seen and seen[hit] != str(p):
            raise ValueError(f"--after {earlier.source}: {seen[hit]} and {p} are both {hit!r} there; "
                             f"give them different file names")
        if hit is not None:
            seen[hit] = str(p)
        out.append(list(earlier.by_name.get(hit, [])) if hit is not None else [])
    return out
