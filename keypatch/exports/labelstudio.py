"""Label Studio import tasks with the kept patches as a BrushLabels pre-annotation, and the config."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from keypatch.exports.annotations import LABEL, MASK_COLOR, ImageRefs, kept_mask, labelstudio_rle, with_sizes
from keypatch.exports.base import ExportContext, register_export
from keypatch.geometry import PatchGrid
from keypatch.store.record import Record

LABELSTUDIO_CONFIG = f"""<View>
  <Image name="image" value="$image" zoom="true"/>
  <BrushLabels name="tag" toName="image">
    <Label value="{LABEL}" background="rgba({MASK_COLOR[0]}, {MASK_COLOR[1]}, {MASK_COLOR[2]}, 0.7)"/>
  </BrushLabels>
</View>
"""
"""The labelling config the tasks of :func:`export_labelstudio` fit."""


def export_labelstudio(records: Sequence[Record], path: str | Path, grid: PatchGrid,
                       refs: ImageRefs | None = None) -> Path:
    """Write Label Studio import tasks (a JSON list) at ``path`` and the config beside it.

    Each task's ``data.image`` is ``refs.labelstudio(path)`` (default :class:`ImageRefs` of the
    images' common folder: Label Studio's local-files URL). Its ``predictions`` hold one
    ``brushlabels`` result with the kept patches (``score``: ``-L``). The config is written to
    ``labelstudio_config.xml`` in the same folder.
    """
    sized = with_sizes(records, grid)
    refs = refs or ImageRefs.common([r.image_path for _, r, _, _ in sized])
    tasks = []
    for name, r, w, h in sized:
        image = refs.labelstudio(r.image_path)
        result = {"id": name[:40], "from_name": "tag", "to_name": "image", "type": "brushlabels",
                  "original_width": w, "original_height": h, "image_rotation": 0,
                  "value": {"format": "rle", "rle": labelstudio_rle(kept_mask(grid, r.patches, w, h)),
                            "brushlabels": [LABEL]}}
        tasks.append({"data": {"image": image, "name": name, "patches": [int(x) for x in r.patches],
                               "loss": float(r.loss)},
                      "predictions": [{"model_version": f"keypatch {r.strategy} r={r.ratio:g}",
                                       "score": -float(r.loss), "result": [result]}]})
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(tasks))
    (path.parent / "labelstudio_config.xml").write_text(LABELSTUDIO_CONFIG)
    return path


@register_export("labelstudio")
def write_labelstudio(records: Sequence[Record], context: ExportContext) -> dict[str, Any]:
    """The ``labelstudio`` format: ``labelstudio_tasks.json`` and ``labelstudio_config.xml``."""
    path = export_labelstudio(records, context.folder / "labelstudio_tasks.json", context.grid(records), context.refs)
    out = {"labelstudio": str(path)}
    if context.refs.url is None:
        out["labelstudio_document_root"] = str(context.refs.document_root)
    return out
