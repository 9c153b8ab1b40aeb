"""KPP: exact greedy search (eq. 2 of the paper), and the scoring helpers the faster strategies share."""

from __future__ import annotations

from abc import abstractmethod
from typing import NamedTuple

import torch

from keypatch.proposers.base import Proposer, image_seeds, register
from keypatch.reconstructors.mae import MAE, LossContext, autocast

DEFAULT_CHUNK = 64
"""Visible sets per MAE pass (about ``64 x 196`` decoder rows). On a 2-core AVX2 CPU the speed is
flat from 32 to 256 (``benchmarks/bench_chunk.py``, see benchmarks/README.md); 64 keeps memory small."""


STARTS = ("center", "none")
"""Where the greedy-like strategies begin: the central patch (the paper) or nothing (its ablation)."""


class SearchProposer(Proposer):
    """Base of the strategies that search with the MAE: the options they share, validated once.

    Parameters
    ----------
    start : {"center", "none"}
        Begin from the central patch (the paper's P0) or from the empty set (its ablation).
    chunk_size : int
        Visible sets per MAE pass (bounds memory).
    precision : {"float32", "bfloat16"}
        Compute precision of the MAE passes (float32 is exact).
    """

    options = {"start": str, "chunk_size": int, "precision": str}

    def __init__(self, start: str = "center", chunk_size: int = DEFAULT_CHUNK, precision: str = "float32") -> None:
        if start not in STARTS:
            raise ValueError(f"start must be 'center' or 'none', got {start!r}")
        if chunk_size < 1:
            raise ValueError(f"chunk_size must be positive, got {chunk_size}")
        autocast(torch.device("cpu"), precision)  # validates the precision
        self.start, self.chunk_size, self.precision = start, int(chunk_size), precision

    @property
    def score_options(self) -> dict:
        """``chunk_size`` and ``precision``, as :func:`score_sets` and friends take them."""
        return {"chunk_size": self.chunk_size, "precision": self.precision}

    @torch.no_grad()
    def select(self, model: MAE, images: torch.Tensor, k: int, seed: int):
        seeds = image_seeds(images, seed) if self.uses_seed else [int(seed)] * images.shape[0]
        return self.search(model, model.loss_context(images), k, seeds)

    @abstractmethod
    def search(self, model: MAE, ctx: LossContext, k: int,
               seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """:meth:`select` on the images behind ``ctx`` (from :meth:`MAE.loss_context`).

        ``seeds`` holds one seed per image (:func:`~keypatch.proposers.base.image_seeds`).
        Strategies that refine another's answer (``swap``) call it with the context they score
        with, so that it is computed once.
        """


def score_sets(model: MAE, ctx: LossContext, sets: torch.Tensor, image_index: torch.Tensor, *,
               chunk_size: int = DEFAULT_CHUNK, precision: str = "float32") -> torch.Tensor:
    """``L`` of many visible sets of the images behind ``ctx``, in memory-bounded batched passes.

    Parameters
    ----------
    ctx : LossContext
        From :meth:`MAE.loss_context` (computed once per batch of images, reused by every step).
    sets : torch.Tensor
        ``(M, k)`` long visible patch indices (distinct within a row; ``k`` may be 0).
    image_index : torch.Tensor
        ``(M,)`` long image of each set.
    chunk_size : int
        Sets per pass (bounds memory).
    precision : {"float32", "bfloat16"}
        Compute precision (the final loss is accumulated in float32).

    Returns
    -------
    torch.Tensor
        ``(M,)`` float32, on the model's device. No host synchronisation.
    """
    m = sets.shape[0]
    if m <= chunk_size:
        with autocast(sets.device, precision):
            return model.context_losses(ctx, sets, image_index)
    out = torch.empty(m, device=sets.device)
    with autocast(sets.device, precision):
        for s in range(0, m, chunk_size):
            out[s : s + chunk_size] = model.context_losses(ctx, sets[s : s + chunk_size],
                                                           image_index[s : s + chunk_size])
    return out


def greedy_step(model: MAE, ctx: LossContext, chosen: torch.Tensor, candidates: torch.Tensor, *,
                chunk_size: int = DEFAULT_CHUNK, precision: str = "float32") -> torch.Tensor:
    """Score every candidate of every image for one greedy step (images x candidates in one batch).

    Parameters
    ----------
    ctx : LossContext
        From :meth:`MAE.loss_context` for the ``B`` images.
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
    ii = torch.arange(b, device=sets.device).repeat_interleave(c)
    return score_sets(model, ctx, sets.reshape(b * c, -1), ii, chunk_size=chunk_size, precision=precision).view(b, c)


def remaining_count(remaining: torch.Tensor, count: int) -> torch.Tensor:
    """``(B, N)`` bool with ``count`` True entries per row -> ``(B, count)`` their indices, ascending.

    A sort instead of boolean indexing, so that it needs no host synchronisation on a GPU.
    """
    n = remaining.shape[1]
    key = (~remaining).long() * n + torch.arange(n, device=remaining.device)
    return key.sort(dim=1).values[:, :count]


def start_state(model: MAE, ctx: LossContext, b: int, start: str, *, chunk_size: int, precision: str):
    """The set every greedy-like strategy begins from.

    Returns ``(chosen (B, j0), losses (B, j0), remaining (B, N) bool, evaluations)``: the centre and
    ``L({centre})`` for ``start="center"``, nothing for ``start="none"``.
    """
    if start not in STARTS:
        raise ValueError(f"start must be 'center' or 'none', got {start!r}")
    n, dev = model.grid.n, model.device
    remaining = torch.ones(b, n, dtype=torch.bool, device=dev)
    if start == "none":
        return (torch.empty(b, 0, dtype=torch.long, device=dev), torch.empty(b, 0, device=dev), remaining, 0)
    chosen = torch.full((b, 1), model.grid.center, dtype=torch.long, device=dev)
    remaining[:, model.grid.center] = False
    first = score_sets(model, ctx, chosen, torch.arange(b, device=dev), chunk_size=chunk_size, precision=precision)
    return chosen, first[:, None], remaining, 1


class GainStart(NamedTuple):
    """Where the gain-based strategies (lazy, local) stand after their exhaustive first step.

    ``chosen (B, j0)`` and ``losses (B, j0)``: :func:`start_state`'s set and its ``L``;
    ``remaining (B, N)`` bool; ``evals (B,)`` long MAE evaluations per image so far; ``current (B,)``
    ``L`` of the start set (the empty set's is evaluated once for ``start="none"``); every remaining
    candidate ``cand (B, C)`` with its ``L(S + c)`` in ``scores (B, C)``.
    """

    chosen: torch.Tensor
    losses: torch.Tensor
    remaining: torch.Tensor
    evals: torch.Tensor
    current: torch.Tensor
    cand: torch.Tensor
    scores: torch.Tensor


def gain_start(model: MAE, ctx: LossContext, b: int, start: str, k: int, *, chunk_size: int,
               precision: str) -> GainStart | tuple[torch.Tensor, torch.Tensor, list[int]]:
    """The start and the first, exhaustive step shared by the gain-based strategies (lazy, local).

    Returns a :class:`GainStart`, or, when the start set already has ``k`` patches, the finished
    ``(patches, losses, evaluations)`` (nothing more is evaluated).
    """
    opts = {"chunk_size": chunk_size, "precision": precision}
    chosen, losses, remaining, first = start_state(model, ctx, b, start, **opts)
    evals = torch.full((b,), first, dtype=torch.long, device=model.device)
    j0 = chosen.shape[1]
    if j0 >= k:
        return chosen[:, :k], losses[:, :k], evals.tolist()
    if j0:
        current = losses[:, -1].clone()
    else:  # L(empty set): the reference for the first gains
        current = score_sets(model, ctx, chosen, torch.arange(b, device=model.device), **opts)
        evals += 1
    cand = remaining_count(remaining, model.grid.n - j0)
    scores = greedy_step(model, ctx, chosen, cand, **opts)
    evals += cand.shape[1]
    return GainStart(chosen, losses, remaining, evals, current, cand, scores)


class GainSearchProposer(SearchProposer):
    """Base of the strategies that score every candidate once, then re-score a few per step."""

    @torch.no_grad()
    def search(self, model: MAE, ctx: LossContext, k: int, seeds: list[int]):
        state = gain_start(model, ctx, ctx.tokens.shape[0], self.start, k, **self.score_options)
        return self.extend(model, ctx, k, state) if isinstance(state, GainStart) else state

    @abstractmethod
    def extend(self, model: MAE, ctx: LossContext, k: int,
               state: GainStart) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """The search after the exhaustive first step (``state``), up to ``k`` patches."""


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
    precision : {"float32", "bfloat16"}
        float32 is exact; bfloat16 is faster on GPUs and bf16-capable CPUs but can change picks
        (on CPUs without native bf16, e.g. AVX2-only, it is several times *slower*).

    Notes
    -----
    Ties go to the lowest patch index. Every step scores all remaining candidates of all images
    in memory-bounded batched passes through :meth:`MAE.context_losses` (no predicted pixels are
    materialised; per-image and mask-token constants are computed once per call), and needs no
    host synchronisation: the argmin and the bookkeeping stay on the device.
    """

    name = "greedy"
    prefix_consistent = True

    @torch.no_grad()
    def search(self, model: MAE, ctx: LossContext, k: int, seeds: list[int]):
        b, n, dev = ctx.tokens.shape[0], model.grid.n, model.device
        opts = self.score_options
        chosen, losses, remaining, evals = start_state(model, ctx, b, self.start, **opts)
        picks, step_losses = [chosen], [losses]
        ar = torch.arange(b, device=dev)
        for j in range(chosen.shape[1], k):
            # candidates in ascending index order, so argmin's first hit is the lowest index
            cand = remaining_count(remaining, n - j)
            scores = greedy_step(model, ctx, torch.cat(picks, dim=1), cand, **opts)
            evals += n - j
            best = scores.argmin(dim=1)
            pick = cand[ar, best]
            picks.append(pick[:, None])
            step_losses.append(scores[ar, best][:, None])
            remaining[ar, pick] = False
        return torch.cat(picks, dim=1), torch.cat(step_losses, dim=1), [evals] * b
