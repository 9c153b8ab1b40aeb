"""``ranked``'s options against exact greedy's losses, photo by photo, without rerunning greedy.

Exact greedy's trajectory of each photo (to r = 0.25, every candidate scored) is read from the
ranker's cache (:func:`keypatch.ranker.trajectories.trajectories`, computed once where missing);
greedy's ``L`` at ``k`` is the best score of its step ``k - 1``. Each ``--variant`` (a JSON object
of ``ranked``'s options) then runs on all photos in one batch at each ``k``; a line gives the
evaluations per image, the seconds per image (not comparable across runs: the speed-up against
greedy belongs to ``bench_search.py``), the mean and worst gap to greedy's ``L`` and how many
photos lie more than 5% above it. Run from the repository root::

    python benchmarks/ranked_variants.py data/photos/val --variant '{}' --variant '{"moves": 3}'
"""

from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import torch

from keypatch.api import resolve_model
from keypatch.cli.ranker import default_cache
from keypatch.geometry.image import load_image
from keypatch.proposers import get_proposer
from keypatch.ranker.trajectories import trajectories

SUFFIXES = (".jpg", ".jpeg", ".png", ".webp")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("folders", nargs="+", help="photo folders")
    ap.add_argument("--variant", action="append", default=[], help="ranked's options as JSON (repeat; default {})")
    ap.add_argument("--ks", default="20,49", help="patch counts (at most 49: the trajectories reach r = 0.25)")
    ap.add_argument("--model", default="default")
    ap.add_argument("--cache", default="", help="the trajectories' cache (default: keypatch ranker's)")
    ap.add_argument("--json", default="", help="also write every photo's gap here")
    args = ap.parse_args()
    warnings.simplefilter("ignore")  # non-square photos are noted
    model = resolve_model(args.model, "cpu")
    files = sorted(p for f in args.folders for p in Path(f).iterdir() if p.suffix.lower() in SUFFIXES)
    trajs = trajectories(files, model, 49, Path(args.cache) if args.cache else default_cache())
    ks = [int(x) for x in args.ks.split(",")]
    greedy = {k: torch.tensor([float(t["scores"][k - 2].min()) for t in trajs]) for k in ks}
    images = torch.stack([load_image(str(p), model.config.image_size) for p in files])
    rows = []
    print(f"# {len(files)} photos; ranked against exact greedy's L from the cached trajectories")
    for text in args.variant or ["{}"]:
        options = json.loads(text)
        for k in ks:
            proposer = get_proposer("ranked", **options)
            t0 = time.perf_counter()
            _, losses, evaluations = proposer.select(model, images, k, 0)
            seconds = (time.perf_counter() - t0) / len(files)
            gap = (losses[:, -1].cpu() / greedy[k] - 1) * 100
            worst = int(gap.argmax())
            rows.append({"variant": options, "k": k, "evaluations": sum(evaluations) / len(evaluations),
                         "seconds": seconds, "mean": float(gap.mean()), "worst": float(gap.max()),
                         "worst_photo": files[worst].stem, "over_5": int((gap > 5).sum()),
                         "gaps": [round(float(g), 3) for g in gap]})
            r = rows[-1]
            print(f"{text:50s} k={k:2d} evals={r['evaluations']:6.1f} s={seconds:.3f} mean={r['mean']:+.2f}% "
                  f"worst={r['worst']:+.2f}% ({r['worst_photo']}) over 5%: {r['over_5']}", flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps({"photos": [f.stem for f in files], "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
