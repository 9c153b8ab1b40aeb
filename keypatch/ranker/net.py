"""The patch ranker's network and what it reads: a small convolutional net over the patch grid.

Per patch it reads the current reconstruction error (one MAE pass from the chosen set), how it
changed at the last step, whether the patch is chosen, its pixel variance, how much it differs from
its four neighbours and its distance from the centre (:func:`ranker_inputs`), and scores how likely
exact greedy is to add the patch next.
"""

from __future__ import annotations

import torch
from torch import nn

CHANNELS = 11
"""Inputs per grid cell (:func:`ranker_inputs`)."""


def ranker_inputs(targets: torch.Tensor | None, err: torch.Tensor, prev_err: torch.Tensor, chosen: torch.Tensor,
                  rows: int, cols: int, static: torch.Tensor | None = None) -> torch.Tensor:
    """The ranker's input grid for each image.

    Parameters
    ----------
    targets : torch.Tensor or None
        ``(B, N, D)`` the patches in the MAE's normalised pixel space (None when ``static`` is given).
    err, prev_err : torch.Tensor
        ``(B, N)`` each patch's squared error when rebuilt from the current chosen set, and from
        the set one step before (``err`` again at the first step).
    chosen : torch.Tensor
        ``(B, N)`` bool, the chosen patches.
    rows, cols : int
        The patch grid.
    static : torch.Tensor, optional
        :func:`static_inputs` of ``targets`` when already computed (they do not change with the set).

    Returns
    -------
    torch.Tensor
        ``(B, 11, rows, cols)`` float32: log pixel variance; log mean squared difference to the
        right, lower, left and upper neighbour (0 off the grid); Chebyshev distance from the
        centre in [0, 1]; chosen; error over the mean masked error (clipped at 20) and its log;
        the drop of that error since the last step; 0.1 x log of the mean masked error.
    """
    b, n = err.shape
    if static is None:
        if targets is None:
            raise ValueError("ranker_inputs needs the targets or their static inputs")
        static = static_inputs(targets, rows, cols)
    e = err.float().masked_fill(chosen, 0)
    mean = (e.sum(1) / (~chosen).sum(1).clamp(min=1)).clamp(min=1e-6)
    rel = e / mean[:, None]
    drop = ((prev_err.float() - err.float()) / mean[:, None]).masked_fill(chosen, 0)
    dynamic = [chosen.float(), rel.clamp(max=20), torch.log(rel + 1e-3).masked_fill(chosen, 0),
               drop.clamp(-20, 20), 0.1 * torch.log(mean)[:, None].expand(b, n)]
    return torch.cat([static, torch.stack(dynamic, 1).view(b, len(dynamic), rows, cols)], 1)


def static_inputs(targets: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """The first 6 channels of :func:`ranker_inputs`, which depend on the image only: ``(B, 6, rows, cols)``."""
    b, n, d = targets.shape
    t = targets.float()
    x = t.view(b, rows, cols, d)
    dev = t.device
    out = [torch.log(t.var(-1).view(b, rows, cols) + 1e-3)]
    for dy, dx in ((0, 1), (1, 0), (0, -1), (-1, 0)):
        diff = (x - torch.roll(x, shifts=(-dy, -dx), dims=(1, 2))).pow(2).mean(-1)
        valid = torch.ones(rows, cols, device=dev)  # 0 where the neighbour is off the grid
        if dx:
            valid[:, -1 if dx > 0 else 0] = 0
        if dy:
            valid[-1 if dy > 0 else 0, :] = 0
        out.append(torch.log(diff + 1e-3) * valid)
    yy = torch.linspace(-1, 1, rows, device=dev)[:, None].abs()
    xx = torch.linspace(-1, 1, cols, device=dev)[None, :].abs()
    out.append(torch.maximum(yy, xx).expand(b, rows, cols))
    return torch.stack(out, 1)


class PatchRanker(nn.Module):
    """A small fully convolutional net: :func:`ranker_inputs` ``(B, 11, R, C)`` -> a score per patch ``(B, R*C)``.

    Larger scores are ranked first. Any grid size works (3x3 convolutions, then a 1x1).
    """

    def __init__(self, width: int = 32, depth: int = 4) -> None:
        super().__init__()
        layers: list[nn.Module] = [nn.Conv2d(CHANNELS, width, 3, padding=1), nn.ReLU()]
        for _ in range(depth - 1):
            layers += [nn.Conv2d(width, width, 3, padding=1), nn.ReLU()]
        layers.append(nn.Conv2d(width, 1, 1))
        self.net = nn.Sequential(*layers)
        self.width, self.depth = width, depth

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        return self.net(inputs).flatten(1)



FLIPS = ([0, 3, 2, 1, 4], [0, 1, 4, 3, 2], [0, 2, 1, 4, 3])
"""The order of the first five input channels (variance; right, lower, left, upper neighbour) after
a flip of the columns, of the rows, and a transpose of the grid: the augmentation of the fit."""
