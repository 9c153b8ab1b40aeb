"""How diverse a selected subset is (the DQ supplement's sec. 1.1 argument, measured).

Distances are Euclidean between L2-normalised embeddings (``sqrt(2 - 2 cos)``, the metric behind
DQ's cosine similarity).

coverage
    Mean over every sample of the distance to its nearest selected sample (lower: the subset
    represents the whole data better).
spread
    Mean pairwise distance within the subset (higher: more diverse).
centrality
    Mean distance of the selected samples to the data's mean embedding, divided by the same mean over
    all samples (below 1: the subset sits toward the centre; the supplement's claim for GraphCut).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from keypatch.selection.bins import dq_bins, n_keep, select_indices
from keypatch.selection.graphcut import cosine_similarity, graphcut_greedy, l2_normalize


def _dist(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sqrt(np.clip(2.0 - 2.0 * (a @ b.T), 0.0, None))


def coverage(x: np.ndarray, selected: np.ndarray, chunk: int = 4096) -> float:
    """Mean distance from every row of the normalised ``x`` to its nearest selected row."""
    s = x[np.asarray(selected)]
    mins = [_dist(x[i : i + chunk], s).min(axis=1) for i in range(0, x.shape[0], chunk)]
    return float(np.concatenate(mins).mean())


def spread(x: np.ndarray, selected: np.ndarray) -> float:
    """Mean pairwise distance between the selected rows (0 for fewer than two)."""
    s = x[np.asarray(selected)]
    k = s.shape[0]
    if k < 2:
        return 0.0
    d = _dist(s, s)
    return float(d[np.triu_indices(k, 1)].mean())


def centrality(x: np.ndarray, selected: np.ndarray) -> float:
    """Mean distance of the selected rows to the data mean, over the same for all rows."""
    c = x.mean(axis=0)
    d = np.linalg.norm(x - c, axis=1)
    return float(d[np.asarray(selected)].mean() / d.mean())


def diversity_metrics(x: np.ndarray, selected: np.ndarray) -> dict[str, float]:
    """``coverage``, ``spread`` and ``centrality`` of one subset of the normalised ``x``."""
    return {"coverage": coverage(x, selected), "spread": spread(x, selected), "centrality": centrality(x, selected)}


def diversity_study(embeddings: np.ndarray, ratios: Sequence[float],
                    methods: Sequence[str] = ("graphcut", "dq", "random"), n_bins: int = 10, seeds: int = 10,
                    lam: float = 1.0, progress: bool = True) -> list[dict]:
    """Diversity of each method's subset at each keep ratio.

    GraphCut is deterministic (one run; its subsets are prefixes of one greedy order); DQ (bins
    built once, then sampled) and random are averaged over ``seeds`` seeds (0..seeds-1).

    Returns
    -------
    list of dict
        One row per (method, ratio): ``method, ratio, k, runs`` and the mean and standard
        deviation over runs of each metric (``coverage``, ``coverage_std``, ...).
    """
    from tqdm.auto import tqdm

    x = l2_normalize(embeddings)
    n = x.shape[0]
    sim = cosine_similarity(embeddings)
    gc_order = graphcut_greedy(sim, max(n_keep(n, r) for r in ratios), lam) if "graphcut" in methods else None
    bins = dq_bins(sim=sim, n_bins=n_bins, lam=lam) if "dq" in methods else None
    rows = []
    jobs = [(m, r) for m in methods for r in ratios]
    for method, ratio in tqdm(jobs, desc="diversity", disable=not progress):
        k = n_keep(n, ratio)
        if method == "graphcut":
            runs = [gc_order[:k]]
        elif method in ("dq", "random"):
            runs = [select_indices(x, ratio, method, seed=s, bins=bins).indices for s in range(seeds)]
        else:
            raise ValueError(f"unknown method {method!r}")
        vals = [diversity_metrics(x, idx) for idx in runs]
        row = {"method": method, "ratio": float(ratio), "k": k, "runs": len(runs)}
        for key in ("coverage", "spread", "centrality"):
            v = np.array([d[key] for d in vals])
            row[key] = float(v.mean())
            row[f"{key}_std"] = float(v.std())
        rows.append(row)
    return rows
