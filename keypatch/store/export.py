"""Export stored proposals: the KPP authors' ``patch_ids.json`` and one picture per image.

``patch_ids.json`` maps an image's name to its ordered patches and the loss after each added
patch (:mod:`keypatch.store.patch_ids`)::

    {"ILSVRC2012_val_00000001": {"patch": [105, 92, 18], "loss": [0.52, 0.47]}, ...}

The format holds one setting (model, strategy, ratio, start, options) per file, so the records
exported together must share one: select one by any stored setting (model, strategy, ratio, start,
seed, options), or write one export per setting (``each_setting``).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keypatch.store.patch_ids import (
    JSON_NAME,
    clash_message,
    folder_clashes,
    unique_names,
    write_patch_ids,
    write_patch_ids_per_folder,
)
from keypatch.store.sqlite import Record, ResultStore, sha256_file

__all__ = ["FORMATS", "JSON_NAME", "export_json", "export_pictures", "export_results", "unique_names"]
PICTURES_NAME = "pictures"
EXPORTS_NAME = "exports"


class ExportWarning(UserWarning):
    """A record could not be exported (e.g. its image file is gone or changed)."""


def setting_flags(settings: tuple[str, str, float, str, str]) -> str:
    """The ``keypatch export`` flags that select exactly one setting."""
    model_id, strategy, ratio, start, options_json = settings
    flags = [f"--model {model_id}", f"--strategy {strategy}", f"--ratio {ratio:g}"]
    if start:
        flags.append(f"--start {start}")
    flags += [f"-o {k}={v}" for k, v in sorted(json.loads(options_json).items())]
    return " ".join(flags)


def setting_slug(settings: tuple[str, str, float, str, str]) -> str:
    """A folder name for one setting: ``STRATEGY-rRATIO[-START]-HASH8`` (the hash covers it all)."""
    model_id, strategy, ratio, start, _ = settings
    digest = hashlib.sha1(json.dumps(list(settings)).encode()).hexdigest()[:8]
    return f"{strategy}-r{ratio:g}" + (f"-{start}" if start else "") + f"-{digest}"


def check_one_setting(records: Sequence[Record]) -> None:
    """Raise ValueError unless every record has the same settings (the format holds one); the
    message lists each setting with the flags that select it."""
    settings = sorted({r.settings for r in records})
    if len(settings) > 1:
        listed = "; ".join(setting_flags(st) for st in settings)
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


def export_json(records: Sequence[Record], path: str | Path) -> Path:
    """Write ``records`` as the KPP authors' ``patch_ids.json`` (:mod:`keypatch.store.patch_ids`).

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
        clashes are resolved as :func:`~keypatch.store.patch_ids.unique_names` says.
    """
    check_one_setting(records)
    return write_patch_ids(records, path)


def export_pictures(records: Sequence[Record], model: Any = None, out_dir: str | Path = PICTURES_NAME, *,
                    device: str = "cpu", progress: bool = False) -> list[Path]:
    """Write one PNG triptych (original | kept patches | reconstruction) per record.

    Parameters
    ----------
    records : sequence of Record
        The proposals (named as in :func:`~keypatch.store.patch_ids.unique_names`, so the PNGs
        match ``patch_ids.json``).
    model : MAE, str or None
        The reconstructor for every record; None loads each record's ``model_id`` as a
        :func:`keypatch.load_mae` spec (each distinct one once).
    out_dir : str or Path
        Folder for ``<name>.png`` (created).
    device : str
        Where to run the reconstructions when loading models.
    progress : bool
        Show a progress bar.

    Returns
    -------
    list of Path
        The files written. A record whose image is missing, unreadable, or no longer has the stored
        sha256 is skipped with an :class:`ExportWarning`.
    """
    from tqdm.auto import tqdm

    from keypatch.experiments.pictures import triptych
    from keypatch.geometry import InputNotes
    from keypatch.reconstructors import load_mae

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models: dict[str, Any] = {}
    written = []
    notes = InputNotes()
    for name, r in tqdm(list(zip(unique_names(records), records, strict=True)), desc="pictures", unit="img",
                        disable=not progress):
        path = Path(r.image_path)
        try:
            if sha256_file(path) != r.sha256:
                warnings.warn(f"{path} changed since its proposal was stored; no picture for it", ExportWarning,
                              stacklevel=2)
                continue
        except OSError as exc:
            warnings.warn(f"{path}: cannot read it ({exc}); no picture for it", ExportWarning, stacklevel=2)
            continue
        if model is not None:
            mae = model
        else:
            if r.model_id not in models:
                models[r.model_id] = load_mae(r.model_id, device=device)
            mae = models[r.model_id]
        try:
            picture = triptych(path, r.patches, mae, notes=notes,  # propose has reported them
                               resize=r.options.get("resize", "bicubic"), name=path.name, loss=r.loss)
        except ValueError as exc:  # unreadable image, or patches outside the model's grid
            warnings.warn(f"{path}: {exc}; no picture for it", ExportWarning, stacklevel=2)
            continue
        target = out / f"{name}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        picture.save(target)
        written.append(target)
    return written


FORMATS = ("json", "coco", "labelstudio", "masks")
"""What :func:`export_results` writes: ``patch_ids.json`` (and pictures), COCO JSON, Label Studio
tasks, VOC/CVAT masks (:mod:`keypatch.store.annotations`)."""


def _annotations(records: Sequence[Record], folder: Path, formats: Sequence[str], device: str,
                 refs: Any) -> dict[str, Any]:
    """The annotation exports of one setting's ``records`` into ``folder``: their paths by format."""
    from keypatch.reconstructors import load_mae
    from keypatch.store import annotations

    wanted = [f for f in formats if f != "json"]
    if not wanted:
        return {}
    grid = load_mae(records[0].model_id, device=device).grid  # the patches' grid
    out: dict[str, Any] = {"image_root": str(refs.root)}
    if "coco" in wanted:
        out["coco"] = str(annotations.export_coco(records, folder / "coco.json", grid, refs))
    if "labelstudio" in wanted:
        out["labelstudio"] = str(annotations.export_labelstudio(records, folder / "labelstudio_tasks.json", grid,
                                                                refs))
        if refs.url is None:
            out["labelstudio_document_root"] = str(refs.document_root)
    if "masks" in wanted:
        out["masks"] = str(folder / "masks")
        out["mask_files"] = len(annotations.export_masks(records, folder / "masks", grid))
    return out


def _export_one(records: Sequence[Record], json_file: Path, pic_dir: Path | None, device: str,
                progress: bool, per_folder: bool = False, formats: Sequence[str] = ("json",),
                refs: Any = None) -> dict[str, Any]:
    clashes = folder_clashes(records)
    if clashes:
        warnings.warn(clash_message(clashes), ExportWarning, stacklevel=3)
    json_file = export_json(records, json_file)
    out: dict[str, Any] = {"records": len(records), "json": str(json_file), "pictures": 0, "pictures_dir": None,
                           "skipped": 0, "setting": setting_flags(records[0].settings),
                           "images": len({r.sha256 for r in records})}
    if per_folder:
        out["json_per_folder"] = [str(p) for p in write_patch_ids_per_folder(records)]
    out.update(_annotations(records, json_file.parent, formats, device, refs))
    if pic_dir is not None:
        written = export_pictures(records, None, pic_dir, device=device, progress=progress)
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
    json_path : str or Path, optional
        Default ``out_dir / "patch_ids.json"`` (not with ``each_setting``).
    pictures_dir : str or Path, optional
        Default ``out_dir / "pictures"`` (not with ``each_setting``).
    pictures : bool
        Also write the PNG triptychs (needs the records' models and image files).
    device : str
        Where to reconstruct for the pictures.
    each_setting : bool
        Write one export per setting of the matching records, into
        ``out_dir / "exports" / SLUG /`` (``patch_ids.json``, ``pictures/`` and ``setting.json``;
        see :func:`setting_slug`), instead of requiring a single setting.
    options : dict, optional
        Only records whose stored options include these ``key: value`` pairs (e.g. ``{"eps": 0.2}``).
    seed : int, optional
        Only records stored with this seed (the same as ``options={"seed": seed}``).
    per_folder : bool
        Also write one ``patch_ids.json`` into each folder of images, where the authors' fine-tuning
        dataset reads it (``ROOT/CLASS/patch_ids.json``), merged into one already there
        (:func:`~keypatch.store.patch_ids.write_patch_ids_per_folder`); listed as ``json_per_folder``.
    formats : sequence of str
        Also write, beside ``patch_ids.json``, any of ``"coco"`` (``coco.json``), ``"labelstudio"``
        (``labelstudio_tasks.json`` and ``labelstudio_config.xml``) and ``"masks"`` (``masks/``), at
        each image's original resolution (:mod:`keypatch.store.annotations`).
    image_root : str or Path, optional
        The folder the annotation files' image references are relative to (default: the common
        folder of the exported images); every image must lie under it.
    image_url : str, optional
        Prefix of the Label Studio tasks' image URLs (default: Label Studio's local-files URL of the
        image root, ``/data/local-files/?d=ROOTNAME/``).
    **filters
        Passed to :meth:`ResultStore.records` (``strategy``, ``ratio``, ``model_id``, ``start``...);
        None values are ignored.

    Every path at which a stored image content was found is exported (one entry per path, each
    with the content's record), and named as :func:`~keypatch.store.patch_ids.unique_names` says;
    files of one folder that share a ``patch_ids.json`` key are named in one ExportWarning.

    Returns
    -------
    dict
        ``records`` (exported entries, one per image path), ``images`` (distinct contents), ``json``
        (path), ``pictures`` (number written), ``pictures_dir``, ``skipped``
        (pictures not written), ``setting`` (its flags); with ``each_setting``, ``exports``: one
        such dict per setting, and ``records`` in all.

    Raises
    ------
    FileNotFoundError
        If there is no store.
    ValueError
        If no record matches, or (without ``each_setting``) the matching records have more than
        one setting: the message lists the flags that select each.
    """
    if filters.get("model_id") == "default":
        from keypatch.reconstructors.loading import default_model_id

        filters["model_id"] = default_model_id()
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown:
        raise ValueError(f"unknown export format {unknown[0]!r}; choose from {', '.join(FORMATS)}")
    options = dict(options or {})
    if seed is not None:
        options["seed"] = seed
    with ResultStore(out_dir, create=False, read_only=True) as store:
        folder = store.path.parent
        records = match_options(store.records(**filters), options)
        records = every_path(records, store.paths([r.sha256 for r in records]))
    if not records:
        given = [f"{k}={v}" for k, v in filters.items() if v is not None] + [f"{k}={v}" for k, v in options.items()]
        raise ValueError(f"no records in {folder}" + (f" match {', '.join(given)}" if given else ""))
    from keypatch.reconstructors import resolve_device
    from keypatch.store.annotations import ImageRefs

    dev = str(resolve_device(device))
    refs = ImageRefs.common([r.image_path for r in records], image_root, image_url)
    for r in records:
        refs.relative(r.image_path)  # every image under the root, or a ValueError before anything is written
    if not each_setting:
        check_one_setting(records)
        pic_dir = (Path(pictures_dir) if pictures_dir else folder / PICTURES_NAME) if pictures else None
        return _export_one(records, Path(json_path) if json_path else folder / JSON_NAME, pic_dir, dev, progress,
                           per_folder, formats, refs)
    if per_folder:
        raise ValueError("--per-folder writes beside the images, which holds one setting; select one instead of "
                         "--each-setting")
    if json_path or pictures_dir:
        raise ValueError("--json and --pictures name one export; with --each-setting every setting gets its own "
                         "folder under OUT/exports/")
    groups: dict[tuple, list[Record]] = defaultdict(list)
    for r in records:
        groups[r.settings].append(r)
    exports = []
    for settings, group in groups.items():
        target = folder / EXPORTS_NAME / setting_slug(settings)
        target.mkdir(parents=True, exist_ok=True)
        model_id, strategy, ratio, start, options_json = settings
        (target / "setting.json").write_text(json.dumps(
            {"model_id": model_id, "strategy": strategy, "ratio": ratio, "start": start,
             "options": json.loads(options_json), "records": len(group)}, indent=1) + "\n")
        exports.append(_export_one(group, target / JSON_NAME, target / PICTURES_NAME if pictures else None, dev,
                                   progress, formats=formats, refs=refs))
    return {"records": len(records), "exports": exports}
