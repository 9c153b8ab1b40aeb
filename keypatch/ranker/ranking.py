"""The ranker at work: every patch's score given each image's chosen set, for one objective."""

from __future__ import annotations

from collections.abc import Callable

import torch

from keypatch.objective import Objective
from keypatch.ranker.net import PatchRanker, ranker_inputs, static_inputs
from keypatch.reconstructors.precision import ieee_convolutions
from keypatch.threads import TUNER

GPU_GROUP = 64
"""Images per call of the ranker on a GPU. Every call holds exactly this many (the last group
padded with zeros), so an image's scores never depend on how many images ran beside it: a
convolution's bits may change with the batch size, not with an image's place in a batch of one
size. On a CPU the ranker runs image by image (its cost there is the call, not the launches)."""


def grouped(net: Callable[[torch.Tensor], torch.Tensor], inputs: torch.Tensor, per: int, group: int) -> torch.Tensor:
    """``net`` over ``inputs`` whose rows come ``per`` to an image, ``group`` images per call (the last
    call padded with zero rows to the same shape): the rows' scores, the same whatever the number of
    images."""
    rows = per * group
    out = []
    for s in range(0, inputs.shape[0], rows):
        part = inputs[s : s + rows]
        if part.shape[0] < rows:
            part = torch.cat([part, part.new_zeros(rows - part.shape[0], *part.shape[1:])])
        out.append(net(part)[: min(rows, inputs.shape[0] - s)])
    return torch.cat(out)


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
        return self._net(inputs, 1)

    def _net(self, inputs: torch.Tensor, per: int) -> torch.Tensor:
        """The ranker on ``inputs``, ``per`` rows to an image, so that an image's scores do not depend
        on the images beside it: image by image on a CPU (on the thread count
        :data:`~keypatch.threads.TUNER` chooses), :data:`GPU_GROUP` images per call elsewhere."""
        if self.objective.device.type != "cpu":
            with ieee_convolutions(self.objective.device):  # its float32 convolutions not in TF32
                return grouped(self.net, inputs, per, GPU_GROUP)
        return TUNER.run(lambda: grouped(self.net, inputs, per, 1), inputs.shape[0] // per, "ranker")

    def without_each(self, sets: torch.Tensor) -> torch.Tensor:
        """Where to move each chosen patch: ``sets (B, k)`` -> ``(B, k, N)``, row ``i`` the ranker's
        score of every patch as an addition to the set without its patch ``i`` (the question the
        ranker was fitted to answer). One MAE pass per patch of each set (``k`` per image, batched);
        the error maps' changes read as 0. Does not change :attr:`last`."""
        b, k = sets.shape
        j = torch.arange(k - 1, device=sets.device)
        others = j + (j[None, :] >= torch.arange(k, device=sets.device)[:, None]).long()  # row i: every index but i
        smaller = sets[:, others].reshape(b * k, k - 1)
        ii = torch.arange(b, device=sets.device).repeat_interleave(k)
        err = self.objective.score(smaller, ii, maps=True)[1]
        chosen = torch.zeros_like(err, dtype=torch.bool).scatter_(1, smaller, True)
        inputs = ranker_inputs(None, err, err, chosen, self.grid.rows, self.grid.cols, self.static[ii])
        # each image's k sets in one call (a group of images on a GPU): the same result alone as in a batch
        return self._net(inputs, k).view(b, k, -1)
