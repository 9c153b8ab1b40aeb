"""``precision="mixed"`` against float32: the same picks on the test photos, and what it costs.

For each ``k``, exact greedy runs on all test photos (one batch) in float32 and in ``mixed``
(bfloat16 screening, float32 re-scoring near each image's minimum); it prints both times, whether
every photo's picks are identical, the largest difference of the step losses, the share of
candidates re-scored in float32, how often the margin widened and the largest relative bfloat16
error seen. Run from the repository root::

    python benchmarks/bench_mixed.py --model default --ratios 0.1 0.25
    python benchmarks/bench_mixed.py --model random:base --k 6
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vitb import describe  # noqa: E402

from keypatch.experiments.photos import load_test_photos  # noqa: E402
from keypatch.geometry import load_images  # noqa: E402
from keypatch.proposers import get_proposer  # noqa: E402
from keypatch.reconstructors import load_mae  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--ratios", type=float, nargs="*", default=[])
    ap.add_argument("--k", type=int, nargs="*", default=[])
    ap.add_argument("--photos", type=int, default=13)
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # non-square photos are noted
    device = torch.device(args.device)
    model = load_mae(args.model, device=device)
    x = load_images(list(load_test_photos().values())[: args.photos], model.config.image_size).to(device)
    print(describe(args.model, device))
    ks = [model.grid.count(r) for r in args.ratios] + args.k
    print(f"# {x.shape[0]} photos in one batch, greedy from the centre\n")
    print(f"{'k':>4}{'fp32 s':>9}{'mixed s':>9}{'speed-up':>9}  same picks  {'max |dL|':>9}"
          f"{'re-scored':>10}{'widened':>8}{'max rel err':>12}")
    for k in ks:
        out = {}
        for precision in ("float32", "mixed"):
            proposer = get_proposer("greedy", precision=precision)
            objective = proposer.objective(model, x)
            t0 = time.perf_counter()
            patches, losses = proposer.search(objective, k, [0] * x.shape[0])
            out[precision] = (patches, losses, time.perf_counter() - t0, objective)
        (p32, l32, t32, _), (pm, lm, tm, obj) = out["float32"], out["mixed"]
        same = (p32 == pm).all(1)
        share = obj.refined / max(1, int(obj.evaluations.sum()))
        print(f"{k:4d}{t32:9.1f}{tm:9.1f}{t32 / tm:9.2f}  {int(same.sum()):2d} of {len(same):2d}  "
              f"{float((l32 - lm).abs().max()):9.1e}{100 * share:9.1f}%{obj.widened:8d}"
              f"{float(obj.relative_error.max()):12.4f}", flush=True)


if __name__ == "__main__":
    main()
