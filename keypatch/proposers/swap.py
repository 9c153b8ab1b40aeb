"""Swap refinement: a fast base answer, then local search that moves patches to better neighbours.

Greedy builds the set one patch at a time and never revisits a choice; with the KPP loss, which
is far from submodular, early picks are often not where the final set wants them. ``swap`` runs a
base strategy and then, for each chosen patch in turn, scores moving it to every free patch
within ``reach`` on the grid (``S - p + q``) and keeps the best move if it lowers ``L``
(first-improvement 1-swap local search, restricted to grid neighbours). Every move lowers ``L``,
so the result is never worse than the base answer, and after a round without any move it is a
local optimum: no single neighbour move improves it.

The default, stochastic greedy (``eps=0.2``) and two rounds, is the fast recipe: its final ``L``
ends below exact greedy's with several times fewer MAE evaluations; ``base="greedy", rounds=1``
refines exact greedy itself for a few percent more evaluations (measured in ``docs/results.md``).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from keypatch.objective import DEFAULT_CHUNK, Objective, ranks, remaining_count
from keypatch.proposers.base import get_proposer, register
from keypatch.proposers.search import SearchProposer, begun
from keypatch.reconstructors.precision import DEFAULT_PRECISION

BASES = ("greedy", "local", "lazy", "stochastic", "multi", "screened")
"""Strategies ``swap`` can refine (they share ``start``, ``chunk_size`` and ``precision``)."""

BASE_DEFAULTS = {"stochastic": {"eps": 0.2}}
"""Base options that differ from the base strategy's own defaults unless given."""


@register
class SwapRefine(SearchProposer):
    """A base strategy's patches, refined by moving each one to its best free neighbour.

    Parameters
    ----------
    base : str
        Registered strategy that makes the first set, one of :data:`BASES`.
    rounds : int
        Passes over the chosen patches (0: the base answer unchanged). Stops early once a pass
        moves nothing for any image.
    reach : int
        Chebyshev radius, in patches, of the moves tried for each patch (1: its 8 neighbours).
    start : {"center", "none"}
        Passed to the base strategy. The refinement may move the central patch too.
    chunk_size, precision
        As for ``greedy`` (used by the base and by the refinement).
    **base_options
        Further options of the base strategy (e.g. ``eps`` for ``stochastic``, default 0.2 here;
        ``top`` for ``local``).

    Notes
    -----
    A moved patch keeps its place in the order of choice. Only the final ``L`` is known (the
    losses of shorter prefixes are reported as NaN; the public API recomputes them).
    ``evaluations`` counts the base's and the refinement's scored sets. Ties go to the lowest
    patch index; a move is kept only if it lowers ``L`` strictly, so the result is deterministic.
    """

    name = "swap"
    takes_begin = True
    start_rule = "moves"
    options = {"base": str, "rounds": int, "reach": int, **SearchProposer.options}
    options_pass_through = True  # the base strategy's own options; the base checks them

    def __init__(self, base: str = "stochastic", rounds: int = 2, reach: int = 1, start: str = "center",
                 chunk_size: int = DEFAULT_CHUNK, precision: str = DEFAULT_PRECISION, **base_options) -> None:
        if base not in BASES:
            raise ValueError(f"base must be one of {', '.join(BASES)}, got {base!r}")
        if rounds < 0 or reach < 1:
            raise ValueError(f"rounds must be >= 0 and reach >= 1, got rounds={rounds}, reach={reach}")
        super().__init__(start, chunk_size, precision)
        base_options = {**BASE_DEFAULTS.get(base, {}), **base_options}
        try:
            self.base = get_proposer(base, start=start, chunk_size=chunk_size, precision=precision, **base_options)
        except ValueError as exc:
            raise ValueError(str(exc).replace(f"strategy {base!r}", f"strategy 'swap' (base {base!r})")) from None
        self.rounds, self.reach = int(rounds), int(reach)

    @property
    def uses_seed(self) -> bool:  # type: ignore[override]
        """As the base strategy."""
        return self.base.uses_seed

    def settings(self) -> dict:
        """``base``, ``rounds``, ``reach`` and the base strategy's settings; a base setting of the same
        name as one of swap's own (``screened``'s ``rounds`` and ``reach``) as ``base_NAME``."""
        own = {"base": self.base.name, "rounds": self.rounds, "reach": self.reach}
        return {**own, **{(f"base_{k}" if k in own else k): v for k, v in self.base.settings().items()}}

    @torch.no_grad()
    def search(self, objective: Objective, k: int, seeds: list[int]):
        patches, losses = self.base.search(objective, k, seeds)
        n, dev = objective.grid.n, objective.device
        if self.rounds == 0 or k >= n:
            return patches, losses
        current = losses[:, -1].to(dev, torch.float32)
        if bool(current.isnan().any()):  # the base did not score its whole set
            current = objective.score(patches)
        return refine(objective, patches, current, self.rounds, self.reach, fixed=begun(objective))


def refine(objective: Objective, patches: torch.Tensor, current: torch.Tensor, rounds: int,
           reach: int = 1, rank: Callable[[torch.Tensor], torch.Tensor] | None = None,
           moves: int = 0, fixed: int = 0, within: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Move each patch of ``patches (B, k)`` to its best free neighbour within ``reach`` where that
    lowers ``L`` (``current (B,)`` is ``L(patches)``), ``rounds`` passes over the patches; an image
    whose last pass moved nothing is done. Returns the patches (moved in place of the originals)
    and ``(B, k)`` losses, NaN but the last (``L`` of the whole set).

    With ``rank`` and ``moves > 0``, each patch tries only the ``moves`` free neighbours that
    ``rank`` scores highest. ``rank`` is called once, on the set before the first pass:
    ``patches (B, k)`` -> scores ``(B, k, N)``, larger first, row ``i`` for the moves of patch ``i``.
    The scores are kept for later passes (a row that depends only on the other patches, as
    :meth:`~keypatch.ranker.Ranking.without_each`'s, stays right for the patch wherever
    it moved).

    A patch is tried again only when its image's set changed since its last try (a move of any
    patch, its own included): the same set would try the same moves with the same result. So an
    image whose pass moved nothing is done, and a later pass skips the patches that no move
    followed. With ``within > 0`` a patch is tried again only when a move since its last try left
    from or landed within Chebyshev distance ``within`` of it (its own move included): the moves of
    a patch far from every change are assumed to score as before (fewer sets; not a local optimum
    in the strict sense). The first ``fixed`` patches stay (those an image began with,
    ``objective.begin``).

    Host synchronisations: one per round (whether any image moved); in the first round with ``rank``,
    none per patch in float32 (every image's ``moves`` sets are scored as they lie, a slot without a
    free destination scoring the set itself), one with ``"mixed"`` (the float32 re-scores of
    :meth:`Objective.score`'s ``below``); otherwise one more per patch, to score only the images
    whose patch may move."""
    (b, k), n, dev = patches.shape, objective.grid.n, objective.device
    patches = patches.clone()
    dist = objective.grid.distances(dev)
    near = (dist > 0) & (dist <= reach)  # (N, N) the moves of each patch
    score = rank(patches) if rank is not None and moves > 0 and rounds > 0 else None
    version = torch.zeros(b, dtype=torch.long, device=dev)  # moves made so far in each image
    tried = torch.full((b, k), -1, dtype=torch.long, device=dev)  # the version each patch's moves were last tried at
    # the version of the last move that left from or landed near each cell: within `within`, or
    # anywhere in the image (0: n exceeds every distance on the grid)
    close = dist <= (within if within > 0 else n)
    stamp = torch.zeros(b, n, dtype=torch.long, device=dev)
    rows_b = torch.arange(b, device=dev)
    # destinations a patch tries at most: the ranker's few, else every cell within reach
    width = min(moves if score is not None else n, (2 * reach + 1) ** 2 - 1, n - 1)
    for r in range(rounds):
        moved = torch.zeros(b, dtype=torch.bool, device=dev)
        for i in range(fixed, k):
            # a patch whose image (near it, with `within`) has not changed since its last try would
            # try the same sets again
            changed = stamp[rows_b, patches[:, i]] > tried[:, i]
            tried[:, i] = version
            free = torch.ones(b, n, dtype=torch.bool, device=dev).scatter_(1, patches, False)
            moves_i = near[patches[:, i]] & free & changed[:, None]  # (B, N): where patch i may go
            if score is not None:
                moves_i &= ranks(score[:, i], moves_i) < moves
            # (B, width): its destinations ascending, then slots without a move, which score the set itself
            first = remaining_count(moves_i, width)
            valid = first < n
            dest = torch.where(valid, first, patches[:, i : i + 1])
            sets = patches[:, None, :].repeat(1, width, 1)
            sets[:, :, i] = dest
            if r == 0 and score is not None:
                # every image tries its few ranked moves: scored as they lie, no host synchronisation
                # (a slot without a move scores the set itself, never kept, and counts in evaluations:
                # the pass is spent)
                bound = torch.where(valid, current[:, None], -math.inf).view(-1)
                scores = objective.score(sets.view(b * width, k), rows_b.repeat_interleave(width), below=bound)
                scores = scores.view(b, width)
            else:
                rows, slot = valid.nonzero(as_tuple=True)  # only the images and patches that may move
                if rows.numel() == 0:
                    continue
                scores = torch.full((b, width), math.inf, device=dev)
                scores[rows, slot] = objective.score(sets[rows, slot], rows, below=current[rows])
            best, at = scores.masked_fill(~valid, math.inf).min(dim=1)  # first minimum: lowest destination on ties
            where = dest[rows_b, at]
            better = best < current
            touched = (close[patches[:, i]] | close[where]) & better[:, None]  # near the move's source and destination
            stamp = torch.where(touched, (version + 1)[:, None], stamp)
            patches[:, i] = torch.where(better, where, patches[:, i])
            current = torch.where(better, best, current)
            version += better.long()
            moved |= better
        if not bool(moved.any()):
            break
    out = torch.full((b, k), math.nan, device=dev)
    out[:, -1] = current
    return patches, out


def refine_batched(objective: Objective, patches: torch.Tensor, current: torch.Tensor, rounds: int,
                   reach: int = 1, apart: int = 2, fixed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`refine` with each round one batched pass: every move of every patch of every image.

    A round scores ``S - p + q`` for each chosen ``p`` and each free ``q`` within ``reach`` of it,
    all at once, with ``S`` itself, in the objective's screening precision
    (:meth:`Objective.score` with ``screen``: bfloat16 with ``"mixed"``). Of the moves that lower ``L``, each
    patch's best are taken in order of their gain, skipping one whose source or destination lies
    within ``apart`` of a move already taken (moves that far apart barely interact). The best
    single move and the set with all of them are scored in float32 (two more evaluations); the
    better is kept if it lowers the float32 ``L``, else that image's search ends. Ties go to the
    lowest patch index. Returns as :func:`refine`; the first ``fixed`` patches stay.
    """
    (b, k), n, dev = patches.shape, objective.grid.n, objective.device
    patches = patches.clone()
    dist = objective.grid.distances(dev)
    near = (dist > 0) & (dist <= reach)
    ar = torch.arange(b, device=dev)
    active = torch.ones(b, dtype=torch.bool, device=dev)
    for _ in range(rounds):
        free = torch.ones(b, n, dtype=torch.bool, device=dev).scatter_(1, patches, False)
        allowed = near[patches] & free[:, None, :] & active[:, None, None]  # (B, k, N)
        allowed[:, :fixed] = False
        img, i, dest = allowed.nonzero(as_tuple=True)
        if img.numel() == 0:
            break
        sets = patches[img].clone()
        sets[torch.arange(img.numel(), device=dev), i] = dest
        rows = active.nonzero(as_tuple=True)[0]
        screened = objective.score(torch.cat([patches[rows], sets]), torch.cat([rows, img]), screen=True)
        here = torch.full((b,), -math.inf, device=dev).index_copy_(0, rows, screened[: rows.numel()])
        scores = torch.full((b, k, n), math.inf, device=dev)
        scores[img, i, dest] = screened[rows.numel():]
        best, where = scores.min(dim=2)  # (B, k): each patch's best move, lowest destination on ties
        gain = here[:, None] - best  # against the set itself in the same precision
        improving = gain > 0
        if not bool(improving.any()):
            break
        order = torch.sort(-gain, dim=1, stable=True).indices  # patches by gain, largest first
        taken = torch.zeros(b, k, dtype=torch.bool, device=dev)
        blocked = torch.zeros(b, n, dtype=torch.bool, device=dev)
        for r in range(k):
            p = order[:, r]
            src, dst = patches[ar, p], where[ar, p]
            ok = improving[ar, p] & ~blocked[ar, src] & ~blocked[ar, dst]
            taken[ar, p] = ok
            blocked |= ok[:, None] & ((dist[src] <= apart) | (dist[dst] <= apart))
        top = order[:, 0]
        single = patches.clone()
        single[ar, top] = where[ar, top]
        both = torch.where(taken, where, patches)
        live = improving.any(dim=1)
        rows = live.nonzero(as_tuple=True)[0]
        exact = objective.score(torch.cat([single[rows], both[rows]]), rows.repeat(2)).view(2, -1)
        single_loss = torch.full((b,), math.inf, device=dev).index_copy_(0, rows, exact[0])
        both_loss = torch.full((b,), math.inf, device=dev).index_copy_(0, rows, exact[1])
        use_both = both_loss < single_loss
        new = torch.minimum(both_loss, single_loss)
        moved = new < current
        patches = torch.where((moved & use_both)[:, None], both, torch.where(moved[:, None], single, patches))
        current = torch.where(moved, new, current)
        active &= moved
    out = torch.full((b, k), math.nan, device=dev)
    out[:, -1] = current
    return patches, out
