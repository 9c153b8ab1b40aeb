"""Reconstructors: the MAE that rebuilds masked patches, its configs and weight loaders."""

from keypatch.reconstructors.config import ARCHITECTURES, MAEConfig
from keypatch.reconstructors.loading import load_mae, resolve_device, save_mae
from keypatch.reconstructors.mae import MAE

__all__ = ["MAE", "ARCHITECTURES", "MAEConfig", "load_mae", "resolve_device", "save_mae"]
