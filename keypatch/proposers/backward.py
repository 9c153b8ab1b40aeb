"""Backward KPP: start from every patch and remove, one at a time, the one ``L`` misses least.

Forward greedy pays for high keep ratios: at r = 0.8 (DQ keeps 80% of the patches) it adds 156
patches, scoring ~18,300 sets per image. Backward elimination starts from the whole grid
(``L = 0``) and removes the patch whose removal raises ``L`` least, until ``k`` remain: ``N - k``
steps, each scoring one set per patch still kept (~6,900 sets at r = 0.8). Its sets are large
(most patches visible), so each costs more encoder work than forward greedy's early ones; the
trade in seconds and in ``L`` is measured by ``benchmarks/bench_backward.py``.
"""

from __future__ import annotations

import math

import torch

from keypatch.objective import Objective
from keypatch.proposers.base import register
from keypatch.proposers.search import SearchProposer


@register
class Backward(SearchProposer):
    """Backward elimination over the KPP objective, from all patches down to ``k``.

    Parameters
    ----------
    chunk_size, precision
        As for ``greedy`` (see :class:`~keypatch.proposers.search.SearchProposer`); ``"mixed"``
        screens the removals in bfloat16 and re-scores the best in float32, as greedy's additions.
    start
        Accepted for a common interface; the search starts from every patch whatever it says.

    Notes
    -----
    Exact for its own rule: every step scores every removal of every image in batched passes, and
    ties go to the lowest patch index. The kept patches are returned in ascending index order; only
    the final ``L`` is known (shorter prefixes NaN; the public API recomputes them). Every step
    depends on ``k`` only through when it stops, so a smaller ``k`` continues a larger one's
    eliminations, but its patches are not a prefix of the larger answer.
    """

    takes_begin = False  # it removes patches from the full set: it cannot keep a begun set
    name = "backward"
    start_rule = "ignored"

    @torch.no_grad()
    def search(self, objective: Objective, k: int, seeds: list[int]):
        b, n, dev = objective.batch, objective.grid.n, objective.device
        kept = torch.arange(n, device=dev).expand(b, n).contiguous()  # ascending, always
        current = torch.zeros(b, device=dev)
        ar = torch.arange(b, device=dev)
        for s in range(n, k, -1):  # s patches kept; remove one
            drop = ~torch.eye(s, dtype=torch.bool, device=dev)  # row r: every kept patch but the r-th
            sets = kept[:, None, :].expand(b, s, s)[:, drop].view(b, s, s - 1)
            scores = objective.score(sets)  # (B, s, s - 1): alternatives
            best = scores.argmin(dim=1)  # first minimum: removing the lowest index on ties
            kept = sets[ar, best]
            current = scores[ar, best]
        losses = torch.full((b, k), math.nan, device=dev)
        if k:
            losses[:, -1] = current if k < n else 0.0
        return kept, losses
