"""keypatch: find the key patches of images with a pretrained masked autoencoder (KPP).

Quick start
-----------
>>> import keypatch
>>> result = keypatch.propose("photo.jpg", ratio=0.1)          # doctest: +SKIP
>>> result.patches, result.loss                                 # doctest: +SKIP
"""

import os
from typing import TYPE_CHECKING

# Intel MKL's strict reproducibility mode: its matrix products give the same bits on any thread count
# (not so by default for small products), so the thread tuner (keypatch.threads) may move a pass to
# one thread without changing a loss. It must be set before MKL's first product; a value the user set
# is kept (MKL_CBWR=AUTO turns it off).
os.environ.setdefault("MKL_CBWR", "AUTO,STRICT")

from keypatch._lazy import lazy_attributes  # noqa: E402

if TYPE_CHECKING:
    from keypatch.api import propose, propose_batch, propose_pool, reconstruct, reconstruction_loss
    from keypatch.geometry import PatchGrid, load_image, load_images
    from keypatch.objective import Objective
    from keypatch.proposers import Proposal, Proposer, available, register
    from keypatch.reconstructors import MAE, MAEConfig, load_mae

__version__ = "0.1.0"

__all__ = [
    "MAE",
    "MAEConfig",
    "Objective",
    "PatchGrid",
    "Proposal",
    "Proposer",
    "available",
    "load_image",
    "load_images",
    "load_mae",
    "propose",
    "propose_batch",
    "propose_pool",
    "reconstruct",
    "reconstruction_loss",
    "register",
]

_MODULES = {
    **dict.fromkeys(["propose", "propose_batch", "propose_pool", "reconstruct", "reconstruction_loss"], "keypatch.api"),
    **dict.fromkeys(["PatchGrid", "load_image", "load_images"], "keypatch.geometry"),
    "Objective": "keypatch.objective",
    **dict.fromkeys(["Proposal", "Proposer", "available", "register"], "keypatch.proposers"),
    **dict.fromkeys(["MAE", "MAEConfig", "load_mae"], "keypatch.reconstructors"),
}
__getattr__, __dir__ = lazy_attributes(__name__, _MODULES)  # torch is imported on first use
