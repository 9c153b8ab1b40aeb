"""GraphCut submodular selection (Iyer et al., 2021), greedy, as DQ uses it to build its bins.

For a ground set ``V`` with similarities ``s`` and a selection ``S``,

    f(S) = lam * sum_{v in V} sum_{x in S} s(v, x)  -  sum_{x in S} sum_{y in S} s(x, y),

whose gain for adding ``e`` is ``lam * sum_V s(v, e) - 2 * sum_S s(x, e) - s(e, e)``; the greedy adds
the element of largest gain (ties: lowest index) until the budget is spent, whatever the gain's sign
(as DeepCore's ``NaiveGreedy``, which DQ uses). With a constant diagonal (cosine) the ``s(e, e)`` term
changes no choice, so this picks what DQ's ``GraphCut`` picks.

Why not a library (measured here, 275 x 1280 embeddings, budget 27, torch 2.13 CPU): ``apricot-select``
0.6.1 is an sdist that pulls numba + llvmlite + nose and needs scikit-learn it does not declare; it
picks the same elements but takes 11 s to import and 1.8 s per selection. ``submodlib-py`` 0.0.3 picks
the same in 0.04 s but pulls numba, pandas and scikit-learn (4 s import) and prints a progress bar on
every call. The vectorised greedy below picks the same elements in 1.4 ms with NumPy alone.
"""

from __future__ import annotations

import numpy as np


def l2_normalize(embeddings: np.ndarray, eps: float = 1e-12) -> np.ndarray:
    """Rows scaled to unit length (float64)."""
    x = np.asarray(embeddings, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"embeddings must be (n, d), got shape {x.shape}")
    return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), eps)


def cosine_similarity(embeddings: np.ndarray) -> np.ndarray:
    """DQ's similarity ``0.5 + 0.5 * cos`` in ``[0, 1]``, ``(n, n)``."""
    x = l2_normalize(embeddings)
    return np.clip(0.5 + 0.5 * (x @ x.T), 0.0, 1.0)


def graphcut_value(sim: np.ndarray, selected, lam: float = 1.0) -> float:
    """``f(S)`` of the docstring above (ground set: every row of ``sim``)."""
    idx = np.asarray(list(selected), dtype=np.int64)
    if idx.size == 0:
        return 0.0
    return float(lam * sim[:, idx].sum() - sim[np.ix_(idx, idx)].sum())


def graphcut_greedy(sim: np.ndarray, budget: int, lam: float = 1.0) -> np.ndarray:
    """Greedy GraphCut maximisation: ``budget`` indices into ``sim``'s rows, in order of choice.

    Parameters
    ----------
    sim : np.ndarray
        ``(n, n)`` symmetric non-negative similarities of the ground set.
    budget : int
        How many to pick, ``0 <= budget <= n``.
    lam : float
        Weight of the representativeness term (DQ: 1).

    Returns
    -------
    np.ndarray
        ``(budget,)`` int64. A prefix of the result is the greedy answer for a smaller budget.
    """
    s = np.asarray(sim, dtype=np.float64)
    n = s.shape[0]
    if s.ndim != 2 or s.shape[1] != n:
        raise ValueError(f"sim must be square, got shape {s.shape}")
    if not 0 <= budget <= n:
        raise ValueError(f"budget must be in [0, {n}], got {budget}")
    base = lam * s.sum(axis=0) - np.diag(s)
    penalty = np.zeros(n)
    taken = np.zeros(n, dtype=bool)
    out = np.empty(budget, dtype=np.int64)
    for t in range(budget):
        gain = np.where(taken, -np.inf, base - 2.0 * penalty)
        e = int(np.argmax(gain))
        out[t] = e
        taken[e] = True
        penalty += s[e]
    return out


def graphcut_select(embeddings: np.ndarray, budget: int, lam: float = 1.0) -> np.ndarray:
    """GraphCut on the cosine similarities of ``embeddings``; ``budget`` indices in order of choice."""
    return graphcut_greedy(cosine_similarity(embeddings), budget, lam)
