"""Dataset Quantization's bins: non-overlapping GraphCut selections, then uniform sampling from each.

DQ (Zhou et al., 2023) splits the data into ``K`` bins: bin 1 is a GraphCut selection from the whole
set, bin 2 a GraphCut selection from what remains (the similarity restricted to it), and so on; the
last bin is whatever remains. A subset at ratio ``r`` then takes ``r`` of every bin uniformly at
random. Early bins hold the central, representative samples and later bins the outlying ones, so the
union covers the data at every ratio.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from keypatch.selection.graphcut import cosine_similarity, graphcut_greedy


def bin_sizes(n: int, n_bins: int) -> list[int]:
    """``n`` split into ``n_bins`` near-equal sizes (the first ``n % n_bins`` get one more)."""
    if n_bins < 1:
        raise ValueError("n_bins must be >= 1")
    if n_bins > n:
        raise ValueError(f"cannot make {n_bins} non-empty bins from {n} samples")
    q, r = divmod(n, n_bins)
    return [q + (1 if b < r else 0) for b in range(n_bins)]


def dq_bins(embeddings: np.ndarray | None = None, n_bins: int = 10, lam: float = 1.0, *,
            sim: np.ndarray | None = None) -> list[np.ndarray]:
    """Split the data into ``n_bins`` disjoint bins by repeated GraphCut over what remains.

    Parameters
    ----------
    embeddings : np.ndarray, optional
        ``(n, d)`` features; the similarity is DQ's ``0.5 + 0.5 cos``.
    n_bins : int
        Number of bins ``K``.
    lam : float
        GraphCut's ``lambda``.
    sim : np.ndarray, optional
        A precomputed ``(n, n)`` similarity instead of ``embeddings``.

    Returns
    -------
    list of np.ndarray
        ``K`` arrays of indices, in GraphCut order within each bin; together a partition of
        ``range(n)``.
    """
    if sim is None:
        if embeddings is None:
            raise ValueError("give embeddings or sim")
        sim = cosine_similarity(embeddings)
    sim = np.asarray(sim, dtype=np.float64)
    n = sim.shape[0]
    remaining = np.arange(n)
    bins = []
    for size in bin_sizes(n, n_bins):
        picked = graphcut_greedy(sim[np.ix_(remaining, remaining)], size, lam)  # the last bin: all that is left
        bins.append(remaining[picked])
        remaining = np.delete(remaining, picked)
    return bins


def allocate(sizes: list[int], total: int, rng: np.random.Generator) -> list[int]:
    """Split ``total`` picks over bins of ``sizes`` in proportion (largest remainder, random ties)."""
    sizes_a = np.asarray(sizes, dtype=np.int64)
    n = int(sizes_a.sum())
    if not 0 <= total <= n:
        raise ValueError(f"cannot pick {total} of {n}")
    exact = sizes_a * total / n
    quota = np.floor(exact).astype(np.int64)
    left = total - int(quota.sum())
    if left:
        frac = exact - quota
        tie = rng.permutation(len(sizes_a))
        order = sorted(range(len(sizes_a)), key=lambda b: (-round(frac[b], 12), tie[b]))
        for b in order[:left]:
            quota[b] += 1
    return quota.tolist()


@dataclass
class DatasetSelection:
    """A selection of samples.

    Attributes
    ----------
    indices : np.ndarray
        Selected sample indices (grouped by bin for DQ, in GraphCut order for GraphCut).
    bins : list of np.ndarray
        DQ's bins (one bin holding everything for the other methods).
    bin_of : np.ndarray
        The bin of each selected sample, aligned with ``indices``.
    method : str
        ``"dq"``, ``"graphcut"`` or ``"random"``.
    ratio : float
        The requested keep ratio.
    """

    indices: np.ndarray
    bins: list[np.ndarray]
    bin_of: np.ndarray
    method: str
    ratio: float


def n_keep(n: int, ratio: float) -> int:
    """``round(ratio * n)``, at least 1."""
    if not 0.0 < float(ratio) <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio!r}")
    return max(1, min(n, round(float(ratio) * n)))


def sample_bins(bins: list[np.ndarray], ratio: float, seed: int = 0) -> DatasetSelection:
    """DQ's sampling: ``round(ratio * n)`` samples, spread over the bins in proportion to their sizes
    (largest remainder; ties drawn from ``seed``), uniformly without replacement inside each bin."""
    rng = np.random.default_rng(seed)
    sizes = [len(b) for b in bins]
    quota = allocate(sizes, n_keep(sum(sizes), ratio), rng)
    idx, of = [], []
    for b, (members, q) in enumerate(zip(bins, quota, strict=True)):
        pick = rng.choice(len(members), size=q, replace=False) if q else np.empty(0, dtype=np.int64)
        idx.append(np.asarray(members)[np.sort(pick)])
        of.append(np.full(q, b, dtype=np.int64))
    return DatasetSelection(np.concatenate(idx).astype(np.int64), bins, np.concatenate(of), "dq", float(ratio))


Selector = Callable[..., DatasetSelection]

SELECTORS: dict[str, Selector] = {}
"""Dataset selection methods by name: ``fn(embeddings, ratio, *, n_bins, seed, lam, bins)`` ->
:class:`DatasetSelection`. A new method is a function with :func:`register_selection`."""


def register_selection(name: str) -> Callable[[Selector], Selector]:
    """Decorator: register a selection method under ``name`` (the ``--method`` choices read it)."""

    def add(fn: Selector) -> Selector:
        SELECTORS[name] = fn
        return fn

    return add


@register_selection("dq")
def _dq(emb: np.ndarray, ratio: float, *, n_bins: int, seed: int, lam: float, bins) -> DatasetSelection:
    """DQ bins (``n_bins``; ``bins`` reused when given) sampled uniformly, seeded."""
    return sample_bins(bins if bins is not None else dq_bins(emb, n_bins, lam), ratio, seed)


@register_selection("graphcut")
def _graphcut(emb: np.ndarray, ratio: float, *, n_bins: int, seed: int, lam: float, bins) -> DatasetSelection:
    """One GraphCut selection over everything (deterministic)."""
    k = n_keep(emb.shape[0], ratio)
    idx = graphcut_greedy(cosine_similarity(emb), k, lam)
    return DatasetSelection(idx, [np.arange(emb.shape[0])], np.zeros(k, dtype=np.int64), "graphcut", float(ratio))


@register_selection("random")
def _random(emb: np.ndarray, ratio: float, *, n_bins: int, seed: int, lam: float, bins) -> DatasetSelection:
    """Uniform without replacement, seeded."""
    n, k = emb.shape[0], n_keep(emb.shape[0], ratio)
    idx = np.sort(np.random.default_rng(seed).choice(n, size=k, replace=False)).astype(np.int64)
    return DatasetSelection(idx, [np.arange(n)], np.zeros(k, dtype=np.int64), "random", float(ratio))


def select_indices(embeddings: np.ndarray, ratio: float, method: str = "dq", *, n_bins: int = 10, seed: int = 0,
                   lam: float = 1.0, bins: list[np.ndarray] | None = None) -> DatasetSelection:
    """Select ``round(ratio * n)`` samples of ``embeddings`` ``(n, d)`` with ``method`` (a name in
    :data:`SELECTORS`: ``"dq"``, ``"graphcut"``, ``"random"``, or one registered since)."""
    if method not in SELECTORS:
        raise ValueError(f"method must be one of {', '.join(sorted(SELECTORS))}, got {method!r}")
    return SELECTORS[method](np.asarray(embeddings), ratio, n_bins=n_bins, seed=seed, lam=lam, bins=bins)
