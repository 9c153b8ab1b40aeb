"""The ranker at work: every patch's score given each image's chosen set, for one objective."""

from __future__ import annotations

import torch

from keypatch.objective import Objective
from keypatch.ranker.net import PatchRanker, ranker_inputs, static_inputs
from keypatch.threads import TUNER


class Ranking:
    """The ranker's score of every patch given each image's chosen set, for one objective.

    Keeps the images' targets and the last error map, ``last`` (the ranker reads how the error changed).
    """

    def __init__(self, objective: Objective, net: PatchRanker) -> None:
        self.objective, self.grid = objective, objective.grid
        self.net = net.to(objective.device)
        targets = objective.model.targets(objective.images).float()
        self.static = static_inputs(targets, self.grid.rows, self.grid.cols)
        self.last: torch.Tensor | None = None

    def __call__(self, sets: torch.Tensor, err: torch.Tensor | None = None) -> torch.Tensor:
        """``sets (B, j)`` chosen patches -> ``(B, N)`` scores; one MAE pass per image for their error
        map unless it is given (``err (B, N)`` as :meth:`Objective.score` gives with ``maps``); it is
        then :attr:`last`."""
        if err is None:
            err = self.objective.score(sets, maps=True)[1]
        chosen = torch.zeros_like(err, dtype=torch.bool).scatter_(1, sets, True)
        inputs = ranker_inputs(None, err, err if self.last is None else self.last, chosen,
                               self.grid.rows, self.grid.cols, self.static)
        self.last = err
        # image by image: a convolution's result must not depend on the batch it ran in
        return self._net(lambda: torch.cat([self.net(inputs[i : i + 1]) for i in range(inputs.shape[0])]),
                         inputs.shape[0])

    def _net(self, fn, units: int) -> torch.Tensor:  # noqa: ANN001 - a closure over the net's calls
        """The ranker's calls ``fn()``, on a CPU on the thread count :data:`~keypatch.threads.TUNER` chooses."""
        return TUNER.run(fn, units, "ranker") if self.objective.device.type == "cpu" else fn()

    def without_each(self, sets: torch.Tensor) -> torch.Tensor:
        """Where to move each chosen patch: ``sets (B, k)`` -> ``(B, k, N)``, row ``i`` the ranker's
        score of every patch as an addition to the set without its patch ``i`` (the question the
        ranker was fitted to answer). One MAE pass per patch of each set (``k`` per image, batched);
        the error maps' changes read as 0. Does not change :attr:`last`."""
        b, k = sets.shape
        idx = torch.arange(k, device=sets.device)
        others = idx.expand(k, k)[idx[None, :] != idx[:, None]].view(k, k - 1)  # row i: every index but i
        smaller = sets[:, others].reshape(b * k, k - 1)
        ii = torch.arange(b, device=sets.device).repeat_interleave(k)
        err = self.objective.score(smaller, ii, maps=True)[1]
        chosen = torch.zeros_like(err, dtype=torch.bool).scatter_(1, smaller, True)
        inputs = ranker_inputs(None, err, err, chosen, self.grid.rows, self.grid.cols, self.static[ii])
        # image by image (each image's k sets in one call): the same result alone as in a batch
        return self._net(lambda: torch.cat([self.net(inputs[i * k : (i + 1) * k]) for i in range(b)]),
                         b * k).view(b, k, -1)
