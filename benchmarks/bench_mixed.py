"""``precision="mixed"`` against float32: the same picks on the test photos, and what it costs.

For each strategy (``--strategy``: exact greedy by default, ``ranked`` too) and each ``k``, the
search runs on the test photos (one batch) in float32 and in ``mixed`` (bfloat16 screening,
float32 re-scoring near each image's minimum), ``mixed`` once per ``--floors`` value (candidates
per image a calibrated step always re-scores, :data:`keypatch.objective.MIXED_FLOOR`; 8 is the
former policy); it prints the times, whether every photo's picks are float32's, the largest
difference of the final losses, the float32 re-scores per image and step and their share of the
scored sets, how often the margin widened and the largest relative bfloat16 error seen. Run from
the repository root::

    python benchmarks/bench_mixed.py --model default --ratios 0.1 0.25
    python benchmarks/bench_mixed.py --model random:base --k 4 --photos 4 --strategy greedy ranked
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

from keypatch import objective as objective_module  # noqa: E402
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
    ap.add_argument("--strategy", nargs="+", default=["greedy"])
    ap.add_argument("--floors", type=int, nargs="+", default=[objective_module.MIXED_FLOOR])
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # non-square photos are noted; a ranker fitted to another model
    device = torch.device(args.device)
    model = load_mae(args.model, device=device)
    x = load_images(list(load_test_photos().values())[: args.photos], model.config.image_size).to(device)
    print(describe(args.model, device))
    ks = [model.grid.count(r) for r in args.ratios] + args.k
    print(f"# {x.shape[0]} photos in one batch, from the centre\n")
    print(f"{'strategy':>9}{'k':>4}{'precision':>17}{'s':>8}{'speed-up':>9}  float32 picks  {'max |dL|':>9}"
          f"{'fp32/step':>10}{'share':>7}{'widened':>8}{'max rel err':>12}")
    default_floor = objective_module.MIXED_FLOOR
    for name in args.strategy:
        for k in ks:
            rows = [("float32", None)] + [("mixed", f) for f in args.floors]
            out = []
            for precision, floor in rows:
                objective_module.MIXED_FLOOR = default_floor if floor is None else floor
                proposer = get_proposer(name, precision=precision)
                objective = proposer.objective(model, x)
                t0 = time.perf_counter()
                patches, losses = proposer.search(objective, k, [0] * x.shape[0])
                out.append((patches, losses[:, -1], time.perf_counter() - t0, objective))
            objective_module.MIXED_FLOOR = default_floor
            p32, l32, t32, _ = out[0]
            for (precision, floor), (p, loss, t, obj) in zip(rows, out, strict=True):
                same = (p == p32).all(1)
                steps = x.shape[0] * max(1, k - 1)
                label = precision if floor is None else f"mixed, floor {floor}"
                print(f"{name:>9}{k:4d}{label:>17}{t:8.1f}{t32 / t:9.2f}  {int(same.sum()):5d} of {len(same):2d}   "
                      f"{float((l32 - loss).abs().max()):9.1e}{obj.refined / steps:10.1f}"
                      f"{100 * obj.refined / max(1, int(obj.evaluations.sum())):6.1f}%{obj.widened:8d}"
                      f"{float(obj.relative_error.max()):12.4f}", flush=True)


if __name__ == "__main__":
    main()
