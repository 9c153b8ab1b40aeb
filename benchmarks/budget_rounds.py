"""A patch budget over a pool against the same patches spread evenly, and two rounds against one.

    python benchmarks/budget_rounds.py PHOTOS [--budget 60] [--strategies greedy ranked] [--model default]

For each strategy, through the command line (``keypatch propose``) into fresh results folders:
``--budget B``; ``--ratio`` giving ``B / images`` patches per image; ``--budget B --after`` the first
(round 2); ``--budget 2B`` (one round). Every image's final loss is recomputed with
``keypatch.reconstruction_loss`` from the stored patches; prints the pool's mean loss of each, the
patches each image holds, and the checks: patches spent, round-1 patches kept in round 2.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import keypatch
from keypatch.geometry import list_image_files
from keypatch.store import ResultStore


def run(*args: str) -> float:
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "keypatch", "propose", *args, "-q"], check=True)
    return time.perf_counter() - t


def stored(out: Path) -> dict[str, list[int]]:
    with ResultStore(out, create=False, read_only=True) as store:
        return {Path(r.image_path).name: list(r.patches) for r in store.records()}


def mean_loss(files: list[Path], patches: dict[str, list[int]], model) -> float:
    return sum(keypatch.reconstruction_loss(f, patches[f.name], model) for f in files) / len(files)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("photos")
    ap.add_argument("--budget", type=int, default=60)
    ap.add_argument("--strategies", nargs="+", default=["greedy", "ranked"])
    ap.add_argument("--model", default="default")
    args = ap.parse_args()
    files = list_image_files(args.photos)
    model = keypatch.load_mae(args.model)
    each = args.budget / len(files)
    n = model.grid.n
    ratio = each / n
    assert model.grid.count(ratio) == round(each), "the budget must be a whole number of patches per image"
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {len(files)} images in {args.photos}  model {args.model}  "
          f"budget {args.budget} (= {each:g} per image, --ratio {ratio:.4f})")
    with tempfile.TemporaryDirectory() as tmp:
        for strategy in args.strategies:
            o = {name: Path(tmp) / f"{strategy}-{name}" for name in ("budget", "even", "round2", "double")}
            common = [args.photos, "--strategy", strategy, "--model", args.model]
            sec = {"budget": run(*common, "--budget", str(args.budget), "--out", str(o["budget"])),
                   "even": run(*common, "--ratio", f"{ratio:.6f}", "--out", str(o["even"])),
                   "round2": run(*common, "--budget", str(args.budget), "--after", str(o["budget"]),
                                 "--out", str(o["round2"])),
                   "double": run(*common, "--budget", str(2 * args.budget), "--out", str(o["double"]))}
            p = {k: stored(v) for k, v in o.items()}
            loss = {k: mean_loss(files, v, model) for k, v in p.items()}
            kept = all(p["round2"][f.name][: len(p["budget"][f.name])] == p["budget"][f.name] for f in files)
            count = {k: sum(map(len, v.values())) for k, v in p.items()}
            print(f"{strategy}: mean L  budget {loss['budget']:.5f}  even {loss['even']:.5f}  "
                  f"({(loss['budget'] / loss['even'] - 1) * 100:+.2f}%)   round 2 {loss['round2']:.5f}  "
                  f"one round of {2 * args.budget} {loss['double']:.5f}  "
                  f"({(loss['round2'] / loss['double'] - 1) * 100:+.2f}%)")
            print(f"  patches: budget {count['budget']}, even {count['even']}, round 2 {count['round2']} "
                  f"(round-1 patches kept: {kept}), one round {count['double']}")
            print("  seconds: " + ", ".join(f"{k} {v:.1f}" for k, v in sec.items()))
            print("  per image (budget / round 2 / one round): " + ", ".join(
                f"{f.stem[:14]} {len(p['budget'][f.name])}/{len(p['round2'][f.name])}/{len(p['double'][f.name])}"
                for f in files), flush=True)


if __name__ == "__main__":
    main()
