"""Masks in the Pascal VOC layout CVAT imports: one palette PNG per image, the names and the labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from keypatch.exports.annotations import LABEL, MASK_COLOR, kept_mask, with_sizes
from keypatch.exports.base import ExportContext, record_file, register_export
from keypatch.geometry import PatchGrid
from keypatch.store.record import Record
from keypatch.untrusted import input_files


def export_masks(records: Sequence[Record], out_dir: str | Path, grid: PatchGrid, *,
                 store: str | Path | None = None) -> list[Path]:
    """One palette PNG mask per record in Pascal VOC's layout under ``out_dir``; returns the masks.

    ``SegmentationClass/NAME.png`` (index 0 background, 1 key patch), ``ImageSets/Segmentation/
    default.txt`` (the names) and ``labelmap.txt`` (``label:color_rgb:parts:actions``, as CVAT
    writes it). Every mask lies inside ``out_dir`` and is none of the records' images
    (:func:`~keypatch.exports.base.record_file`, whose error names ``store`` and the record); all
    are checked before the first is written.
    """
    out = Path(out_dir)
    sized = with_sizes(records, grid)
    inputs = input_files(r.image_path for r in records)
    targets = [record_file(out / "SegmentationClass", f"{name}.png", r, store=store, inputs=inputs)
               for name, r, _, _ in sized]
    (out / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    palette = [0, 0, 0, *MASK_COLOR] + [0, 0, 0] * 254
    written, names = [], []
    for (name, r, w, h), target in zip(sized, targets, strict=True):
        im = Image.fromarray(kept_mask(grid, r.patches, w, h).astype(np.uint8))  # mode L: 0 and 1
        im.putpalette(palette)  # L -> P: index 1 shows in MASK_COLOR
        target.parent.mkdir(parents=True, exist_ok=True)
        im.save(target)
        written.append(target)
        names.append(name)
    (out / "ImageSets" / "Segmentation" / "default.txt").write_text("".join(f"{n}\n" for n in names))
    color = ",".join(str(c) for c in MASK_COLOR)
    (out / "labelmap.txt").write_text(f"# label:color_rgb:parts:actions\nbackground:0,0,0::\n{LABEL}:{color}::\n")
    return written


@register_export("masks")
def write_masks(records: Sequence[Record], context: ExportContext) -> dict[str, Any]:
    """The ``masks`` format: ``masks/`` in the export folder."""
    written = export_masks(records, context.folder / "masks", context.grid(records), store=context.store)
    return {"masks": str(context.folder / "masks"), "mask_files": len(written)}
