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


def brush_result(grid: PatchGrid, patches: Sequence[int], width: int, height: int, *, from_name: str = "tag",
                 to_name: str = "image", label: str = LABEL, result_id: str = "keypatch") -> dict[str, Any]:
    """One ``brushlabels`` result: the kept ``patches`` as Label Studio's RLE mask at the original
    ``width x height`` resolution, labelled ``label``, for the config's ``from_name``/``to_name``."""
    return {"id": result_id[:40], "from_name": from_name, "to_name": to_name, "type": "brushlabels",
            "original_width": width, "original_height": height, "image_rotation": 0,
            "value": {"format": "rle", "rle": labelstudio_rle(kept_mask(grid, patches, width, height)),
                      "brushlabels": [label]}}


def prediction(record: Record, grid: PatchGrid, width: int, height: int, *, model_version: str | None = None,
               **names: str) -> dict[str, Any]:
    """A Label Studio prediction of ``record``: its kept patches (:func:`brush_result`; ``names`` are
    its ``from_name``, ``to_name``, ``label``, ``result_id``) with the final loss ``L`` as the score,
    so that sorting tasks by prediction score puts the images the MAE rebuilds worst first or last."""
    return {"model_version": model_version or f"keypatch {record.strategy} r={record.ratio:g}",
            "score": float(record.loss), "result": [brush_result(grid, record.patches, width, height, **names)]}


def export_labelstudio(records: Sequence[Record], path: str | Path, grid: PatchGrid,
                       refs: ImageRefs | None = None) -> Path:
    """Write Label Studio import tasks (a JSON list) at ``path`` and the config beside it.

    Each task's ``data.image`` is ``refs.labelstudio(path)`` (default :class:`ImageRefs` of the
    images' common folder: Label Studio's local-files URL). Its ``predictions`` hold one
    :func:`prediction`: a ``brushlabels`` result with the kept patches, ``score`` the loss ``L``.
    The config is written to ``labelstudio_config.xml`` in the same folder.
    """
    sized = with_sizes(records, grid)
    refs = refs or ImageRefs.common([r.image_path for _, r, _, _ in sized])
    tasks = []
    for name, r, w, h in sized:
        tasks.append({"data": {"image": refs.labelstudio(r.image_path), "name": name,
                               "patches": [int(x) for x in r.patches], "loss": float(r.loss)},
                      "predictions": [prediction(r, grid, w, h, result_id=name)]})
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
