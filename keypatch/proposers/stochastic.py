"""Stochastic greedy KPP (Mirzasoleiman et al., "Lazier Than Lazy Greedy", AAAI 2015).

At each step only a random sample of ``s = ceil((N / k) ln(1 / eps))`` remaining candidates is
scored and the best of the sample is added. For a monotone submodular objective this keeps a
``1 - 1/e - eps`` guarantee in expectation with ``N ln(1/eps)`` evaluations in all, independent
of ``k``; ``L`` is not exactly submodular, so the loss gap to exact greedy is measured in
``benchmarks/``.
"""

from __future__ import annotations

import math

import torch

from keypatch.objective import DEFAULT_CHUNK, Objective
from keypatch.proposers.base import register
from keypatch.proposers.search import SearchProposer, start_state
from keypatch.reconstructors.precision import DEFAULT_PRECISION


def sample_size(n: int, k: int, eps: float) -> int:
    """``s = ceil((n / k) ln(1 / eps))``, at least 1 and at most ``n``."""
    return max(1, min(n, math.ceil(n / k * math.log(1.0 / eps))))


@register
class StochasticGreedy(SearchProposer):
    """Greedy over a fresh uniform sample of the remaining patches at each step.

    Parameters
    ----------
    eps : float
        In ``(0, 1)``: smaller means larger samples (closer to greedy, more evaluations).
    start, chunk_size, precision
        As for ``greedy`` (see :class:`~keypatch.proposers.search.SearchProposer`).

    Notes
    -----
    Each image draws its samples from a CPU generator seeded from ``seed`` and the image's pixels
    (:func:`~keypatch.proposers.base.image_seeds`), so a result depends only on the image and
    ``seed``, not on the batch. A sample is sorted by
    patch index, so ties go to the lowest index as in greedy.
    """

    name = "stochastic"
    takes_begin = True
    uses_seed = True
    options = {**SearchProposer.options, "eps": float}

    def __init__(self, start: str = "center", eps: float = 0.1, chunk_size: int = DEFAULT_CHUNK,
                 precision: str = DEFAULT_PRECISION) -> None:
        super().__init__(start, chunk_size, precision)
        if not 0.0 < eps < 1.0:
            raise ValueError(f"eps must be in (0, 1), got {eps!r}")
        self.eps = float(eps)

    @torch.no_grad()
    def search(self, objective: Objective, k: int, seeds: list[int]):
        b, n, dev = objective.batch, objective.grid.n, objective.device
        chosen, losses, remaining = start_state(objective, self.start)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        s = sample_size(n, k, self.eps)
        picks, step_losses = [chosen], [losses]
        rem_cpu = remaining.cpu()
        for j in range(chosen.shape[1], k):
            size = min(s, n - j)
            keys = torch.stack([torch.rand(n, generator=g) for g in gens])
            keys[~rem_cpu] = float("inf")
            cand = keys.topk(size, dim=1, largest=False).indices.sort(dim=1).values.to(dev)
            step = objective.step(torch.cat(picks, dim=1), cand)
            pick = step.pick
            picks.append(pick[:, None])
            step_losses.append(step.loss[:, None])
            rem_cpu[torch.arange(b), pick.cpu()] = False
        return torch.cat(picks, dim=1), torch.cat(step_losses, dim=1)
