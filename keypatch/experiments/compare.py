"""Mean ``L(S)`` of several patch strategies at several keep ratios on a set of images (CSV + plot).

Every strategy's final set is scored the same way, by one independent MAE pass
(:func:`keypatch.objective.losses` in float32), so the numbers are comparable across strategies.
"""

from __future__ import annotations

import csv
import logging
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch

from keypatch.objective import losses as set_losses

DEFAULT_RATIOS = (0.05, 0.1, 0.25)
DEFAULT_STRATEGIES = ("greedy", "attention", "random")

log = logging.getLogger("keypatch.compare")


def _nanmean(values: list[float]) -> float:
    kept = [v for v in values if not math.isnan(v)]
    return sum(kept) / len(kept) if kept else float("nan")


def summarize(rows: Sequence[dict], baseline: str = "random") -> list[dict]:
    """Mean, standard deviation and standard error of ``loss`` (and mean seconds) per strategy and ratio.

    When ``baseline`` was run too, ``vs_<baseline>`` is the mean over images of the paired ratio
    ``L(strategy) / L(baseline)`` at the same ratio (below 1: better than the baseline on average).
    """
    groups: dict[tuple, list[dict]] = {}
    base = {(r["image"], r["ratio"]): r["loss"] for r in rows if r["strategy"] == baseline}
    for r in rows:
        groups.setdefault((r["strategy"], r["ratio"]), []).append(r)
    out = []
    for (strategy, ratio), rs in groups.items():
        losses = torch.tensor([r["loss"] for r in rs], dtype=torch.float64)
        sd = float(losses.std()) if len(rs) > 1 else 0.0
        row = {
            "strategy": strategy, "ratio": ratio, "k": rs[0]["k"], "n_images": len(rs),
            "mean_loss": float(losses.mean()), "std_loss": sd, "sem_loss": sd / math.sqrt(len(rs)),
            "mean_seconds": _nanmean([r["seconds"] for r in rs]),
        }
        paired = [r["loss"] / base[r["image"], ratio] for r in rs if (r["image"], ratio) in base]
        if base:
            row[f"vs_{baseline}"] = sum(paired) / len(paired) if paired else float("nan")
        out.append(row)
    return out


def markdown_table(summary: Sequence[dict]) -> str:
    """Mean L(S) (+- s.e.m.) as a Markdown table: one row per strategy, one column per ratio."""
    strategies = list(dict.fromkeys(s["strategy"] for s in summary))
    ratios = sorted({s["ratio"] for s in summary})
    cell = {(s["strategy"], s["ratio"]): s for s in summary}
    lines = ["| strategy | " + " | ".join(f"r = {r:g}" for r in ratios) + " |",
             "|---|" + "---|" * len(ratios)]
    for st in strategies:
        vals = [f"{cell[st, r]['mean_loss']:.4f} ± {cell[st, r]['sem_loss']:.4f}" if (st, r) in cell else "—"
                for r in ratios]
        lines.append(f"| {st} | " + " | ".join(vals) + " |")
    return "\n".join(lines)


def _write_csv(rows: Sequence[dict], path: Path) -> None:
    with path.open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(rows[0]))
        w.writeheader()
        for r in rows:
            w.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in r.items()})


def plot_compare(summary: Sequence[dict], path: str | Path, title: str = "") -> Path:
    """Mean ``L(S)`` (+- s.e.m.) against the keep ratio, one line per strategy."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4.2))
    for st in dict.fromkeys(s["strategy"] for s in summary):
        ss = sorted((s for s in summary if s["strategy"] == st), key=lambda s: s["ratio"])
        ax.errorbar([s["ratio"] for s in ss], [s["mean_loss"] for s in ss], yerr=[s["sem_loss"] for s in ss],
                    marker="o", capsize=3, label=st)
    ax.set_xlabel("keep ratio r")
    ax.set_ylabel("mean L(S) (masked-patch MSE)")
    ax.grid(alpha=0.3)
    ax.legend()
    if title:
        ax.set_title(title, fontsize=9)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _timed_select(proposer, mae, x: torch.Tensor, k: int, seed: int) -> tuple[torch.Tensor, list[int], list[float]]:
    """``proposer.select`` one image at a time, so that each image has its own seconds:
    ``(patches, evaluations, seconds)``. Every image gets ``seed``, as in one batched call (randomised
    strategies draw from the seed and the image's own pixels, so the answers are the batch's)."""
    patches, evals, secs = [], [], []
    for j in range(x.shape[0]):
        t0 = time.perf_counter()
        p, _, e = proposer.select(mae, x[j : j + 1], k, seed)
        if mae.device.type == "cuda":
            torch.cuda.synchronize()
        secs.append(time.perf_counter() - t0)
        patches.append(p)
        evals += list(e)
    return torch.cat(patches), evals, secs


def _strategy_rows(name: str, proposer, mae, x: torch.Tensor, chunk: list[str], ks: dict[float, int],
                   seed: int) -> list[dict]:
    """The rows of one strategy on one batch, at every ratio; a prefix-consistent strategy runs once,
    to the largest ``k``, and its prefixes serve the smaller ratios (their ``seconds`` NaN)."""
    rows, shared = [], None
    ii = torch.arange(x.shape[0], device=mae.device)
    for r in sorted(ks, reverse=True):
        if shared is not None:
            patches, evals = shared[0][:, : ks[r]], shared[1]
            secs = [float("nan")] * x.shape[0]
        else:
            patches, evals, secs = _timed_select(proposer, mae, x, ks[r], seed)
            if proposer.prefix_consistent:
                shared = (patches, evals)
        losses = set_losses(mae, x, patches.to(mae.device), ii).tolist()
        rows += [{"image": f, "strategy": name, "ratio": float(r), "k": ks[r], "loss": losses[j], "seconds": secs[j],
                  "evaluations": int(evals[j]), "patches": " ".join(map(str, patches[j].tolist()))}
                 for j, f in enumerate(chunk)]
    return rows


def run_compare(paths, ratios: Sequence[float] = DEFAULT_RATIOS, strategies: Sequence[str] = DEFAULT_STRATEGIES,
                model="default", out: str | Path | None = None, *, seed: int = 0, device: str = "auto",
                batch_size: int = 8, options: dict[str, dict] | None = None,
                progress: bool = True) -> tuple[list[dict], list[dict]]:
    """Run every strategy at every ratio on every image; score each final set with one MAE pass.

    Parameters
    ----------
    paths : path, sequence of paths, or dict
        Image files and/or folders, or ``{name: image}`` (arrays, PIL images...), e.g.
        :func:`keypatch.experiments.photos.load_test_photos` (the CLI's ``--test-photos``).
    ratios : sequence of float
        Keep ratios; ``k = model.grid.count(r)``.
    strategies : sequence of str
        Registered proposer names.
    model : MAE or str
        A :func:`keypatch.load_mae` spec.
    out : path, optional
        Folder for ``compare.csv`` (one row per image, strategy and ratio), ``summary.csv``,
        ``summary.md`` and ``compare.png``.
    seed : int
        For randomised strategies: the batch of images starting at index ``s`` uses ``seed + s``,
        each image drawing from it and its own pixels. Each image is proposed on its own
        (``batch_size`` images are loaded together), so that ``seconds`` in ``compare.csv`` is that
        image's time.
    options : dict, optional
        Per-strategy options, e.g. ``{"greedy": {"start": "center"}, "attention": {"patch_mode": "resize"}}``.

    Returns
    -------
    rows, summary : list of dict

    Notes
    -----
    A strategy with ``prefix_consistent`` (greedy, lazy, local, random, attention) runs once per image
    to the largest ratio; the smaller ratios are its prefixes (identical to separate runs). Their rows
    then have ``seconds`` NaN and the run's ``evaluations``.
    """
    from tqdm.auto import tqdm

    from keypatch.geometry import list_image_files, load_readable
    from keypatch.proposers import get_proposer
    from keypatch.reconstructors import load_mae

    if isinstance(paths, dict):
        names, images = list(paths), list(paths.values())
    else:
        images = list_image_files(paths)
        names = [str(f) for f in images]
    if not images:
        raise ValueError("no images to compare on")
    mae = load_mae(model, device=device)
    options = options or {}
    proposers = {s: get_proposer(s, **options.get(s, {})) for s in strategies}
    ks = {r: mae.grid.count(r) for r in ratios}
    rows: list[dict] = []
    total = math.ceil(len(images) / batch_size) * len(strategies) * len(ratios)
    with tqdm(total=total, desc="compare", disable=not progress) as bar:
        for s in range(0, len(images), batch_size):
            kept, x = load_readable(images[s : s + batch_size], mae.config.image_size)  # unreadable: skipped
            chunk = [names[s + i] for i in kept]
            if not kept:
                bar.update(len(proposers) * len(ratios))
                continue
            x = x.to(mae.device)
            log.info("compare: images %d-%d of %d", s + 1, s + len(kept), len(images))
            for name, proposer in proposers.items():
                rows += _strategy_rows(name, proposer, mae, x, chunk, ks, seed + s)
                bar.update(len(ratios))
    if not rows:
        raise ValueError(f"none of the {len(images)} images could be read")
    summary = summarize(rows)
    if out is not None:
        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        _write_csv(rows, out / "compare.csv")
        _write_csv(summary, out / "summary.csv")
        (out / "summary.md").write_text(markdown_table(summary) + "\n")
        plot_compare(summary, out / "compare.png", f"{len(images)} images, model {getattr(mae, 'model_id', model)}")
    return rows, summary
