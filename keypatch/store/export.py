"""Export stored proposals: the KPP reference code's ``patch_ids.json`` and one picture per image.

``patch_ids.json`` maps an image's file stem to its ordered patches and per-step losses::

    {"ILSVRC2012_val_00000001": {"patch": [105, 92, 18], "loss": [0.61, 0.52, 0.47]}, ...}

The format holds one setting (model, strategy, ratio, start, options) per file, so the records
exported together must share one: filter them (e.g. by strategy and ratio) when a store holds several.
"""

from __future__ import annotations

import json
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keypatch.store.sqlite import Record, ResultStore, sha256_file

JSON_NAME = "patch_ids.json"
PICTURES_NAME = "pictures"


class ExportWarning(UserWarning):
    """A record could not be exported (e.g. its image file is gone or changed)."""


def check_one_setting(records: Sequence[Record]) -> None:
    """Raise ValueError unless every record has the same settings (the format holds one)."""
    settings = sorted({r.settings for r in records})
    if len(settings) > 1:
        listed = "; ".join(
            f"model={m} strategy={s} ratio={r:g}" + (f" start={st}" if st else "") + (f" options={o}" if o != "{}"
                                                                                  else "")
            for m, s, r, st, o in settings
        )
        raise ValueError(f"the records have {len(settings)} different settings ({listed}); "
                         "filter them to one (by model, strategy, ratio, start)")


def unique_stems(records: Sequence[Record]) -> list[str]:
    """One distinct name per record, from its image's file stem.

    Records whose images share a stem, ignoring case (``a/cat.jpg`` and ``b/Cat.png``), all get
    ``"-" + sha256[:8]`` of their own file appended (``cat-1a2b3c4d``), so names stay stable
    whatever the order of the records; should that still collide, the whole sha256 is used.
    """
    stems = [Path(r.image_path).stem for r in records]
    count: dict[str, int] = defaultdict(int)
    for s in stems:
        count[s.casefold()] += 1  # casefold: Cat.jpg and cat.png would share one PNG on some file systems
    for digits in (8, 64):
        names = [f"{s}-{r.sha256[:digits]}" if count[s.casefold()] > 1 else s
                 for s, r in zip(stems, records, strict=True)]
        if len({n.casefold() for n in names}) == len(names):
            return names
    raise ValueError("two records are for the same image with the same settings; cannot name them apart")


def export_json(records: Sequence[Record], path: str | Path) -> Path:
    """Write ``records`` as the KPP reference ``patch_ids.json``.

    Parameters
    ----------
    records : sequence of Record
        Proposals sharing one setting (see :func:`check_one_setting`).
    path : str or Path
        The JSON file to write (parent folders are created).

    Returns
    -------
    Path
        ``path``. Keys are image file stems; when two images share a stem, each gets a short
        sha256 suffix (see :func:`unique_stems`).
    """
    check_one_setting(records)
    data = {
        name: {"patch": [int(p) for p in r.patches], "loss": [float(v) for v in r.losses]}
        for name, r in zip(unique_stems(records), records, strict=True)
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data) + "\n")
    tmp.replace(path)
    return path


def export_pictures(records: Sequence[Record], model: Any = None, out_dir: str | Path = PICTURES_NAME, *,
                    device: str = "cpu", progress: bool = False) -> list[Path]:
    """Write one PNG triptych (original | kept patches | reconstruction) per record.

    Parameters
    ----------
    records : sequence of Record
        The proposals (named as in :func:`unique_stems`, so the PNGs match ``patch_ids.json``).
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
    from keypatch.reconstructors import load_mae

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    models: dict[str, Any] = {}
    written = []
    for name, r in tqdm(list(zip(unique_stems(records), records, strict=True)), desc="pictures", unit="img",
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
            picture = triptych(path, r.patches, mae)
        except ValueError as exc:  # unreadable image, or patches outside the model's grid
            warnings.warn(f"{path}: {exc}; no picture for it", ExportWarning, stacklevel=2)
            continue
        target = out / f"{name}.png"
        picture.save(target)
        written.append(target)
    return written


def export_results(out_dir: str | Path, json_path: str | Path | None = None, pictures_dir: str | Path | None = None,
                   *, pictures: bool = True, device: str = "auto", progress: bool = True,
                   **filters: Any) -> dict[str, Any]:
    """Export the records of the store in ``out_dir`` (what ``keypatch export`` does).

    Parameters
    ----------
    out_dir : str or Path
        The results folder (holding ``results.sqlite``), or the store file itself.
    json_path : str or Path, optional
        Default ``out_dir / "patch_ids.json"``.
    pictures_dir : str or Path, optional
        Default ``out_dir / "pictures"``.
    pictures : bool
        Also write the PNG triptychs (needs the records' models and image files).
    device : str
        Where to reconstruct for the pictures.
    **filters
        Passed to :meth:`ResultStore.records` (``strategy``, ``ratio``, ``model_id``, ``start``...);
        None values are ignored.

    Returns
    -------
    dict
        ``records``, ``json`` (path), ``pictures`` (number written), ``pictures_dir``, ``skipped``
        (pictures not written).

    Raises
    ------
    FileNotFoundError
        If there is no store.
    ValueError
        If no record matches, or the matching records have more than one setting.
    """
    if filters.get("model_id") == "default":
        from keypatch.reconstructors.loading import default_model_id

        filters["model_id"] = default_model_id()
    with ResultStore(out_dir, create=False) as store:
        folder = store.path.parent
        records = store.records(**filters)
    if not records:
        given = ", ".join(f"{k}={v}" for k, v in filters.items() if v is not None)
        raise ValueError(f"no records in {folder}" + (f" match {given}" if given else ""))
    check_one_setting(records)
    json_file = export_json(records, Path(json_path) if json_path else folder / JSON_NAME)
    summary: dict[str, Any] = {"records": len(records), "json": str(json_file), "pictures": 0,
                               "pictures_dir": None, "skipped": 0}
    if pictures:
        pic_dir = Path(pictures_dir) if pictures_dir else folder / PICTURES_NAME
        from keypatch.reconstructors import resolve_device

        written = export_pictures(records, None, pic_dir, device=str(resolve_device(device)), progress=progress)
        summary.update(pictures=len(written), pictures_dir=str(pic_dir), skipped=len(records) - len(written))
    return summary
