"""Exports of stored proposals: the KPP authors' ``patch_ids.json``, annotation-tool files, pictures
and the HTML gallery, each format one module behind one registry (:mod:`keypatch.exports.base`).

:func:`export_results` is what ``keypatch export`` runs; :func:`keypatch.exports.report.write_report`
what ``keypatch report`` runs. The store (:mod:`keypatch.store`) knows nothing of them.
"""

from keypatch.exports import coco, labelstudio, masks, patch_ids  # noqa: F401  (each registers its format)
from keypatch.exports.base import EXPORTS, ExportContext, ExportWarning, register_export
from keypatch.exports.results import export_results

__all__ = ["EXPORTS", "ExportContext", "ExportWarning", "export_results", "register_export"]
