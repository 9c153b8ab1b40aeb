"""A patch budget over a pool against the same number of patches spread evenly
(``keypatch experiment budget``).

At each budget (an average number of patches per image), the pool's greedy
(:func:`keypatch.propose_pool` with ``budget``) and the even spread (the same strategy, that many
patches on every image) are run on the same images; each image's final ``L`` is kept, with how
many patches the budget gave it and ``L`` of its start patch alone (how hard the image is to
rebuild). :func:`summarize_budget` gives the pool's mean ``L`` of both with 95% bootstrap intervals
over images and the paired relative difference with its own interval; :func:`write_budget` writes
``budget.csv``, ``budget.md`` and ``budget.png`` (mean ``L`` against the budget, and where the
budget went: patches per image against the image's ``L`` at its start).
"""

from __future__ import annotations

import csv
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from keypatch.experiments.meaning import bootstrap_ci
from keypatch.geometry import ImageLike, load_images
from keypatch.proposers.base import Proposer
from keypatch.rounds import check_budget, pool_proposals

__all__ = ["BudgetRow", "budget_experiment", "summarize_budget", "write_budget"]


@dataclass(frozen=True)
class BudgetRow:
    """One image at one budget: ``per_image`` the budget's average, ``patches`` what the pool's
    greedy gave the image, ``loss_budget`` and ``loss_even`` its final ``L`` under each, and
    ``loss_start`` ``L`` of its start patch alone."""

    per_image: int
    image: str
    patches: int
    loss_budget: float
    loss_even: float
    loss_start: float


def budget_experiment(images: Mapping[str, ImageLike], per_image: Sequence[int], proposer: Proposer, model,
                      seed: int = 0, progress: Callable[[str], None] | None = None) -> list[BudgetRow]:
    """Rows of :class:`BudgetRow` for every image at every budget of ``per_image`` patches per image
    on average (``per_image * len(images)`` in all)."""
    check_budget(proposer, 1)
    names = list(images)
    if not names:
        raise ValueError("no images")
    n = model.grid.n
    bad = [b for b in per_image if isinstance(b, bool) or not isinstance(b, int) or not 1 <= b <= n]
    if bad:
        raise ValueError(f"patches per image must be integers in [1, {n}], got {bad[0]!r}")
    x = load_images([images[k] for k in names], model.config.image_size).to(model.device)
    rows = []
    for b in per_image:
        if progress:
            progress(f"budget {b} per image: the pool's greedy")
        with torch.no_grad():
            pool = pool_proposals(model, x, proposer, budget=b * len(names), seed=seed)
            if progress:
                progress(f"budget {b} per image: {b} on every image")
            even = pool_proposals(model, x, proposer, k=b, seed=seed)
        for name, p, e in zip(names, pool, even, strict=True):
            start = p.losses[0] if p.patches else float("nan")
            rows.append(BudgetRow(b, name, p.k, float(p.loss), float(e.loss), float(start)))
    return rows


def summarize_budget(rows: Sequence[BudgetRow], n_boot: int = 2000, seed: int = 0) -> list[dict]:
    """Per budget: the pool's mean ``L`` with the budget and evenly (each with its 95% bootstrap
    interval over images), and the paired relative difference ``mean(budget) / mean(even) - 1``
    with its interval (images resampled together)."""
    out = []
    for b in sorted({r.per_image for r in rows}):
        sel = [r for r in rows if r.per_image == b]
        lb = np.array([r.loss_budget for r in sel])
        le = np.array([r.loss_even for r in sel])
        rng = np.random.default_rng(seed)
        idx = rng.integers(0, len(sel), size=(n_boot, len(sel)))
        rel = lb[idx].mean(1) / le[idx].mean(1) - 1
        out.append({"per_image": b, "images": len(sel), "budget": b * len(sel),
                    "mean_budget": float(lb.mean()), "ci_budget": bootstrap_ci(lb, n_boot, seed),
                    "mean_even": float(le.mean()), "ci_even": bootstrap_ci(le, n_boot, seed),
                    "relative": float(lb.mean() / le.mean() - 1),
                    "ci_relative": (float(np.percentile(rel, 2.5)), float(np.percentile(rel, 97.5))),
                    "patches_min": min(r.patches for r in sel), "patches_max": max(r.patches for r in sel)})
    return out


def write_budget(rows: Sequence[BudgetRow], out: str | Path, *, title: str = "") -> list[Path]:
    """``budget.csv`` (the rows), ``budget.md`` (the summary table) and ``budget.png`` in ``out``."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with open(out / "budget.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(BudgetRow.__dataclass_fields__))
        w.writeheader()
        w.writerows(asdict(r) for r in rows)
    summary = summarize_budget(rows)
    lines = [f"# A budget over the pool against the same patches spread evenly{': ' + title if title else ''}", "",
             "| patches per image (budget) | images | mean L, budget [95% CI] | mean L, even [95% CI] | "
             "budget vs even [95% CI] | patches per image with the budget |",
             "|---|---|---|---|---|---|"]
    for s in summary:
        lines.append(f"| {s['per_image']} ({s['budget']}) | {s['images']} | {s['mean_budget']:.4f} "
                     f"[{s['ci_budget'][0]:.4f}, {s['ci_budget'][1]:.4f}] | {s['mean_even']:.4f} "
                     f"[{s['ci_even'][0]:.4f}, {s['ci_even'][1]:.4f}] | {s['relative'] * 100:+.1f}% "
                     f"[{s['ci_relative'][0] * 100:+.1f}%, {s['ci_relative'][1] * 100:+.1f}%] | "
                     f"{s['patches_min']}-{s['patches_max']} |")
    (out / "budget.md").write_text("\n".join(lines) + "\n")
    fig, (a, c) = plt.subplots(1, 2, figsize=(11, 4.2))
    xs = [s["per_image"] for s in summary]
    for key, label in (("budget", "budget over the pool"), ("even", "spread evenly")):
        ys = [s[f"mean_{key}"] for s in summary]
        err = np.array([[s[f"mean_{key}"] - s[f"ci_{key}"][0], s[f"ci_{key}"][1] - s[f"mean_{key}"]]
                        for s in summary]).T
        a.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=label)
    a.set_xlabel("patches per image (average)")
    a.set_ylabel("pool's mean L (95% bootstrap CI)")
    a.set_title("mean reconstruction error")
    a.legend()
    for b in xs:
        sel = [r for r in rows if r.per_image == b]
        c.scatter([r.loss_start for r in sel], [r.patches for r in sel], s=14, label=f"{b} per image")
    c.set_xlabel("L of the image's start patch alone (how hard it is to rebuild)")
    c.set_ylabel("patches the budget gave it")
    c.set_title("where the budget went")
    c.legend()
    fig.tight_layout()
    fig.savefig(out / "budget.png", dpi=110)
    plt.close(fig)
    return [out / "budget.csv", out / "budget.md", out / "budget.png"]
