"""Engines side by side: the local engine on one and on two threads, and Ray Data with one-thread actors.

One run, the same 24 photos (the 13 test photos and 11 scikit-image samples, as files), model,
strategy and ratio for every row; each row writes its own fresh store. Every row is a separate
process started the way a user starts it (``keypatch propose ... [--engine ray]``), so Ray's
start-up (the local instance, the actors loading the model) is part of its time. Prints seconds,
images per second, the ratio to the local engine on one thread, and whether the stored picks
equal that row's. Run from the repository root::

    python benchmarks/bench_engines.py                  # default model, exact greedy, r = 0.08
    python benchmarks/bench_engines.py --ratio 0.05 --workers 2
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_concurrent import make_photos  # noqa: E402
from bench_vitb import cpu_name  # noqa: E402

from keypatch.store import ResultStore  # noqa: E402


def run(photos: Path, out: Path, threads: int, *extra: str) -> float:
    """Seconds of one ``keypatch propose`` process on ``threads`` torch threads."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "keypatch.cli.main", "propose", str(photos), "--out", str(out), "--quiet", *extra]
    t0 = time.perf_counter()
    done = subprocess.run(cmd, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    if done.returncode:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stderr[-3000:]}")
    return seconds


def picks(out: Path) -> dict[str, list[int]]:
    with ResultStore(out / "results.sqlite", create=False) as s:
        return {r.sha256: r.patches for r in s.records()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--ratio", type=float, default=0.08)
    ap.add_argument("--strategy", default="greedy")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--photos", type=int, default=24)
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = make_photos(tmp / "photos", args.photos)
        common = ["--ratio", str(args.ratio), "--model", args.model, "--strategy", args.strategy]
        print(f"# {len(files)} photos, {args.model}, {args.strategy}, r = {args.ratio}; {cpu_name()}, "
              f"{os.cpu_count()} cores")
        rows = [("local, 1 thread", 1, []), ("local, 2 threads", 2, []),
                (f"ray, {args.workers} workers x 1 thread", 1,
                 ["--engine", "ray", "--workers", str(args.workers), "--cpus-per-worker", "1"])]
        results = []
        for i, (label, threads, extra) in enumerate(rows):
            out = tmp / f"out{i}"
            results.append((label, run(tmp / "photos", out, threads, *common, *extra), picks(out)))
        base_s, base_p = results[0][1], results[0][2]
        print("\n| engine | s | images / s | vs local, 1 thread | same picks |\n|---|---|---|---|---|")
        for label, seconds, p in results:
            same = "yes" if p == base_p else f"NO ({sum(p.get(k) == v for k, v in base_p.items())}/{len(base_p)})"
            print(f"| {label} | {seconds:.1f} | {len(p) / seconds:.3f} | {base_s / seconds:.2f}x | {same} |")


if __name__ == "__main__":
    main()
