"""KPP: exact greedy search over the objective (eq. 2 of the paper)."""

from __future__ import annotations

import logging

import torch

from keypatch.objective import Objective
from keypatch.proposers.base import register
from keypatch.proposers.search import SearchProposer, remaining_count, start_state

log = logging.getLogger("keypatch.greedy")


@register
class Greedy(SearchProposer):
    """Key Patch Proposer: add, one at a time, the patch whose addition gives the lowest ``L``.

    Parameters
    ----------
    start : {"center", "none"}
        ``"center"``: begin with the central patch (the paper's P0); ``"none"``: choose the first
        patch greedily too (the paper's ablation, better below r = 0.1).
    chunk_size : int
        Visible sets per MAE pass (bounds memory; all images x candidates of a step are batched).
    precision : {"auto", "float32", "mixed", "bfloat16"}
        float32 is exact; ``"mixed"`` screens in bfloat16 and re-scores the best candidates in
        float32 (float32's picks, faster for ViT-B where bfloat16 is native); bfloat16 can
        change picks. ``"auto"`` (the default): mixed where bfloat16 is native (CUDA, CPUs with
        AVX512-BF16 or AMX), float32 elsewhere (on AVX2-only CPUs bfloat16 is several times
        *slower*). See :mod:`keypatch.reconstructors.precision`.

    Notes
    -----
    Ties go to the lowest patch index. Every step scores all remaining candidates of all images
    with :meth:`Objective.step` and needs no host synchronisation in float32: the argmin and the
    bookkeeping stay on the device (``"mixed"`` synchronises twice per step, to size its re-scoring).
    """

    name = "greedy"
    takes_begin = True
    prefix_consistent = True

    @torch.no_grad()
    def search(self, objective: Objective, k: int, seeds: list[int]):
        chosen, losses, remaining = start_state(objective, self.start)
        b, n = objective.batch, objective.grid.n
        picks, step_losses = [chosen], [losses]
        ar = torch.arange(b, device=objective.device)
        for j in range(chosen.shape[1], k):
            # candidates in ascending index order, so argmin's first hit is the lowest index
            cand = remaining_count(remaining, n - j)
            step = objective.step(torch.cat(picks, dim=1), cand)
            pick = step.pick
            picks.append(pick[:, None])
            step_losses.append(step.loss[:, None])
            remaining[ar, pick] = False
            if log.isEnabledFor(logging.DEBUG):  # -vv: reading the picks synchronises, so only then
                log.debug("step %d/%d: picks %s, L %s", j + 1, k, pick.tolist(),
                          [round(v, 5) for v in step_losses[-1][:, 0].tolist()])
        return torch.cat(picks, dim=1), torch.cat(step_losses, dim=1)
