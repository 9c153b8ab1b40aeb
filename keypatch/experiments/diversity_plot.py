"""Diversity of GraphCut, DQ bins and random subsets of a photo folder across keep ratios (CSV + plot)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

DEFAULT_RATIOS = (0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5)
LABELS = {"graphcut": "GraphCut", "dq": "DQ bins", "random": "random"}
METRICS = (
    ("coverage", "coverage: mean distance to nearest selected (lower = better)"),
    ("spread", "spread: mean pairwise distance in subset (higher = more diverse)"),
    ("centrality", "centrality: distance to data mean, relative to all (< 1 = central)"),
)


def write_csv(rows: Sequence[dict], path: str | Path) -> Path:
    """Rows of :func:`keypatch.selection.diversity_study` as CSV."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})
    return path


def plot_diversity(rows: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Three panels (coverage, spread, centrality) against the keep ratio, one line per method."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = list(dict.fromkeys(r["method"] for r in rows))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.4))
    for ax, (key, label) in zip(axes, METRICS, strict=True):
        for m in methods:
            rs = sorted((r for r in rows if r["method"] == m), key=lambda r: r["ratio"])
            x = [100 * r["ratio"] for r in rs]
            ax.errorbar(x, [r[key] for r in rs], yerr=[r[f"{key}_std"] for r in rs], marker="o", ms=4, capsize=2,
                        label=LABELS.get(m, m))
        ax.set_xscale("log")
        ax.set_xlabel("keep ratio (%)")
        ax.set_title(label, fontsize=9)
        ax.grid(alpha=0.3, which="both")
    axes[2].axhline(1.0, color="grey", lw=0.8, ls="--")
    axes[0].legend()
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def run_diversity(paths, ratios: Sequence[float] = DEFAULT_RATIOS, *, n_bins: int = 10, seeds: int = 10,
                  lam: float = 1.0, classifier: str = "efficientnet-lite0", device: str = "cpu",
                  cache: str | Path | None = None, out_csv: str | Path | None = None,
                  out_plot: str | Path | None = None, progress: bool = True) -> list[dict]:
    """Embed the images under ``paths``, run :func:`keypatch.selection.diversity_study`, write CSV and plot."""
    from keypatch.selection import diversity_study, embed_paths

    files, emb = embed_paths(paths, classifier, device=device, cache=cache, progress=progress)
    rows = diversity_study(emb, ratios, n_bins=n_bins, seeds=seeds, lam=lam, progress=progress)
    if out_csv:
        write_csv(rows, out_csv)
    if out_plot:
        plot_diversity(rows, out_plot, f"{len(files)} photos, {classifier} features, cosine; DQ: {n_bins} bins; "
                                       f"DQ/random: mean +- sd over {seeds} seeds")
    return rows
