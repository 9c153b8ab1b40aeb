"""Lazy greedy KPP: re-evaluate only the top of the stale marginal gains (Minoux, 1978).

Greedy adds the patch with the largest gain ``L(S) - L(S + c)``. Lazy greedy keeps every
candidate's gain from the last time it was evaluated (its *stale* gain) and, at each step,
re-evaluates only the candidates with the largest stale gains: as soon as the best *fresh* gain
is at least the largest stale gain left, that patch is taken. For a submodular objective the
stale gains are upper bounds and the picks equal greedy's. ``L`` is far from submodular: about half
of the candidates' gains *grow* from one step to the next, so patches whose gain was low when last
scored are rarely re-scored, and it falls far behind exact greedy at larger ratios
(``docs/results.md``); ``swap`` is the cheap strategy to use instead.
"""

from __future__ import annotations

import torch

from keypatch.objective import DEFAULT_CHUNK, Objective
from keypatch.proposers.base import register
from keypatch.proposers.search import GainSearchProposer, GainStart
from keypatch.reconstructors.precision import DEFAULT_PRECISION


@register
class LazyGreedy(GainSearchProposer):
    """Lazy greedy on stale marginal gains, re-evaluating ``batch`` candidates per round.

    Parameters
    ----------
    batch : int
        Stale candidates re-evaluated together per round (per image): the classic algorithm is
        ``batch=1``; a few more cost little extra in one batched MAE pass and make the choice
        more robust where ``L`` is not submodular.
    start, chunk_size, precision
        As for ``greedy`` (see :class:`~keypatch.proposers.search.SearchProposer`).

    Notes
    -----
    The first step scores every candidate (as greedy does). Each later step runs rounds: for
    every image not yet decided, its ``batch`` best stale candidates are re-scored, all images in
    one batched pass; an image is decided when its best fresh gain is at least its best stale
    gain (ties: lowest patch index). ``evaluations`` counts every scored set of each image.
    """

    name = "lazy"
    prefix_consistent = True  # no step depends on k
    options = {**GainSearchProposer.options, "batch": int}

    def __init__(self, start: str = "center", batch: int = 4, chunk_size: int = DEFAULT_CHUNK,
                 precision: str = DEFAULT_PRECISION) -> None:
        super().__init__(start, chunk_size, precision)
        if batch < 1:
            raise ValueError(f"batch must be positive, got {batch}")
        self.batch = batch

    @torch.no_grad()
    def extend(self, objective: Objective, k: int, state: GainStart):
        chosen, losses, remaining, current, first = state
        cand, scores = first.cand, first.scores
        (b, j0), n, dev = chosen.shape, objective.grid.n, objective.device
        neg_inf = torch.tensor(float("-inf"), device=dev)
        ar = torch.arange(b, device=dev)
        gain = torch.full((b, n), float("-inf"), device=dev).scatter_(1, cand, current[:, None] - scores)
        fresh = torch.zeros(b, n, dtype=torch.bool, device=dev).scatter_(1, cand, True)
        scored = torch.full((b, n), float("nan"), device=dev).scatter_(1, cand, scores)  # L(S + c) when fresh
        picks, step_losses = [chosen], [losses]
        for _ in range(j0, k):
            while True:
                best_fresh, pick = torch.where(fresh & remaining, gain, neg_inf).max(dim=1)
                stale = torch.where(~fresh & remaining, gain, neg_inf)
                undecided = best_fresh < stale.max(dim=1).values
                if not bool(undecided.any()):
                    break
                top_gain, top = stale[undecided].topk(min(self.batch, n), dim=1)
                rows = ar[undecided][:, None].expand_as(top)
                valid = top_gain > float("-inf")
                rows, top = rows[valid], top[valid]
                chosen_now = torch.cat(picks, dim=1)
                sets = torch.cat([chosen_now[rows], top[:, None]], dim=1)
                fresh_loss = objective.score(sets, rows)
                gain[rows, top] = current[rows] - fresh_loss
                scored[rows, top] = fresh_loss
                fresh[rows, top] = True
            new_loss = scored[ar, pick]
            picks.append(pick[:, None])
            step_losses.append(new_loss[:, None])
            remaining[ar, pick] = False
            current = new_loss
            fresh.zero_()
        return torch.cat(picks, dim=1), torch.cat(step_losses, dim=1)
