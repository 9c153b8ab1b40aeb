"""A patch budget over a pool of images: each next patch to the image where it lowers ``L`` most.

The pool's objective is the mean of its images' ``L`` (``docs/kpp.md``). With ``budget`` patches to
spend, the pool's greedy search adds, one patch at a time, the (image, patch) pair that lowers that
mean most. The images do not interact (an image's ``L`` depends on its own patches only), so an
image's best next patch is its own greedy step whichever image received the last one: the pool's
greedy is the merge of the images' greedy trajectories, always taking the next step of largest gain.
:func:`allocate` computes each image's trajectory a few steps ahead (all images batched, through
the strategy's ``select`` with ``begin``), merges, and extends an image only when the merge reaches
the end of what it computed; the waste is at most a few steps per image.

Any strategy with a step-by-step form (:meth:`~keypatch.proposers.base.Proposer.stepwise`) takes a
budget: ``greedy`` allocates with its exact steps, ``ranked`` with its screened ones (then its
neighbour moves run on each image at its final count, the earlier patches kept).
"""

from __future__ import annotations

import heapq
import math
import time
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from keypatch.objective import Objective, prefix_losses
from keypatch.proposers import available, get_proposer
from keypatch.proposers.base import Proposal, Proposer
from keypatch.proposers.search import start_patch
from keypatch.reconstructors.mae import MAE

__all__ = ["Allocation", "allocate", "check_budget", "pool_proposals"]


@dataclass
class Allocation:
    """Where a budget went: per image, the patches it began with (``begun``), every patch it ends
    with (begun first), ``L`` after each, and the MAE evaluations spent."""

    begun: list[list[int]]
    patches: list[list[int]]
    losses: list[list[float]]
    evaluations: list[int]

    @property
    def spent(self) -> int:
        """Patches added by this run (start patches included, begun ones not)."""
        return sum(len(p) - len(b) for p, b in zip(self.patches, self.begun, strict=True))


def check_budget(proposer: Proposer, budget: int | None = None) -> Proposer:
    """The step-by-step form of ``proposer`` for a budget or a continued round; a ValueError naming
    the strategies that take one otherwise (raised before any work)."""
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ValueError(f"budget must be a positive number of patches, got {budget!r}")
    stepwise = proposer.stepwise()
    if stepwise is None:
        ok = [name for name in available() if _takes(name)]
        raise ValueError(f"strategy {proposer.name!r} cannot continue from given patches or spend a budget "
                         f"(its answer for k patches is not the first k of a longer one); these can: {', '.join(ok)}")
    return stepwise


def _takes(name: str) -> bool:
    """Whether strategy ``name`` with its defaults has a step-by-step form."""
    try:
        return get_proposer(name).stepwise() is not None
    except (ValueError, OSError):
        return False


def _start(proposer: Proposer, model: MAE) -> list[int]:
    """The patches a fresh image begins with under ``proposer``'s start rule."""
    start = getattr(proposer, "start", "none")
    first = start_patch(start, model.grid)
    return [] if first is None else [first]


def allocate(model: MAE, images: torch.Tensor, proposer: Proposer, *, budget: int | None = None,
             k: int | None = None, after: Sequence[Sequence[int]] | None = None, seed: int = 0,
             progress=None) -> Allocation:
    """Patches for every image of a pool: ``budget`` in all (the pool's greedy), or ``k`` each.

    Parameters
    ----------
    model : MAE
        The reconstructor (on its device).
    images : torch.Tensor
        ``(B, 3, H, W)`` normalised, on the model's device.
    proposer : Proposer
        The strategy (:func:`check_budget` must accept it).
    budget : int, optional
        Patches to add over the pool, start patches included, patches of ``after`` not.
    k : int, optional
        Instead of a budget: patches each image ends with (``after``'s included).
    after : sequence of sequences of int, optional
        Per image, the patches it already has (an earlier round); they stay, first. An image
        with none begins by the strategy's start rule.
    seed : int
        As for :func:`keypatch.propose`.
    progress : callable, optional
        Called with the number of patches allocated so far (for a progress bar).

    Returns
    -------
    Allocation
    """
    stepwise = check_budget(proposer, budget)
    b, n = images.shape[0], model.grid.n
    if (budget is None) == (k is None):
        raise ValueError("give a budget or a number of patches per image, not both")
    if after is not None and len(after) != b:
        raise ValueError(f"after holds patches of {len(after)} images, not {b}")
    fresh = _start(proposer, model)
    begun = [list(map(int, after[i])) if after is not None and len(after[i]) else [] for i in range(b)]
    heads = [list(begun[i]) or list(fresh) for i in range(b)]  # what each image's search begins from
    for i, h in enumerate(begun):
        if len(set(h)) != len(h) or any(not 0 <= p < n for p in h):
            raise ValueError(f"image {i}: its earlier patches must be distinct indices in [0, {n - 1}]")
    starts = sum(len(h) - len(g) for h, g in zip(heads, begun, strict=True))
    if budget is not None and budget < starts:
        raise ValueError(f"a budget of {budget} cannot give the {starts} images that have no patches yet their "
                         f"start patch (start {getattr(proposer, 'start', 'none')!r}); raise it or use start none")
    if k is not None and any(len(h) > k for h in heads):
        raise ValueError(f"an image already has more than the {k} patches asked for")
    evaluations = [0] * b
    # L of each image's head set, then the steps computed after it: (patch, L)
    head_loss = _head_losses(model, images, heads, evaluations)
    steps: list[list[tuple[int, float]]] = [[] for _ in range(b)]

    def extend(rows: list[int], ahead: int, until: int = n) -> None:
        """``ahead`` more steps for each image of ``rows``, up to ``until`` patches in all."""
        by_len: dict[int, list[int]] = {}
        for i in rows:
            by_len.setdefault(len(heads[i]) + len(steps[i]), []).append(i)
        for j, group in sorted(by_len.items()):
            kk = min(until, j + ahead)
            if kk <= j:
                continue
            prefix = torch.tensor([heads[i] + [p for p, _ in steps[i]] for i in group], dtype=torch.long,
                                  device=images.device).view(len(group), j)
            patches, losses, evals = stepwise.select(model, images[group], kk, seed, begin=prefix)
            pl, ll = patches[:, j:].tolist(), losses[:, j:].tolist()
            for r, i in enumerate(group):
                steps[i].extend(zip(pl[r], ll[r], strict=True))
                evaluations[i] += int(evals[r])

    taken = [0] * b
    if k is not None:
        extend(list(range(b)), k, until=k)  # every image to k: no merge
        taken = [k - len(heads[i]) for i in range(b)]
    else:
        left = budget - starts
        extend([i for i in range(b) if len(heads[i]) < n], max(1, math.ceil(left / b)) + 1 if left else 0)
        current = list(head_loss)
        heap = [(-(current[i] - steps[i][0][1]), i) for i in range(b) if steps[i]]
        heapq.heapify(heap)  # largest gain first, lowest image on ties
        while left > 0 and heap:
            _, i = heapq.heappop(heap)
            current[i] = steps[i][taken[i]][1]
            taken[i] += 1
            left -= 1
            if progress is not None:
                progress(budget - left)
            if taken[i] == len(steps[i]) and len(heads[i]) + taken[i] < n:
                extend([i], max(2, math.ceil(left / b) + 1))
            if taken[i] < len(steps[i]):
                heapq.heappush(heap, (-(current[i] - steps[i][taken[i]][1]), i))
    patches = [heads[i] + [p for p, _ in steps[i][: taken[i]]] for i in range(b)]
    losses = [[math.nan] * (len(heads[i]) - 1) + [head_loss[i]] * bool(heads[i])
              + [v for _, v in steps[i][: taken[i]]] for i in range(b)]
    if stepwise is not proposer:  # the refinement the step-by-step form left out, at each image's count
        patches, losses = _refine(model, images, proposer, begun, patches, losses, seed, evaluations)
    return Allocation(begun, patches, losses, evaluations)


def _head_losses(model: MAE, images: torch.Tensor, heads: list[list[int]], evaluations: list[int]) -> list[float]:
    """``L`` of each image's head set (the empty set's too), batched by size."""
    out = [math.nan] * len(heads)
    by_len: dict[int, list[int]] = {}
    for i, h in enumerate(heads):
        by_len.setdefault(len(h), []).append(i)
    for j, group in by_len.items():
        visible = torch.tensor([heads[i] for i in group], dtype=torch.long, device=images.device).view(len(group), j)
        values = Objective(model, images[group], precision="float32").score(visible).tolist()
        for r, i in enumerate(group):
            out[i] = values[r]
            evaluations[i] += 1
    return out


def _refine(model: MAE, images: torch.Tensor, proposer: Proposer, begun: list[list[int]], patches: list[list[int]],
            losses: list[list[float]], seed: int, evaluations: list[int]) -> tuple[list[list[int]], list[list[float]]]:
    """The full strategy at each image's count, from the patches it began with (grouped by both
    sizes): its greedy pass repeats the allocation's, then its refinement moves the added patches."""
    groups: dict[tuple[int, int], list[int]] = {}
    for i, (g, p) in enumerate(zip(begun, patches, strict=True)):
        if len(p) > len(g):
            groups.setdefault((len(g), len(p)), []).append(i)
    patches, losses = [list(p) for p in patches], [list(v) for v in losses]
    for (j, kk), group in sorted(groups.items()):
        begin = torch.tensor([begun[i] for i in group], dtype=torch.long, device=images.device).view(len(group), j)
        out, out_losses, evals = proposer.select(model, images[group], kk, seed, begin=begin if j else None)
        if bool(out_losses.isnan().any()):
            out_losses = prefix_losses(Objective(model, images[group]), out)
        for r, i in enumerate(group):
            patches[i], losses[i] = out[r].tolist(), out_losses[r].tolist()
            evaluations[i] += int(evals[r])
    return patches, losses


def pool_proposals(model: MAE, images: torch.Tensor, proposer: Proposer, *, budget: int | None = None,
                   k: int | None = None, after: Sequence[Sequence[int]] | None = None, seed: int = 0,
                   progress=None) -> list[Proposal]:
    """:func:`allocate` as one :class:`~keypatch.proposers.base.Proposal` per image (its ratio its own
    count over the grid's patches; losses of every prefix, computed where the strategy left NaN)."""
    t0 = time.perf_counter()
    a = allocate(model, images, proposer, budget=budget, k=k, after=after, seed=seed, progress=progress)
    for i, (p, v) in enumerate(zip(a.patches, a.losses, strict=True)):
        if p and any(math.isnan(x) for x in v):
            visible = torch.tensor([p], dtype=torch.long, device=images.device)
            a.losses[i] = prefix_losses(Objective(model, images[i : i + 1]), visible)[0].tolist()
    if model.device.type == "cuda":
        torch.cuda.synchronize()
    seconds = (time.perf_counter() - t0) / max(1, images.shape[0])
    n = model.grid.n
    return [Proposal(a.patches[i], a.losses[i], len(a.patches[i]) / n, model.grid, proposer.name,
                     a.evaluations[i], seconds) for i in range(images.shape[0])]
