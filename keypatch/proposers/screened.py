"""Screened greedy KPP: each step scores exactly only the candidates a cheap screen ranks first.

Exact greedy scores every remaining patch at every step (3,535 MAE evaluations per image at
r = 0.1). Two cheap signals say which few are worth scoring:

* the current reconstruction's error per masked patch (one MAE pass from the chosen set): adding
  a patch removes its own error from ``L`` and mostly helps the patches around it, so patches the
  MAE rebuilds worst are likely picks;
* the previous step's exact scores: a runner-up of the last step usually stays a strong
  candidate (the loss changes most near the patch just added).

Each step scores the ``m`` patches with the largest current error and the ``keep`` best runners-up
of the last step (``m + keep`` sets, fewer patches by error filling in where runners-up are
missing), and adds the best of them. Alone that screen misses greedy's pick often enough to lose
several percent of ``L``; ``rounds`` of neighbour moves afterwards (:func:`keypatch.proposers.swap.refine`,
as ``swap``'s; each move lowers ``L``) win it back and more. The trade against exact greedy is
measured by ``benchmarks/bench_search.py`` (``docs/results.md``).
"""

from __future__ import annotations

import math

import torch

from keypatch.objective import DEFAULT_CHUNK, Objective, ranks
from keypatch.proposers.base import register
from keypatch.proposers.search import SearchProposer, begun, screened_step, start_state
from keypatch.proposers.swap import refine, refine_batched
from keypatch.reconstructors.precision import DEFAULT_PRECISION


@register
class ScreenedGreedy(SearchProposer):
    """Greedy over the patches the MAE currently rebuilds worst and the last step's runners-up.

    Parameters
    ----------
    m : int
        Patches with the largest current reconstruction error scored at each step.
    keep : int
        Best runners-up of the previous step scored again (0: none).
    rounds : int
        Rounds of neighbour moves after the greedy pass (0: none), as ``swap``'s.
    reach : int
        Chebyshev radius of those moves (1: the 8 neighbours).
    batched : bool
        Each round of moves as one batched pass over all patches of all images
        (:func:`keypatch.proposers.swap.refine_batched`: fewer, larger passes, for one image at a
        time on a GPU) instead of patch by patch (lower ``L`` for the same evaluations).
    start, chunk_size, precision
        As for ``greedy`` (see :class:`~keypatch.proposers.search.SearchProposer`).

    Notes
    -----
    Every step costs ``m + keep`` scored sets (:meth:`Objective.step_errors`), all images batched,
    plus one full MAE pass per image for the error map where the last step's scoring did not give
    it (the first step; every step with more than :data:`~keypatch.objective.MIXED_REFINE`
    candidates, or with precision ``"bfloat16"``); a round of moves about ``8 k`` more. With ``m``
    at least the number of patches and no rounds it is exact greedy (plus the error passes). Ties
    go to the lowest patch index, in the screen and in the pick, so the result is deterministic
    and the same image by image as in a batch. ``evaluations`` counts the error passes and every
    scored set. With ``rounds > 0`` only the final ``L`` is known (shorter prefixes NaN; the public
    API recomputes them).
    """

    name = "screened"
    takes_begin = True
    start_rule = "moves"
    options = {**SearchProposer.options, "m": int, "keep": int, "rounds": int, "reach": int, "batched": bool}

    def __init__(self, m: int = 6, keep: int = 2, rounds: int = 2, reach: int = 1, batched: bool = False,
                 start: str = "center", chunk_size: int = DEFAULT_CHUNK, precision: str = DEFAULT_PRECISION) -> None:
        super().__init__(start, chunk_size, precision)
        if m < 1 or keep < 0 or rounds < 0 or reach < 1:
            raise ValueError(f"m must be >= 1, keep and rounds >= 0 and reach >= 1, got m={m}, keep={keep}, "
                             f"rounds={rounds}, reach={reach}")
        self.m, self.keep, self.rounds, self.reach = int(m), int(keep), int(rounds), int(reach)
        self.batched = bool(batched)

    @property
    def prefix_consistent(self) -> bool:  # type: ignore[override]
        """Without neighbour moves no step depends on ``k``."""
        return self.rounds == 0

    @torch.no_grad()
    def search(self, objective: Objective, k: int, seeds: list[int]):
        chosen, losses, remaining = start_state(objective, self.start)
        b, n, dev = objective.batch, objective.grid.n, objective.device
        picks, step_losses = [chosen], [losses]
        runner = torch.full((b, n), math.inf, device=dev)  # last step's scores (inf: not scored)
        err = None
        for j in range(chosen.shape[1], k):
            sets = torch.cat(picks, dim=1)
            if err is None:  # the first step (later ones read the chosen set's map off the last step)
                err = objective.score(sets, maps=True)[1]
            by_err = ranks(err, remaining)  # largest first, ties to the lowest index
            top_err = by_err < self.m
            # the best runners-up of the last step that the error screen left out
            by_runner = ranks(-runner.masked_fill(top_err, math.inf), remaining)
            top_runner = (by_runner < self.keep) & runner.isfinite() & ~top_err
            # candidates: the error screen's, the runners-up, then (too few runners-up) further by error
            key = torch.where(top_err, by_err, torch.where(top_runner, n + by_runner, 2 * n + by_err))
            count = min(self.m + self.keep, n - j)
            pick, loss, cand, scores, err = screened_step(objective, sets, key, count, remaining, errors=True)
            picks.append(pick[:, None])
            step_losses.append(loss[:, None])
            runner = torch.full((b, n), math.inf, device=dev).scatter_(1, cand, scores)
        patches, losses = torch.cat(picks, dim=1), torch.cat(step_losses, dim=1)
        if self.rounds == 0 or k >= n:
            return patches, losses
        current = losses[:, -1].to(dev, torch.float32)
        if self.batched:
            return refine_batched(objective, patches, current, self.rounds, self.reach, fixed=begun(objective))
        return refine(objective, patches, current, self.rounds, self.reach, fixed=begun(objective))
