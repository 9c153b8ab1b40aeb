"""Exact greedy's steps with every candidate's ``L``: what a ranker is fitted to and judged by.

:func:`greedy_steps` runs greedy from the central patch and records, at every step, the error map
of the set before it and the ``L`` of every remaining candidate. :func:`trajectories` does so for
photo files in batches, one cached file per photo and model (so a long fit resumes where it stopped).
"""

from __future__ import annotations

import hashlib
import math
import warnings
from collections.abc import Callable
from pathlib import Path

import torch

from keypatch.geometry import ImageWarning
from keypatch.geometry.image import load_image
from keypatch.objective import Objective, ranks, remaining_count
from keypatch.ranker.files import model_digest
from keypatch.ranker.net import PatchRanker
from keypatch.ranker.ranking import Ranking

GROUP = 8
"""Photos whose greedy steps are batched in one objective."""


@torch.no_grad()
def greedy_steps(objective: Objective, k: int, ranking: Ranking | None = None, m: int = 6) -> dict[str, torch.Tensor]:
    """Greedy from the central patch to ``k`` patches, every remaining candidate scored at every step.

    Without ``ranking`` the steps are exact greedy's (:meth:`Objective.step`'s picks); with one,
    each step adds the best of the ``m`` candidates it ranks first (the states a ranker meets when
    it screens; the fit's second round).

    Returns
    -------
    dict
        On the CPU: ``chosen (B, k)``; per step, the error map ``err (B, k-1, N)`` of the set before
        it and every candidate's ``L`` in ``scores (B, k-1, N)`` (inf at the chosen patches);
        ``targets (B, N, D)``.
    """
    b, n, dev = objective.batch, objective.grid.n, objective.device
    chosen = torch.full((b, 1), objective.grid.center, dtype=torch.long, device=dev)
    remaining = torch.ones(b, n, dtype=torch.bool, device=dev)
    remaining[:, objective.grid.center] = False
    errs, scores_all = [], []
    for j in range(1, k):
        cand = remaining_count(remaining, n - j)
        step = objective.step(chosen, cand)
        scores = torch.full((b, n), math.inf, device=dev).scatter_(1, cand, step.scores)
        if ranking is None:
            errs.append(objective.score(chosen, maps=True)[1])
            pick = step.pick
        else:
            top = ranks(ranking(chosen), remaining) < m
            errs.append(ranking.last)
            pick = scores.masked_fill(~top, math.inf).argmin(1)
        scores_all.append(scores)
        chosen = torch.cat([chosen, pick[:, None]], 1)
        remaining[torch.arange(b, device=dev), pick] = False
    targets = objective.model.targets(objective.images).float()
    out = {"chosen": chosen, "err": torch.stack(errs, 1), "scores": torch.stack(scores_all, 1), "targets": targets}
    return {key: v.cpu() for key, v in out.items()}


def photo_key(path: Path) -> str:
    """The first 16 hex digits of the SHA-256 of a photo file's bytes (its cache name)."""
    return hashlib.sha256(path.read_bytes()).hexdigest()[:16]


def _cached(file: Path, k: int, n: int) -> dict[str, torch.Tensor] | None:
    """A cached trajectory when it is one of ``k`` patches on ``n`` (else None: computed again)."""
    try:
        t = torch.load(file, weights_only=True)
    except Exception:  # a damaged or foreign file: computed again
        return None
    if not isinstance(t, dict) or set(t) != {"chosen", "err", "scores", "targets"}:
        return None
    if not all(isinstance(v, torch.Tensor) for v in t.values()):
        return None
    if (t["chosen"].shape != (k,) or t["err"].shape != (k - 1, n) or t["scores"].shape != (k - 1, n)
            or t["targets"].dim() != 2 or t["targets"].shape[0] != n):
        return None
    return t


def trajectories(files: list[Path], model, k: int, cache: Path, *, policy: PatchRanker | None = None,
                 m: int = 6, tick: Callable[[int], None] | None = None) -> list[dict[str, torch.Tensor]]:
    """:func:`greedy_steps` of each photo file, one dict per photo (the batch axis dropped).

    Each photo's trajectory is cached as ``cache/MODEL-kK-TAG/PHOTO.pt`` (``MODEL``: the weights'
    :func:`~keypatch.ranker.files.model_digest`; ``TAG``: ``greedy``, or ``own-NET`` for the steps
    ``policy`` takes when it screens ``m``; ``PHOTO``: :func:`photo_key`) and read back with
    ``torch.load(weights_only=True)``, its shapes checked. ``tick(n)`` is called as photos are done.
    A file that cannot be read as an image is left out with an
    :class:`~keypatch.geometry.ImageWarning` naming it (the list returned is then shorter).
    """
    tag = "greedy" if policy is None else f"own-{model_digest(policy)}"
    folder = Path(cache) / f"{model_digest(model)}-k{k}-{tag}"
    folder.mkdir(parents=True, exist_ok=True)
    keys: dict[int, str] = {}
    out: dict[int, dict[str, torch.Tensor]] = {}
    todo: list[tuple[int, torch.Tensor]] = []
    skipped = 0
    for i, path in enumerate(files):
        try:
            keys[i] = photo_key(path)
            got = _cached(folder / f"{keys[i]}.pt", k, model.grid.n)
            if got is None:
                todo.append((i, load_image(str(path), model.config.image_size)))
            else:
                out[i] = got
        except (OSError, ValueError) as exc:
            warnings.warn(f"{path}: {' '.join(str(exc).split()) or type(exc).__name__}; left out", ImageWarning,
                          stacklevel=2)
            skipped += 1
    if tick is not None and (out or skipped):
        tick(len(out) + skipped)
    for s in range(0, len(todo), GROUP):
        group = [i for i, _ in todo[s : s + GROUP]]
        images = torch.stack([x for _, x in todo[s : s + GROUP]]).to(model.device)
        objective = Objective(model, images)
        t = greedy_steps(objective, k, None if policy is None else Ranking(objective, policy), m)
        for j, i in enumerate(group):
            one = {key: v[j].clone() for key, v in t.items()}
            tmp = folder / f".{keys[i]}.pt.tmp"
            torch.save(one, tmp)
            tmp.replace(folder / f"{keys[i]}.pt")
            out[i] = one
        if tick is not None:
            tick(len(group))
    return [out[i] for i in sorted(out)]
