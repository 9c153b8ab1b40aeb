"""Random patches (the paper's baseline)."""

from __future__ import annotations

import torch

from keypatch.proposers.base import Proposer, register
from keypatch.reconstructors.mae import MAE


@register
class RandomPatches(Proposer):
    """``k`` patches drawn uniformly without replacement, reproducible from the seed.

    Image ``i`` of a batch draws from a generator seeded with ``seed + i``, so one image alone with
    ``seed`` gets the same patches as the first image of a batch with ``seed``.
    """

    name = "random"
    needs_model = False
    prefix_consistent = True

    @torch.no_grad()
    def select(self, model: MAE, images: torch.Tensor, k: int, seed: int):
        b, n = images.shape[0], model.grid.n
        patches = torch.stack(
            [torch.randperm(n, generator=torch.Generator().manual_seed(seed + i))[:k] for i in range(b)]
        ).to(model.device)
        return patches, torch.full((b, k), float("nan"), device=model.device), [0] * b
