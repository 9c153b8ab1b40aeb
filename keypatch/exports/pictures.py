"""One picture per exported image: original | kept patches, numbered | reconstruction."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keypatch.exports.base import ExportWarning, record_file
from keypatch.exports.patch_ids import unique_names
from keypatch.store.record import Record, sha256_file
from keypatch.untrusted import input_files

PICTURES_NAME = "pictures"


def export_pictures(records: Sequence[Record], model: Any = None, out_dir: str | Path = PICTURES_NAME, *,
                    device: str = "cpu", progress: bool = False, store: str | Path | None = None) -> list[Path]:
    """Write one PNG triptych (original | kept patches | reconstruction) per record.

    Parameters
    ----------
    records : sequence of Record
        The proposals (named as in :func:`~keypatch.exports.patch_ids.unique_names`, so the PNGs
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
    store : str or Path, optional
        Where the records came from, named when one is refused: every picture lies inside
        ``out_dir`` and is none of the records' images (:func:`~keypatch.exports.base.record_file`,
        all checked before the first is written).

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
    inputs = input_files(r.image_path for r in records)
    targets = [record_file(out, f"{name}.png", r, store=store, inputs=inputs)
               for name, r in zip(unique_names(records), records, strict=True)]
    out.mkdir(parents=True, exist_ok=True)
    models: dict[str, Any] = {}
    written = []
    notes = InputNotes()
    for target, r in tqdm(list(zip(targets, records, strict=True)), desc="pictures", unit="img",
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
        target.parent.mkdir(parents=True, exist_ok=True)
        picture.save(target)
        written.append(target)
    return written
