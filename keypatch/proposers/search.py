"""The bases of the strategies that search over the KPP objective, and the steps they share.

A search strategy subclasses :class:`SearchProposer` and implements ``search(objective, k, seeds)``:
it only chooses sets to score; :class:`~keypatch.objective.Objective` evaluates them and counts
the evaluations.
"""

from __future__ import annotations

import contextlib
import logging
import math
from abc import abstractmethod
from typing import Any, NamedTuple

import torch

from keypatch.geometry import PatchGrid
from keypatch.geometry.grid import OutsideGridError
from keypatch.objective import DEFAULT_CHUNK, Objective, Step, remaining_count
from keypatch.proposers.base import Proposer, image_seeds
from keypatch.reconstructors.mae import MAE
from keypatch.reconstructors.precision import DEFAULT_PRECISION, check_precision
from keypatch.threads import TUNER

log = logging.getLogger("keypatch.precision")

STARTS = ("center", "none")
"""Where the greedy-like strategies begin, by name: the central patch (the paper) or nothing (its
ablation). A patch index (``98``, the KPP authors' code) or ``(row, col)`` is accepted too
(:func:`parse_start`)."""

REFERENCE_START = 98
"""The KPP authors' code's first patch: row 7, column 0 of the 14x14 grid (the left end of the
middle row), not the centre (105) that the paper's text describes."""


def parse_start(start: Any) -> str:
    """``start`` in its canonical text: ``"center"``, ``"none"``, a patch index (``"98"``) or ``"row,col"``.

    Accepts those names (``"centre"`` too), an int, a digit string, a ``(row, col)`` pair or its
    text ``"7,0"``. Whether an index lies on the grid is checked with the grid
    (:func:`start_patch`). A ValueError names the value otherwise.
    """
    if isinstance(start, str):
        text = start.strip().lower().replace(" ", "")
        if text in ("center", "centre"):
            return "center"
        if text == "none":
            return "none"
        parts = text.split(",")
        if 1 <= len(parts) <= 2 and all(p.isdigit() for p in parts):
            return ",".join(str(int(p)) for p in parts)
    elif isinstance(start, int) and not isinstance(start, bool) and start >= 0:
        return str(start)
    elif isinstance(start, (tuple, list)) and len(start) == 2 and all(
            isinstance(v, int) and not isinstance(v, bool) and v >= 0 for v in start):
        return f"{start[0]},{start[1]}"
    raise ValueError(f"start must be 'center', 'none', a patch index (e.g. {REFERENCE_START}) or 'row,col' "
                     f"(e.g. '7,0'), got {start!r}")


def start_patch(start: str, grid: PatchGrid) -> int | None:
    """The first patch of canonical ``start`` (:func:`parse_start`) on ``grid``; None for ``"none"``.

    Raises :class:`~keypatch.geometry.grid.OutsideGridError` (an IndexError and a ValueError) naming
    the grid for a patch outside it.
    """
    if start == "none":
        return None
    if start == "center":
        return grid.center
    if "," in start:
        row, col = (int(v) for v in start.split(","))
        return grid.index(row, col)
    index = int(start)
    if index >= grid.n:
        raise OutsideGridError(f"start patch {index} is outside a grid of {grid.n} patches (0-{grid.n - 1})")
    return index


class SearchProposer(Proposer):
    """Base of the strategies that search with the MAE: the options they share, validated once.

    Parameters
    ----------
    start : {"center", "none"}, int or (row, col)
        Begin from the central patch (the paper's P0), from the empty set (its ablation) or from
        a given patch (98 in the KPP authors' code; :func:`parse_start`).
    chunk_size : int
        Visible sets per MAE pass (bounds memory); 0 (the default) sizes it for the device.
    precision : {"auto", "float32", "mixed", "bfloat16"}
        Compute precision of the MAE passes (:mod:`keypatch.reconstructors.precision`): float32
        and mixed pick alike; ``"auto"`` is mixed where bfloat16 is native, else float32.
    """

    options = {"start": (str, int, tuple, list), "chunk_size": int, "precision": str}

    def __init__(self, start: str = "center", chunk_size: int = DEFAULT_CHUNK,
                 precision: str = DEFAULT_PRECISION) -> None:
        if chunk_size < 0:
            raise ValueError(f"chunk_size must be positive (or 0: sized for the device), got {chunk_size}")
        self.start, self.chunk_size, self.precision = parse_start(start), int(chunk_size), check_precision(precision)

    def objective(self, model: MAE, images: torch.Tensor) -> Objective:
        """The objective this strategy scores ``images`` with (its ``chunk_size`` and ``precision``)."""
        return Objective(model, images, chunk_size=self.chunk_size, precision=self.precision)

    @torch.no_grad()
    def select(self, model: MAE, images: torch.Tensor, k: int, seed: int, begin: torch.Tensor | None = None):
        """As :meth:`Proposer.select`; ``begin`` ``(B, j0)`` long: patches each image already has
        (distinct, ``j0 <= k``), from which the search continues (the start rule unused); the answer
        begins with them and keeps them (the refinements of ``ranked``, ``screened`` and ``swap``
        move only the patches added), their losses NaN but ``L`` of the whole ``begin`` set."""
        seeds = image_seeds(images, seed) if self.uses_seed else [int(seed)] * images.shape[0]
        objective = self.objective(model, images)
        if begin is not None and not self.takes_begin:
            raise ValueError(f"strategy {self.name!r} cannot continue from given patches (takes_begin is false)")
        if begin is not None:
            objective.begin = check_begin(begin, images.shape[0], k, objective.grid.n, objective.device)
        with TUNER.hold() if objective.device.type == "cpu" else contextlib.nullcontext():
            patches, losses = self.search(objective, k, seeds)
        if objective.precision == "mixed" and log.isEnabledFor(logging.INFO):  # -v
            first = begin.shape[1] if begin is not None else int(start_patch(self.start, model.grid) is not None)
            steps = images.shape[0] * max(1, k - first)  # greedy steps after the first patch, as the benchmarks count
            log.info("%s, mixed precision: %.1f float32 re-scores per image and step, moves included (%d of %d sets "
                     "scored), the margin widened %d times, largest relative bfloat16 error %.1e", self.name,
                     objective.refined / steps, objective.refined, int(objective.evaluations.sum()),
                     objective.widened, float(objective.relative_error.max()))
        return patches, losses, objective.evaluations.tolist()

    @abstractmethod
    def search(self, objective: Objective, k: int, seeds: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """``k`` patches for each image behind ``objective``.

        ``seeds`` holds one seed per image (:func:`~keypatch.proposers.base.image_seeds`).
        Returns ``patches (B, k)`` long in order of choice and ``losses (B, k)`` float, ``L`` after
        each addition or NaN where the strategy did not compute it. Strategies that refine
        another's answer (``swap``) call it with the objective they score with.
        """


def screened_step(objective: Objective, sets: torch.Tensor, key: torch.Tensor, count: int,
                  remaining: torch.Tensor, errors: bool = False) -> Step:
    """One step of a screened greedy: :meth:`Objective.step` over the ``count`` remaining candidates
    with the lowest integer ``key (B, N)`` (ranks, offset by tier).

    ``remaining`` is updated in place. Ties go to the lowest patch index. With ``errors``, the
    step gives the new set's error map where that is free (:meth:`Objective.step`'s ``maps``), so
    that the next step may read it instead of computing it.
    """
    last = torch.iinfo(key.dtype).max  # chosen patches after every remaining one
    cand = key.masked_fill(~remaining, last).topk(count, dim=1, largest=False).indices.sort(dim=1).values
    step = objective.step(sets, cand, maps=errors)
    remaining[torch.arange(sets.shape[0], device=sets.device), step.pick] = False
    return step


class StartState(NamedTuple):
    """The set a greedy-like search begins from: ``chosen (B, j0)``, ``losses (B, j0)``, ``remaining (B, N)`` bool."""

    chosen: torch.Tensor
    losses: torch.Tensor
    remaining: torch.Tensor


def check_begin(begin: torch.Tensor, b: int, k: int, n: int, device: torch.device) -> torch.Tensor:
    """``begin`` as a ``(b, j0)`` long tensor on ``device`` of distinct patches below ``n``, ``j0 <= k``;
    a ValueError saying what is wrong otherwise."""
    begin = torch.as_tensor(begin).to(device)
    if begin.dim() != 2 or begin.shape[0] != b or begin.dtype in (torch.bool,) or begin.is_floating_point():
        raise ValueError(f"begin must be ({b}, j) integer patch indices, got shape {tuple(begin.shape)} "
                         f"of {begin.dtype}")
    if begin.shape[1] > k:
        raise ValueError(f"begin holds {begin.shape[1]} patches per image, more than the {k} asked for")
    if begin.numel() and (int(begin.min()) < 0 or int(begin.max()) >= n):
        raise ValueError(f"begin holds a patch outside the grid of {n} patches")
    if begin.shape[1] > 1 and bool((begin.sort(dim=1).values.diff(dim=1) == 0).any()):
        raise ValueError("begin holds a patch twice in one image")
    return begin.long()


def begun(objective: Objective) -> int:
    """How many patches each image of ``objective`` began with (``begin``'s width; 0 without)."""
    return 0 if objective.begin is None else objective.begin.shape[1]


def start_state(objective: Objective, start: str) -> StartState:
    """The start patch and its ``L`` (the centre for ``start="center"``); nothing for ``start="none"``.
    Where ``objective.begin`` is set, those patches instead (losses NaN but the last, ``L`` of the set)."""
    b, grid, dev = objective.batch, objective.grid, objective.device
    remaining = torch.ones(b, grid.n, dtype=torch.bool, device=dev)
    if objective.begin is not None:
        chosen = objective.begin
        losses = torch.full(chosen.shape, math.nan, device=dev)
        if chosen.shape[1]:
            remaining.scatter_(1, chosen, False)
            losses[:, -1] = objective.score(chosen)
        return StartState(chosen, losses, remaining)
    first = start_patch(start, grid)
    if first is None:
        return StartState(torch.empty(b, 0, dtype=torch.long, device=dev), torch.empty(b, 0, device=dev), remaining)
    chosen = torch.full((b, 1), first, dtype=torch.long, device=dev)
    remaining[:, first] = False
    return StartState(chosen, objective.score(chosen)[:, None], remaining)


class GainStart(NamedTuple):
    """Where the gain-based strategies (lazy, local) stand after their exhaustive first step.

    ``chosen (B, j0)``, ``losses (B, j0)`` and ``remaining (B, N)`` as in :class:`StartState`;
    ``current (B,)`` ``L`` of the start set (the empty set's is evaluated once for
    ``start="none"``); ``first`` the exhaustive step (:meth:`Objective.step` over every remaining
    candidate: its ``cand``, ``scores``, ``pick`` and ``loss``).
    """

    chosen: torch.Tensor
    losses: torch.Tensor
    remaining: torch.Tensor
    current: torch.Tensor
    first: Step


class GainSearchProposer(SearchProposer):
    """Base of the strategies that score every candidate once, then re-score a few per step.

    The gains are measured from ``L`` of the start set; with ``start="none"`` the empty set's ``L``
    is evaluated once for them.
    """

    takes_begin = True  # they begin from start_state, which reads Objective.begin

    @torch.no_grad()
    def search(self, objective: Objective, k: int, seeds: list[int]):
        chosen, losses, remaining = start_state(objective, self.start)
        j0 = chosen.shape[1]
        if j0 >= k:
            return chosen[:, :k], losses[:, :k]
        # L of the start set: the reference for the first gains (the empty set's is evaluated once)
        current = losses[:, -1].clone().float() if j0 else objective.score(chosen)
        cand = remaining_count(remaining, objective.grid.n - j0)
        return self.extend(objective, k, GainStart(chosen, losses, remaining, current, objective.step(chosen, cand)))

    @abstractmethod
    def extend(self, objective: Objective, k: int, state: GainStart) -> tuple[torch.Tensor, torch.Tensor]:
        """The search after the exhaustive first step (``state``), up to ``k`` patches."""
