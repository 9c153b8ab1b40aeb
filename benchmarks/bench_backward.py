"""Backward elimination against forward greedy at high keep ratios: evaluations, seconds, loss.

DQ keeps 80% of each image's patches; forward greedy then adds 156 patches one at a time. For
each ratio, both strategies run on all the photos in one batched call with the same model, device
and threads; the table gives seconds and MAE evaluations per image, their ratios (forward over
backward) and backward's final ``L`` against forward's (mean, best and worst photo).

Run from the repository root::

    python benchmarks/bench_backward.py                        # 13 photos, r = 0.5 and 0.8
    python benchmarks/bench_backward.py --photos 3 --ratios 0.8
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_threads import cpu_name  # noqa: E402

import keypatch  # noqa: E402
from keypatch.experiments.photos import load_test_photos  # noqa: E402


def run(images: list[np.ndarray], ratio: float, strategy: str, model) -> tuple[float, float, np.ndarray]:
    """Seconds per image, evaluations per image and final losses of one batched call."""
    start = time.perf_counter()
    out = keypatch.propose_batch(images, ratio, strategy, model)
    seconds = (time.perf_counter() - start) / len(images)
    return seconds, float(np.mean([p.evaluations for p in out])), np.array([p.loss for p in out])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratios", default="0.5,0.8")
    ap.add_argument("--model", default="default")
    ap.add_argument("--photos", type=int, default=0, help="first N test photos (0: all)")
    args = ap.parse_args()
    photos = load_test_photos()
    names = sorted(photos)[: args.photos or None]
    images = [photos[n] for n in names]
    model = keypatch.load_mae(args.model)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {cpu_name()}  torch {torch.__version__}, "
          f"{torch.get_num_threads()} threads  model {args.model}")
    print(f"photos ({len(names)}): {', '.join(names)}\n")
    print("| r | k | forward s / image | backward s / image | forward evals | backward evals | fewer evals | "
          "faster | backward L vs forward (mean) | (best) | (worst) |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for ratio in (float(r) for r in args.ratios.split(",")):
        fs, fe, fl = run(images, ratio, "greedy", model)
        bs, be, bl = run(images, ratio, "backward", model)
        gap = bl / fl - 1
        print(f"| {ratio} | {round(ratio * model.grid.n)} | {fs:.2f} | {bs:.2f} | {fe:.0f} | {be:.0f} | "
              f"{fe / be:.2f}x | {fs / bs:.2f}x | {gap.mean() * 100:+.2f}% | {gap.min() * 100:+.2f}% | "
              f"{gap.max() * 100:+.2f}% |",
              flush=True)
        print(f"  forward mean L {fl.mean():.5f}, backward mean L {bl.mean():.5f}")


if __name__ == "__main__":
    main()
