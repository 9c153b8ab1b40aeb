"""COCO JSON: one annotation per kept patch (box, RLE mask, pick order and loss); pycocotools reads it."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keypatch.exports.annotations import LABEL, ImageRefs, coco_rle, kept_mask, patch_box, with_sizes
from keypatch.exports.base import ExportContext, register_export
from keypatch.geometry import PatchGrid
from keypatch.store.record import Record


def export_coco(records: Sequence[Record], path: str | Path, grid: PatchGrid, refs: ImageRefs | None = None) -> Path:
    """Write ``records`` as a COCO JSON file at ``path``: one image each, one annotation per kept patch.

    ``file_name`` is the image's path relative to ``refs.root`` (default: the images' common
    folder, recorded as ``info.image_root``).

    Every annotation carries ``bbox`` ``[x, y, w, h]``, ``area``, ``segmentation`` (uncompressed
    RLE), ``iscrowd: 1`` and ``keypatch: {"patch", "rank", "loss"}`` (the pick order from 1, and
    ``L`` once that patch was added).
    """
    sized = with_sizes(records, grid)
    refs = refs or ImageRefs.common([r.image_path for _, r, _, _ in sized])
    images, annotations = [], []
    for image_id, (name, r, w, h) in enumerate(sized, start=1):
        images.append({"id": image_id, "file_name": refs.relative(r.image_path), "width": w, "height": h,
                       "keypatch": {"name": name, "loss": float(r.loss), "strategy": r.strategy,
                                    "ratio": r.ratio}})
        for rank, p in enumerate(r.patches, start=1):
            x0, y0, x1, y1 = patch_box(grid, int(p), w, h)
            annotations.append({
                "id": len(annotations) + 1, "image_id": image_id, "category_id": 1, "iscrowd": 1,
                "bbox": [x0, y0, x1 - x0, y1 - y0], "area": (x1 - x0) * (y1 - y0),
                "segmentation": coco_rle(kept_mask(grid, [p], w, h)),
                "keypatch": {"patch": int(p), "rank": rank, "loss": float(r.losses[rank - 1])},
            })
    data = {"info": {"description": "key patches (keypatch)", "image_root": str(refs.root)}, "images": images,
            "annotations": annotations,
            "categories": [{"id": 1, "name": LABEL, "supercategory": LABEL}]}
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


@register_export("coco")
def write_coco(records: Sequence[Record], context: ExportContext) -> dict[str, Any]:
    """The ``coco`` format: ``coco.json`` in the export folder."""
    return {"coco": str(export_coco(records, context.folder / "coco.json", context.grid(records), context.refs))}
