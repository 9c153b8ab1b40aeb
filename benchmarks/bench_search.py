"""Cheaper searches against exact greedy: seconds, MAE evaluations and loss, in one run.

For each ratio, every strategy below runs on all the photos (the 13 test photos and the default
model's validation photos, ``--val``) in one batched call (as a dataset run does) with the same
model, device and threads; each row gives seconds per image, the speed-up and the evaluation
ratio against exact greedy measured in the same run, and the final ``L`` relative to exact
greedy's (mean over the photos, the worst photo and its name). ``--base-photos`` then times the
strategies that matter on ``random:base`` (ViT-B's cost; its losses mean nothing) at r = 0.1.
``--plot`` draws loss gap against speed-up (the Pareto view).

Run from the repository root::

    python benchmarks/bench_search.py                                  # 13 + 21 photos, r = 0.05, 0.1, 0.25
    python benchmarks/bench_search.py --ratios 0.1 --photos 4 --val '' --base-photos 0   # quick look
    python benchmarks/bench_search.py --plot docs/search_pareto.png --json benchmarks/results_search.json

The photos are the test photographs of ``keypatch.experiments.photos`` (see ``benchmarks/README.md``).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_threads import cpu_name  # noqa: E402

import keypatch  # noqa: E402
from keypatch.data.codec import Codec  # noqa: E402
from keypatch.experiments.photos import load_test_photos  # noqa: E402

STRATEGIES: dict[str, tuple[str, dict]] = {
    "greedy (exact)": ("greedy", {}),
    "ranked (m=4 errors=2 rounds=1 reach=2 moves=3)": ("ranked", {}),
    "ranked reach=1 moves=2 (the former default)": ("ranked", {"reach": 1, "moves": 2}),
    "ranked errors=0 rounds=2 reach=1 moves=2 (an older default)": ("ranked", {"errors": 0, "rounds": 2, "reach": 1,
                                                                               "moves": 2}),
    "ranked reach=1 moves=3": ("ranked", {"reach": 1, "moves": 3}),
    "ranked rounds=2 within=2": ("ranked", {"rounds": 2, "within": 2}),
    "ranked rounds=3": ("ranked", {"rounds": 3}),
    "ranked moves=0 (every neighbour)": ("ranked", {"moves": 0}),
    "ranked keep=2 rounds=1 moves=0": ("ranked", {"keep": 2, "rounds": 1, "moves": 0}),
    "ranked errors=0": ("ranked", {"errors": 0}),
    "ranked rounds=0": ("ranked", {"rounds": 0}),
    "screened (m=6 keep=2 rounds=2)": ("screened", {}),
    "screened rounds=3": ("screened", {"rounds": 3}),
    "screened m=4": ("screened", {"m": 4}),
    "screened rounds=0": ("screened", {"rounds": 0}),
    "screened batched rounds=3": ("screened", {"batched": True, "rounds": 3}),
    "swap (stochastic eps=0.2, 2 rounds)": ("swap", {}),
    "local": ("local", {}),
    "stochastic eps=0.2": ("stochastic", {"eps": 0.2}),
}
"""Rows of the table: label -> (strategy, options). The first is the reference."""

ON_BASE = ("greedy (exact)", "ranked (m=4 errors=2 rounds=1 reach=2 moves=3)", "screened (m=6 keep=2 rounds=2)",
           "screened rounds=3",
           "swap (stochastic eps=0.2, 2 rounds)")
"""The strategies timed on ``random:base``."""


def run(images: list[np.ndarray], ratio: float, label: str, model) -> dict:
    """One strategy on all ``images`` in one call: seconds per image, evaluations and losses."""
    name, options = STRATEGIES[label]
    start = time.perf_counter()
    out = keypatch.propose_batch(images, ratio, name, model, seed=0, **options)
    seconds = (time.perf_counter() - start) / len(images)
    return {"seconds": seconds, "evaluations": float(np.mean([p.evaluations for p in out])),
            "losses": [p.loss for p in out]}


def table(ratio: float, k: int, rows: dict[str, dict], names: list[str]) -> list[dict]:
    """Print one ratio's table; return its rows with the ratios against the first."""
    ref = next(iter(rows.values()))
    print(f"\n## r = {ratio} (k = {k}), {len(ref['losses'])} photos in one call\n")
    print("| strategy | s / image | speed-up | MAE evals / image | fewer evals | loss vs greedy (mean) | (worst) "
          "| worst photo |")
    print("|---|---|---|---|---|---|---|---|")
    out = []
    for label, r in rows.items():
        gap = np.array(r["losses"]) / np.array(ref["losses"]) - 1
        row = {"ratio": ratio, "strategy": label, "seconds": r["seconds"], "speedup": ref["seconds"] / r["seconds"],
               "evaluations": r["evaluations"], "fewer": ref["evaluations"] / r["evaluations"],
               "mean_gap": float(gap.mean()), "worst_gap": float(gap.max()), "losses": r["losses"]}
        out.append(row)
        print(f"| {label} | {r['seconds']:.3f} | {row['speedup']:.1f}x | {r['evaluations']:.0f} | "
              f"{row['fewer']:.1f}x | {row['mean_gap'] * 100:+.2f}% | {row['worst_gap'] * 100:+.2f}% | "
              f"{names[int(gap.argmax())] if gap.max() > 0 else '-'} |", flush=True)
    return out


def plot(rows: list[dict], path: str) -> None:
    """Loss gap (mean, with the worst photo as a bar) against speed-up, one panel per ratio."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ratios = sorted({r["ratio"] for r in rows})
    fig, axes = plt.subplots(1, len(ratios), figsize=(5 * len(ratios), 4.2), squeeze=False)
    labels = list(dict.fromkeys(r["strategy"] for r in rows))
    colours = {label: plt.cm.tab10(i % 10) for i, label in enumerate(labels)}
    for ax, ratio in zip(axes[0], ratios, strict=True):
        for r in (r for r in rows if r["ratio"] == ratio):
            mean, worst = r["mean_gap"] * 100, r["worst_gap"] * 100
            ax.errorbar(r["speedup"], mean, yerr=[[0], [max(worst - mean, 0)]], fmt="o", capsize=3,
                        color=colours[r["strategy"]], label=r["strategy"])
        ax.axhline(0, color="grey", lw=0.8)
        ax.axvline(10, color="grey", lw=0.8, ls=":")
        ax.axhline(5, color="grey", lw=0.8, ls=":")
        ax.set_xscale("log")
        ax.set_xlabel("speed-up over exact greedy (same run)")
        ax.set_ylabel("final L vs greedy, % (dot: mean; bar: worst photo)")
        ax.set_title(f"r = {ratio}")
    handles, names = axes[0][0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=3, fontsize=8)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    fig.savefig(path, dpi=110)
    print(f"plot: {path}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratios", default="0.05,0.1,0.25")
    ap.add_argument("--model", default="default")
    ap.add_argument("--photos", type=int, default=0, help="first N test photos (0: all)")
    ap.add_argument("--no-test", action="store_true", help="no test photos: the --val folder's alone")
    ap.add_argument("--val", default="data/photos/val",
                    help="the default model's validation photos, added to the test photos ('' or missing: none)")
    ap.add_argument("--base-photos", type=int, default=2, help="photos timed on random:base at r = 0.1 (0: skip)")
    ap.add_argument("--only", action="append", default=[], metavar="LABEL",
                    help="a row's label to run (repeat for more; default: all; greedy always runs)")
    ap.add_argument("--ranker", default="", help="a ranker file for every ranked row (default: the shipped one)")
    ap.add_argument("--plot", default="")
    ap.add_argument("--json", default="")
    args = ap.parse_args()
    if args.ranker:
        for label, (name, options) in STRATEGIES.items():
            if name == "ranked":
                STRATEGIES[label] = (name, {**options, "ranker": args.ranker})
    photos = load_test_photos()
    names = [] if args.no_test else sorted(photos)[: args.photos or None]
    images = [photos[n] for n in names]
    val = sorted(p for p in Path(args.val).glob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png", ".webp")) \
        if args.val and Path(args.val).is_dir() else []
    names += [f"val/{p.stem}" for p in val]
    images += [Codec.decode(p.read_bytes()) for p in val]  # decoded once, as the test photos are
    unknown = set(args.only) - set(STRATEGIES)
    if unknown:
        ap.error(f"unknown rows {sorted(unknown)}; rows: {list(STRATEGIES)}")
    labels = [s for s in STRATEGIES if not args.only or s in args.only or s == "greedy (exact)"]
    model = keypatch.load_mae(args.model)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {cpu_name()}  torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads  model {args.model} on {model.device}")
    print(f"photos ({len(names)}: {len(names) - len(val)} test, {len(val)} validation): {', '.join(names)}")
    rows: list[dict] = []
    for ratio in (float(r) for r in args.ratios.split(",") if r):  # --ratios '': random:base only
        k = round(ratio * model.grid.n)
        rows += table(ratio, k, {label: run(images, ratio, label, model) for label in labels}, names)
    if args.base_photos:
        base = keypatch.load_mae("random:base:0")
        imgs = images[: args.base_photos]
        timed = {label: run(imgs, 0.1, label, base) for label in ON_BASE if label in labels}
        ref = timed["greedy (exact)"]
        print(f"\n## random:base (ViT-B cost), r = 0.1, {len(imgs)} photos in one call\n")
        print("| strategy | s / image | speed-up | MAE evals / image |")
        print("|---|---|---|---|")
        for label, r in timed.items():
            print(f"| {label} | {r['seconds']:.2f} | {ref['seconds'] / r['seconds']:.1f}x | {r['evaluations']:.0f} |")
            rows.append({"ratio": 0.1, "model": "random:base", "strategy": label, "seconds": r["seconds"],
                         "speedup": ref["seconds"] / r["seconds"], "evaluations": r["evaluations"]})
    if args.json:
        Path(args.json).write_text(json.dumps({"cpu": cpu_name(), "photos": names, "rows": rows}, indent=1))
    if args.plot:
        plot([r for r in rows if "mean_gap" in r], args.plot)


if __name__ == "__main__":
    main()
