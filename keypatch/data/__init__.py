"""Quantized datasets (Dataset Quantization): shards of kept patches, and the MAE that rebuilds them.

``keypatch quantize`` / :func:`quantize` selects images with DQ's bins and stores only the kept
patches of each (:mod:`keypatch.data.shards`); ``keypatch reconstruct`` / :func:`reconstruct_folder`
writes the MAE's reconstructions as an ImageFolder; :class:`QuantizedDataset` rebuilds them on the
fly for training.
"""

from typing import TYPE_CHECKING

from keypatch._lazy import lazy_attributes

if TYPE_CHECKING:
    from keypatch.data.codec import CODECS, Codec, parse_codec
    from keypatch.data.dataset import QuantizedDataset
    from keypatch.data.labels import SparseLabels, write_label_masks
    from keypatch.data.pipeline import QuantizeResult, quantize
    from keypatch.data.reconstruction import rebuild, reconstruct_folder
    from keypatch.data.shards import QuantizedFolder

__all__ = ["CODECS", "Codec", "QuantizeResult", "QuantizedDataset", "QuantizedFolder", "SparseLabels", "parse_codec",
           "quantize", "rebuild", "reconstruct_folder", "write_label_masks"]

__getattr__, __dir__ = lazy_attributes(__name__, {
    "CODECS": "keypatch.data.codec", "Codec": "keypatch.data.codec", "parse_codec": "keypatch.data.codec",
    "QuantizedDataset": "keypatch.data.dataset", "QuantizeResult": "keypatch.data.pipeline",
    "quantize": "keypatch.data.pipeline", "reconstruct_folder": "keypatch.data.reconstruction",
    "rebuild": "keypatch.data.reconstruction", "QuantizedFolder": "keypatch.data.shards",
    "SparseLabels": "keypatch.data.labels", "write_label_masks": "keypatch.data.labels",
})
