"""Masks in the Pascal VOC layout CVAT imports: one palette PNG per image, the names and the labels."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image

from keypatch.exports.annotations import LABEL, MASK_COLOR, kept_mask, with_sizes
from keypatch.exports.base import ExportContext, register_export
from keypatch.geometry import PatchGrid
from keypatch.store.record import Record


def export_masks(records: Sequence[Record], out_dir: str | Path, grid: PatchGrid) -> list[Path]:
    """One palette PNG mask per record in Pascal VOC's layout under ``out_dir``; returns the masks.

    ``SegmentationClass/NAME.png`` (index 0 background, 1 key patch), ``ImageSets/Segmentation/
    default.txt`` (the names) and ``labelmap.txt`` (``label:color_rgb:parts:actions``, as CVAT
    writes it).
    """
    out = Path(out_dir)
    (out / "SegmentationClass").mkdir(parents=True, exist_ok=True)
    (out / "ImageSets" / "Segmentation").mkdir(parents=True, exist_ok=True)
    palette = [0, 0, 0, *MASK_COLOR] + [0, 0, 0] * 254
    written, names = [], []
    for name, r, w, h in with_sizes(records, grid):
        im = Image.fromarray(kept_mask(grid, r.patches, w, h).astype(np.uint8))  # mode L: 0 and 1
        im.putpalette(palette)  # L -> P: index 1 shows in MASK_COLOR
        target = out / "SegmentationClass" / f"{name}.png"
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
    written = export_masks(records, context.folder / "masks", context.grid(records))
    return {"masks": str(context.folder / "masks"), "mask_files": len(written)}
