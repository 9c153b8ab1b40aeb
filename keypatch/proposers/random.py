"""Random patches (the paper's baseline)."""

from __future__ import annotations

import torch

from keypatch.proposers.base import Proposer, image_seeds, register
from keypatch.reconstructors.mae import MAE


@register
class RandomPatches(Proposer):
    """``k`` patches drawn uniformly without replacement, a mask of its own for every image.

    Each image draws from a generator seeded from ``seed`` and the image's own pixels
    (:func:`~keypatch.proposers.base.image_seeds`): different images get independent masks, and the
    same image with the same seed gets the same mask whatever the batch, its place in it or the run.
    """

    name = "random"
    searches_objective = False
    prefix_consistent = True
    uses_seed = True

    @torch.no_grad()
    def select(self, model: MAE, images: torch.Tensor, k: int, seed: int):
        b, n = images.shape[0], model.grid.n
        patches = torch.stack(
            [torch.randperm(n, generator=torch.Generator().manual_seed(s))[:k] for s in image_seeds(images, seed)]
        ).to(model.device)
        return patches, torch.full((b, k), float("nan"), device=model.device), [0] * b
