"""The bases of the strategies that search over the KPP objective, and the steps they share.

A search strategy subclasses :class:`SearchProposer` and implements ``search(objective, k, seeds)``:
it only chooses sets to score; :class:`~keypatch.objective.Objective` evaluates them and counts
the evaluations.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import NamedTuple

import torch

from keypatch.objective import DEFAULT_CHUNK, Objective
from keypatch.proposers.base import Proposer, image_seeds
from keypatch.reconstructors.mae import MAE
from keypatch.reconstructors.precision import DEFAULT_PRECISION, check_precision

STARTS = ("center", "none")
"""Where the greedy-like strategies begin: the central patch (the paper) or nothing (its ablation)."""


class SearchProposer(Proposer):
    """Base of the strategies that search with the MAE: the options they share, validated once.

    Parameters
    ----------
    start : {"center", "none"}
        Begin from the central patch (the paper's P0) or from the empty set (its ablation).
    chunk_size : int
        Visible sets per MAE pass (bounds memory); 0 (the default) sizes it for the device.
    precision : {"auto", "float32", "mixed", "bfloat16"}
        Compute precision of the MAE passes (:mod:`keypatch.reconstructors.precision`): float32
        and mixed pick alike; ``"auto"`` is mixed where bfloat16 is native, else float32.
    """

    options = {"start": str, "chunk_size": int, "precision": str}

    def __init__(self, start: str = "center", chunk_size: int = DEFAULT_CHUNK,
                 precision: str = DEFAULT_PRECISION) -> None:
        if start not in STARTS:
            raise ValueError(f"start must be 'center' or 'none', got {start!r}")
        if chunk_size < 0:
            raise ValueError(f"chunk_size must be positive (or 0: sized for the device), got {chunk_size}")
        self.start, self.chunk_size, self.precision = start, int(chunk_size), check_precision(precision)

    def objective(self, model: MAE, images: torch.Tensor) -> Objective:
        """The objective this strategy scores ``images`` with (its ``chunk_size`` and ``precision``)."""
        return Objective(model, images, chunk_size=self.chunk_size, precision=self.precision)

    @torch.no_grad()
    def select(self, model: MAE, images: torch.Tensor, k: int, seed: int):
        seeds = image_seeds(images, seed) if self.uses_seed else [int(seed)] * images.shape[0]
        objective = self.objective(model, images)
        patches, losses = self.search(objective, k, seeds)
        return patches, losses, objective.evaluations.tolist()

    @abstractmethod
    def search(self, objective: Objective, k: int, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` patches for each image behind ``objective``.

        ``seeds`` holds one seed per image (:func:`~keypatch.proposers.base.image_seeds`).
        Returns ``patches (B, k)`` long in order of choice and ``losses (B, k)`` float, ``L`` after
        each addition or NaN where the strategy did not compute it. Strategies that refine
        another's answer (``swap``) call it with the objective they score with.
        """


def remaining_count(remaining: torch.Tensor, count: int) -> torch.Tensor:
    """``(B, N)`` bool with ``count`` True entries per row -> ``(B, count)`` their indices, ascending.

    A sort instead of boolean indexing, so that it needs no host synchronisation on a GPU.
    """
    n = remaining.shape[1]
    key = (~remaining).long() * n + torch.arange(n, device=remaining.device)
    return key.sort(dim=1).values[:, :count]


class StartState(NamedTuple):
    """The set a greedy-like search begins from: ``chosen (B, j0)``, ``losses (B, j0)``, ``remaining (B, N)`` bool."""

    chosen: torch.Tensor
    losses: torch.Tensor
    remaining: torch.Tensor


def start_state(objective: Objective, start: str) -> StartState:
    """The centre and ``L({centre})`` for ``start="center"``; nothing for ``start="none"``."""
    b, grid, dev = objective.batch, objective.grid, objective.device
    remaining = torch.ones(b, grid.n, dtype=torch.bool, device=dev)
    if start == "none":
        return StartState(torch.empty(b, 0, dtype=torch.long, device=dev), torch.empty(b, 0, device=dev), remaining)
    chosen = torch.full((b, 1), grid.center, dtype=torch.long, device=dev)
    remaining[:, grid.center] = False
    return StartState(chosen, objective.score_each(chosen)[:, None], remaining)


class GainStart(NamedTuple):
    """Where the gain-based strategies (lazy, local) stand after their exhaustive first step.

    ``chosen (B, j0)``, ``losses (B, j0)`` and ``remaining (B, N)`` as in :class:`StartState`;
    ``current (B,)`` ``L`` of the start set (the empty set's is evaluated once for
    ``start="none"``); every remaining candidate ``cand (B, C)`` with its ``L(S + c)`` in
    ``scores (B, C)``.
    """

    chosen: torch.Tensor
    losses: torch.Tensor
    remaining: torch.Tensor
    current: torch.Tensor
    cand: torch.Tensor
    scores: torch.Tensor


class GainSearchProposer(SearchProposer):
    """Base of the strategies that score every candidate once, then re-score a few per step.

    The gains are measured from ``L`` of the start set; with ``start="none"`` the empty set's ``L``
    is evaluated once for them.
    """

    @torch.no_grad()
    def search(self, objective: Objective, k: int, seeds: list[int]):
        chosen, losses, remaining = start_state(objective, self.start)
        j0 = chosen.shape[1]
        if j0 >= k:
            return chosen[:, :k], losses[:, :k]
        # L of the start set: the reference for the first gains (the empty set's is evaluated once)
        current = losses[:, -1].clone() if j0 else objective.score_each(chosen)
        cand = remaining_count(remaining, objective.grid.n - j0)
        scores = objective.step(chosen, cand)
        return self.extend(objective, k, GainStart(chosen, losses, remaining, current, cand, scores))

    @abstractmethod
    def extend(self, objective: Objective, k: int, state: GainStart) -> tuple[torch.Tensor, torch.Tensor]:
        """The search after the exhaustive first step (``state``), up to ``k`` patches."""
