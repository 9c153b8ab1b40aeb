"""Export stored proposals: ``patch_ids.json``, the registered formats and one picture per image.

``patch_ids.json`` maps an image's name to its ordered patches and the loss after each added
patch (:mod:`keypatch.exports.patch_ids`)::

    {"ILSVRC2012_val_00000001": {"patch": [105, 92, 18], "loss": [0.52, 0.47]}, ...}

The format holds one setting (model, strategy, ratio, start, options) per file, so the records
exported together must share one: select one by any stored setting (model, strategy, ratio, start,
seed, options), or write one export per setting (``each_setting``). The other formats
(:data:`keypatch.exports.base.EXPORTS`) are written beside it.
"""

from __future__ import annotations

import functools
import json
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keypatch.exports.base import (
    EXPORTS,
    ExportContext,
    ExportWarning,
    check_one_setting,
    check_output,
    checked_records,
    every_path,
    match_options,
)
from keypatch.exports.patch_ids import (
    JSON_NAME,
    clash_message,
    folder_clashes,
    per_folder_files,
    write_patch_ids_per_folder,
)
from keypatch.exports.pictures import PICTURES_NAME, export_pictures
from keypatch.store import MAY_MOVE
from keypatch.store.sqlite import Record, ResultStore
from keypatch.untrusted import output_path

__all__ = ["EXPORTS_NAME", "export_results"]

EXPORTS_NAME = "exports"


def _export_one(records: Sequence[Record], json_file: Path, pic_dir: Path | None, device: str,
                progress: bool, per_folder: bool = False, formats: Sequence[str] = ("json",),
                refs: Any = None, store: Path | None = None) -> dict[str, Any]:
    clashes = folder_clashes(records)
    if clashes:
        warnings.warn(clash_message(clashes), ExportWarning, stacklevel=3)
    beside = per_folder_files(records, store=store) if per_folder else {}  # read and checked before any write
    out: dict[str, Any] = {"records": len({(r.sha256, r.settings) for r in records}), "paths": len(records),
                           "pictures": 0, "pictures_dir": None, "skipped": 0, "setting": records[0].settings.flags(),
                           "images": len({r.sha256 for r in records}), "image_root": str(refs.root)}
    context = ExportContext(json_file.parent, refs, json_file, device, store)
    for name in ["json", *(f for f in formats if f != "json")]:  # patch_ids.json always, first
        out.update(EXPORTS[name](records, context))
    if per_folder:
        out["json_per_folder"] = [str(p) for p in write_patch_ids_per_folder(records, merged=beside)]
    if pic_dir is not None:
        written = export_pictures(records, None, pic_dir, device=device, progress=progress, store=store)
        out.update(pictures=len(written), pictures_dir=str(pic_dir), skipped=len(records) - len(written))
    return out


def export_results(out_dir: str | Path, json_path: str | Path | None = None, pictures_dir: str | Path | None = None,
                   *, pictures: bool = True, device: str = "auto", progress: bool = True, each_setting: bool = False,
                   options: dict[str, Any] | None = None, seed: int | None = None, per_folder: bool = False,
                   formats: Sequence[str] = ("json",), image_root: str | Path | None = None,
                   image_url: str | None = None, **filters: Any) -> dict[str, Any]:
    """Export the records of the store in ``out_dir`` (what ``keypatch export`` does).

    Parameters
    ----------
    out_dir : str or Path
        The results folder (holding ``results.sqlite``), or the store file itself.
    json_path, pictures_dir : str or Path, optional
        Default ``out_dir / "patch_ids.json"`` and ``out_dir / "pictures"`` (not with ``each_setting``).
    pictures : bool
        Also write the PNG triptychs (needs the records' models and image files), on ``device``.
    each_setting : bool
        One export per setting, into ``out_dir / "exports" / SLUG /`` (with ``setting.json``;
        :meth:`~keypatch.store.setting.Setting.slug`), instead of requiring a single setting.
    options, seed : optional
        Only records whose stored options include these ``key: value`` pairs, or this seed.
    per_folder : bool
        Also write a ``patch_ids.json`` into each image folder, where the authors' fine-tuning reads it,
        merged into one there (:func:`~keypatch.exports.patch_ids.write_patch_ids_per_folder`).
    formats : sequence of str
        Also write, beside ``patch_ids.json``, formats of :data:`~keypatch.exports.base.EXPORTS`
        (``coco``, ``labelstudio``, ``masks``: at each image's original resolution).
    image_root, image_url : optional
        The folder image references are relative to (default: the images' common folder), and the
        Label Studio tasks' URL prefix (default: its local-files URL of the root).
    **filters
        Passed to :meth:`ResultStore.records` (``strategy``, ``ratio``, ``model_id``, ``start``...).

    Every path at which a stored image content was found is exported (one entry per path, each
    with the content's record), and named as :func:`~keypatch.exports.patch_ids.unique_names` says;
    files of one folder that share a ``patch_ids.json`` key are named in one ExportWarning.

    Returns
    -------
    dict
        ``records`` (stored records: one per image content and setting), ``images`` (distinct
        contents), ``paths`` (exported entries, one per image path), ``json`` (path), ``pictures``
        (number written), ``pictures_dir``, ``skipped`` (pictures not written), ``setting`` (its
        flags); with ``each_setting``, ``exports``: one such dict per setting, and ``records``,
        ``images`` and ``paths`` in all (:func:`~keypatch.store.count_line` words them).

    Raises
    ------
    FileNotFoundError, ValueError
        No store; no record matches, or (without ``each_setting``) the records have more than one
        setting: the message lists the flags that select each.
    """
    unknown = sorted(set(formats) - set(EXPORTS))
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}; choose from {', '.join(sorted(EXPORTS))}")
    options = dict(options or {})
    if seed is not None:
        options["seed"] = seed
    store, records = selected(out_dir, options, filters)
    folder = store.parent
    from keypatch.exports.annotations import ImageRefs
    from keypatch.reconstructors import resolve_device

    dev = str(resolve_device(device))
    refs = ImageRefs.common([r.image_path for r in records], image_root, image_url)
    for r in records:
        refs.relative(r.image_path)  # every image under the root, or a ValueError before anything is written
    if not each_setting:
        check_one_setting(records)
        pic_dir = (Path(pictures_dir) if pictures_dir else folder / PICTURES_NAME) if pictures else None
        ids = Path(json_path) if json_path else folder / JSON_NAME
        check_output(ids, "--ids FILE (json_path=)" + (" with --pictures DIR (pictures_dir=) or --no-pictures"
                                                       if pic_dir is not None and not pictures_dir else ""))
        if pic_dir is not None:
            check_output(pic_dir, "--pictures DIR (pictures_dir=), or --no-pictures,")
        return _export_one(records, ids, pic_dir, dev, progress, per_folder, formats, refs, store)
    if per_folder:
        raise ValueError("--per-folder writes beside the images, which holds one setting; select one instead of "
                         "--each-setting")
    if json_path or pictures_dir:
        raise ValueError("--json and --pictures name one export; with --each-setting every setting gets its own "
                         "folder under OUT/exports/")
    check_output(folder / EXPORTS_NAME, "copying results.sqlite to a folder that can be written")
    return {"records": len({(r.sha256, r.settings) for r in records}), "images": len({r.sha256 for r in records}),
            "paths": len({r.image_path for r in records}),
            "exports": _each_setting(records, store, pictures, dev, progress, formats, refs)}


def selected(out_dir: str | Path, options: dict[str, Any], filters: dict[str, Any]) -> tuple[Path, list[Record]]:
    """The store file of ``out_dir`` and its records matching ``filters`` and ``options``, one per
    path of each image content (:func:`~keypatch.exports.base.every_path`); a ValueError if none,
    or when a record is refused (:func:`~keypatch.exports.base.checked_records`)."""
    if filters.get("model_id") == "default":
        from keypatch.reconstructors.loading import default_model_id

        filters["model_id"] = default_model_id()
    start = filters.pop("start", None)
    with ResultStore(out_dir, create=False, read_only=True) as store:
        path, folder = store.path, store.path.parent
        records = checked_records(store.records(**filters), path)
        records = match_options(records, options)
        if start is not None:
            records = [r for r in records if start_matches(r.start, start, r.model_id)]
        paths = store.paths([r.sha256 for r in records])
        checked_records([], path, paths)  # the other paths of each content: strings too
        records = every_path(records, paths)
    if not records:
        filters["start"] = start
        given = [f"{k}={v}" for k, v in filters.items() if v is not None] + [f"{k}={v}" for k, v in options.items()]
        raise ValueError(f"no records in {folder}" + (f" match {', '.join(given)}" if given else ""))
    return path, records


def start_matches(stored: str, wanted: str | int | tuple[int, int], model_id: str) -> bool:
    """Whether a record's stored start is the start ``wanted``, given as ``keypatch propose`` takes it
    (``center``, ``none``, an index, ``ROW,COL`` on the grid of the record's model ``model_id``); a
    start stored with :data:`~keypatch.store.MAY_MOVE` matches the start it began from."""
    from keypatch.proposers.search import parse_start, start_patch

    value, want = stored.removesuffix(MAY_MOVE), parse_start(wanted)
    if "," in want:
        try:
            want = str(start_patch(want, _grid(model_id)))
        except (OSError, ValueError):  # outside that model's grid, or the model cannot be had: not this start
            return False
    return value == want


@functools.lru_cache(maxsize=8)
def _grid(model_id: str) -> Any:
    from keypatch.api import load_mae

    return load_mae(model_id, device="cpu").grid


def _each_setting(records: Sequence[Record], store: Path, pictures: bool, device: str, progress: bool,
                  formats: Sequence[str], refs: Any) -> list[dict[str, Any]]:
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.settings].append(r)
    targets = {settings: output_path(store.parent / EXPORTS_NAME, settings.slug(), file=store,
                                     entry=f"the records of {settings.flags()}")
               for settings in groups}  # a setting's folder is named after its strategy and start
    exports = []
    for settings, group in groups.items():
        target = targets[settings]
        target.mkdir(parents=True, exist_ok=True)
        model_id, strategy, ratio, start, options_json = settings
        (target / "setting.json").write_text(json.dumps(
            {"model_id": model_id, "strategy": strategy, "ratio": ratio, "start": start,
             "options": json.loads(options_json), "records": len({r.sha256 for r in group}), "paths": len(group)},
            indent=1) + "\n")
        exports.append(_export_one(group, target / JSON_NAME, target / PICTURES_NAME if pictures else None, device,
                                   progress, formats=formats, refs=refs, store=store))
    return exports
