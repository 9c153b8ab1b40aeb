"""KPP: exact greedy search (eq. 2 of the paper)."""

from __future__ import annotations

import torch

from keypatch.proposers.base import Proposer, register
from keypatch.reconstructors.mae import MAE


def greedy_step(model: MAE, tokens: torch.Tensor, target: torch.Tensor, chosen: torch.Tensor,
                candidates: torch.Tensor, *, chunk_size: int, precision: str) -> torch.Tensor:
    """Score every candidate of every image for one greedy step.

    Parameters
    ----------
    tokens, target : torch.Tensor
        ``(B, N, D)`` embedded patches and ``(B, N, P)`` normalised pixels per patch.
    chosen : torch.Tensor
        ``(B, j)`` patches chosen so far (``j`` may be 0).
    candidates : torch.Tensor
        ``(B, C)`` candidate patches per image (same count for every image).

    Returns
    -------
    torch.Tensor
        ``(B, C)`` float32 ``L(chosen + candidate)``.
    """
    b, c = candidates.shape
    sets = torch.cat([chosen[:, None, :].expand(b, c, chosen.shape[1]), candidates[..., None]], dim=2)
    sets = sets.reshape(b * c, -1)
    ii = torch.arange(b, device=sets.device).repeat_interleave(c)
    out = torch.empty(b * c, device=sets.device)
    from keypatch.reconstructors.mae import autocast

    with autocast(sets.device, precision):
        for s in range(0, b * c, chunk_size):
            v, i = sets[s : s + chunk_size], ii[s : s + chunk_size]
            out[s : s + chunk_size] = model.masked_mse(model.predict_tokens(tokens, v, i), target[i], v)
    return out.view(b, c)


@register
class Greedy(Proposer):
    """Key Patch Proposer: add, one at a time, the patch whose addition gives the lowest ``L``.

    Parameters
    ----------
    start : {"center", "none"}
        ``"center"``: begin with the central patch (the paper's P0); ``"none"``: choose the first
        patch greedily too (the paper's ablation, better below r = 0.1).
    chunk_size : int
        Visible sets per MAE pass (bounds memory; all images x candidates of a step are batched).
    precision : {"float32", "bfloat16"}
        float32 is exact; bfloat16 is faster on GPUs and bf16-capable CPUs but can change picks.

    Notes
    -----
    Ties go to the lowest patch index. Each step costs one host sync (the argmin).
    """

    name = "greedy"

    def __init__(self, start: str = "center", chunk_size: int = 256, precision: str = "float32") -> None:
        if start not in ("center", "none"):
            raise ValueError(f"start must be 'center' or 'none', got {start!r}")
        self.start = start
        self.chunk_size = chunk_size
        self.precision = precision

    @torch.no_grad()
    def select(self, model: MAE, images: torch.Tensor, k: int, seed: int):
        b, n, dev = images.shape[0], model.grid.n, model.device
        tokens, target = model.embed(images), model.targets(images)
        chosen = torch.empty(b, 0, dtype=torch.long, device=dev)
        losses = torch.empty(b, 0, device=dev)
        remaining = torch.ones(b, n, dtype=torch.bool, device=dev)
        evals = 0
        if self.start == "center":
            chosen = torch.full((b, 1), model.grid.center, dtype=torch.long, device=dev)
            remaining[:, model.grid.center] = False
            first = greedy_step(model, tokens, target, chosen[:, :0], chosen, chunk_size=self.chunk_size,
                                precision=self.precision)
            losses = first
            evals += 1
        ar = torch.arange(b, device=dev)
        while chosen.shape[1] < k:
            # candidates in ascending index order, so argmin's first hit is the lowest index
            cand = torch.arange(n, device=dev).expand(b, n)[remaining].view(b, -1)
            scores = greedy_step(model, tokens, target, chosen, cand, chunk_size=self.chunk_size,
                                 precision=self.precision)
            evals += cand.shape[1]
            best = scores.argmin(dim=1)
            pick = cand[ar, best]
            chosen = torch.cat([chosen, pick[:, None]], dim=1)
            losses = torch.cat([losses, scores[ar, best][:, None]], dim=1)
            remaining[ar, pick] = False
        return chosen, losses, [evals] * b
