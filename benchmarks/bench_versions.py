"""Exact greedy's speed across source trees of keypatch, timed in one run on the same photos.

Each variant is a source tree (a checkout, e.g. from ``git worktree add /tmp/kp-old <commit>``) and
optional environment variables. The variants run in fresh processes, in turn, ``--repeats`` times;
the table gives each one's median seconds per image, its ratio to the first variant and whether
its picks equal the first's.

Run from the repository root::

    git worktree add /tmp/kp-old <commit>
    python benchmarks/bench_versions.py old=/tmp/kp-old "old-env=/tmp/kp-old,SOME_VAR=0" new=.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
from pathlib import Path

WORKER = r"""
import json, sys, time, warnings
import torch
warnings.simplefilter("ignore")
from keypatch.experiments.photos import load_test_photos
from keypatch.geometry import load_images
from keypatch.proposers import get_proposer
from keypatch.reconstructors import load_mae
ratio, photos, threads = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
if threads:
    torch.set_num_threads(threads)
model = load_mae("default", device="cpu")
x = load_images(list(load_test_photos().values())[: photos or None], model.config.image_size)
greedy = get_proposer("greedy")
greedy.select(model, x[:1], 3, 0)  # warm-up
t0 = time.perf_counter()
patches = greedy.select(model, x, model.grid.count(ratio), 0)[0]
seconds = (time.perf_counter() - t0) / x.shape[0]
print(json.dumps({"seconds": seconds, "patches": patches.tolist(), "torch_threads": torch.get_num_threads()}))
"""


def parse_variant(text: str) -> tuple[str, Path, dict[str, str]]:
    """``LABEL=PATH[,VAR=VALUE...]`` -> (label, source tree, environment)."""
    label, _, rest = text.partition("=")
    path, *env = rest.split(",")
    if not label or not path:
        raise SystemExit(f"variant must be LABEL=PATH[,VAR=VALUE...], got {text!r}")
    return label, Path(path).resolve(), dict(e.split("=", 1) for e in env)


def run(tree: Path, env: dict[str, str], args) -> dict:
    full = {**os.environ, **env, "PYTHONPATH": str(tree)}
    out = subprocess.run([sys.executable, "-c", WORKER, str(args.ratio), str(args.photos), str(args.threads)],
                         env=full, capture_output=True, text=True, check=True, cwd=tree)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("variants", nargs="+", help="LABEL=PATH[,VAR=VALUE...]; the first is the baseline")
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--photos", type=int, default=0, help="the first N test photos (0 = all 13)")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    args = ap.parse_args(argv)
    variants = [parse_variant(v) for v in args.variants]
    flags = set(Path("/proc/cpuinfo").read_text().split()) if Path("/proc/cpuinfo").exists() else set()
    isa = "AVX512-BF16" if "avx512_bf16" in flags else "AVX512" if "avx512f" in flags else \
        "AVX2" if "avx2" in flags else "no AVX2"
    print(f"exact greedy, embedded model, r = {args.ratio}, {args.photos or 13} photos in one batch, CPU "
          f"({platform.machine()}, {os.cpu_count()} cores, {isa}), {args.repeats} repeats, variants in turn")
    times: dict[str, list[float]] = {label: [] for label, _, _ in variants}
    picks: dict[str, list] = {}
    for rep in range(args.repeats):
        for label, tree, env in variants:
            res = run(tree, env, args)
            times[label].append(res["seconds"])
            picks.setdefault(label, res["patches"])
            print(f"  repeat {rep + 1}: {label} {res['seconds']:.3f} s / image ({res['torch_threads']} threads)",
                  flush=True)
    base = variants[0][0]
    print("\n| variant | tree | s / image (median) | vs " + base + " | same picks |\n|---|---|---|---|---|")
    for label, tree, env in variants:
        med = statistics.median(times[label])
        extra = "".join(f", {k}={v}" for k, v in env.items())
        print(f"| {label} | {tree.name}{extra} | {med:.3f} | {med / statistics.median(times[base]):.2f}x | "
              f"{'yes' if picks[label] == picks[base] else 'NO'} |")


if __name__ == "__main__":
    main()
