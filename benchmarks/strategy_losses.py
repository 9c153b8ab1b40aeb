"""Every registered strategy's final ``L`` per photo, for a before/after table of a refactor.

Runs each strategy of ``keypatch.available()`` (default options, seed 0) on the 13 test photos in
one batched call per strategy and writes ``{strategy: {photo: L}}`` as JSON; with ``--compare
OTHER.json`` prints the largest relative difference per strategy against another run's file.

Run from the repository root::

    python benchmarks/strategy_losses.py --ratio 0.1 --out before.json
    python benchmarks/strategy_losses.py --ratio 0.1 --out after.json --compare before.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

import keypatch
from keypatch.experiments.photos import load_test_photos


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--model", default="default")
    ap.add_argument("--out", required=True)
    ap.add_argument("--compare", default="")
    ap.add_argument("--only", action="append", default=[], help="a strategy to run (repeat; default: all)")
    args = ap.parse_args()
    photos = load_test_photos()
    names = sorted(photos)
    model = keypatch.load_mae(args.model)
    out: dict[str, dict[str, float]] = {}
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  model {args.model}, r = {args.ratio}, {len(names)} photos, "
          f"torch {torch.__version__}, {torch.get_num_threads()} threads", flush=True)
    for name in args.only or keypatch.available():
        start = time.perf_counter()
        got = keypatch.propose_batch([photos[n] for n in names], args.ratio, name, model, seed=0)
        out[name] = {n: p.loss for n, p in zip(names, got, strict=True)}
        out[name + " patches"] = {n: p.patches for n, p in zip(names, got, strict=True)}  # type: ignore[assignment]
        print(f"{name}: {time.perf_counter() - start:.0f} s", flush=True)
    Path(args.out).write_text(json.dumps(out, indent=1))
    if args.compare:
        other = json.loads(Path(args.compare).read_text())
        print("\n| strategy | photos | same patches | largest relative change of L |")
        print("|---|---|---|---|")
        for name in (n for n in out if not n.endswith(" patches")):
            if name not in other:
                print(f"| {name} | - | - | not in {args.compare} |")
                continue
            same = sum(out[name + " patches"][n] == other[name + " patches"][n] for n in names)
            diff = max(abs(out[name][n] - other[name][n]) / other[name][n] for n in names)
            print(f"| {name} | {len(names)} | {same}/{len(names)} | {diff:.2e} |")
    sys.exit(0)


if __name__ == "__main__":
    main()
