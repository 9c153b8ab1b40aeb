"""``keypatch propose`` on a machine other work shares: default threads against ``--threads 1`` and ``2``.

    python benchmarks/bench_busy.py [--ratio 0.1] [--photos 6] [--busy 0 1 3] [--repeats 2] [--before DIR]
                                    [--option STRATEGY:NAME=VALUE ...]

For each strategy (``greedy``, ``ranked``) and each load (0, 1 or 3 other processes spinning on a
core, ``python3 -c "while 1: pass"`` as another user's job), a fresh process runs
``keypatch.batch.run_propose`` on the same photos (the first ``--photos`` test photos, one image per
batch as the command line does, the embedded model) with each thread setting: ``default`` (the
tuner), ``1`` and ``2`` (``--threads N``). ``--before DIR`` adds ``before``: the default threads
of the keypatch in the checkout ``DIR`` (imported from there), on the quiet machine only.
``--option ranked:reach=2`` gives a strategy an option in every setting, ``before`` included (so that
a checkout whose defaults differ runs the same search).
Settings and loads are interleaved, repeats outermost, so a drift of the machine hits all alike.

Prints each run, then per strategy and load: the median seconds of each setting, and the default's
ratio to the best of ``1`` and ``2``; on the quiet machine also default against ``before``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_threads import HOG, cpu_name  # noqa: E402

CHILD = """
import json, sys, tempfile, time
from pathlib import Path
from PIL import Image
import keypatch
from keypatch.batch import run_propose
from keypatch.experiments.photos import load_test_photos
from keypatch.threads import TUNER, set_threads
threads, strategy, ratio, count = sys.argv[1], sys.argv[2], float(sys.argv[3]), int(sys.argv[4])
options = json.loads(sys.argv[5])
if threads != "default":
    set_threads(int(threads))
work = Path(tempfile.mkdtemp())
photos = list(load_test_photos().items())[:count]
files = []
for name, array in photos:
    files.append(work / f"{name}.png")
    Image.fromarray(array).save(files[-1])
run_propose(files[:1], 0.02, strategy, out_dir=work / "warm", progress=False, **options)  # model load, first passes
t = time.perf_counter()
s = run_propose(files, ratio, strategy, out_dir=work / "out", progress=False, **options)
seconds = time.perf_counter() - t
print(json.dumps({"seconds": seconds, "done": s["done"], "used": {str(k): v for k, v in TUNER.used.items()}
                  if hasattr(TUNER, "used") else {}}))
"""


def run(threads: str, strategy: str, ratio: float, photos: int, path: str | None, options: dict) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_CBWR")}
    if path:
        env["PYTHONPATH"] = path
    with tempfile.TemporaryDirectory() as cwd:  # not the checkout: its keypatch would shadow PYTHONPATH's
        argv = [sys.executable, "-c", CHILD, threads, strategy, str(ratio), str(photos), json.dumps(options)]
        out = subprocess.run(argv, env=env, capture_output=True, text=True, check=True, cwd=cwd)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--photos", type=int, default=6)
    ap.add_argument("--busy", type=int, nargs="+", default=[0, 1, 3])
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--strategies", nargs="+", default=["ranked", "greedy"])
    ap.add_argument("--before", default=None, help="a checkout whose keypatch is the baseline (quiet runs only)")
    ap.add_argument("--option", action="append", default=[], metavar="STRATEGY:NAME=VALUE",
                    help="an option of one strategy in every setting (repeatable; values as JSON, else strings)")
    args = ap.parse_args()
    options: dict[str, dict] = {s: {} for s in args.strategies}
    for item in args.option:
        strategy, _, pair = item.partition(":")
        name, _, value = pair.partition("=")
        try:
            options.setdefault(strategy, {})[name] = json.loads(value)
        except json.JSONDecodeError:
            options.setdefault(strategy, {})[name] = value
    import torch

    here = str(Path(__file__).resolve().parents[1])
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {cpu_name()}  torch {torch.__version__}  ratio {args.ratio}  "
          f"{args.photos} photos  busy {args.busy}  repeats {args.repeats}  before {args.before}  options {options}",
          flush=True)
    times: dict[tuple[str, int, str], list[float]] = {}
    for rep in range(args.repeats):
        for busy in args.busy:
            hogs = [subprocess.Popen([sys.executable, "-c", HOG]) for _ in range(busy)]
            time.sleep(0.5 if hogs else 0)
            try:
                for strategy in args.strategies:
                    settings = [("default", here), ("1", here), ("2", here)]
                    if args.before and busy == 0:
                        settings.append(("before", args.before))
                    for name, path in settings:
                        r = run("default" if name == "before" else name, strategy, args.ratio, args.photos, path,
                              options.get(strategy, {}))
                        times.setdefault((strategy, busy, name), []).append(r["seconds"])
                        print(f"  rep {rep} busy {busy} {strategy:7s} {name:8s} {r['seconds']:8.2f} s  "
                              f"(passes by thread count {r['used'] or '-'})", flush=True)
            finally:
                for h in hogs:
                    h.kill()
                    h.wait()
    print()
    print(f"{'strategy':8s} {'busy':>4s} {'default s':>9s} {'1 s':>8s} {'2 s':>8s} {'default/best':>12s} "
          f"{'before s':>9s} {'default/before':>14s}")
    for strategy in args.strategies:
        for busy in args.busy:
            med = {n: statistics.median(v) for (s, b, n), v in times.items() if s == strategy and b == busy}
            best = min(med["1"], med["2"])
            before = med.get("before")
            print(f"{strategy:8s} {busy:4d} {med['default']:9.2f} {med['1']:8.2f} {med['2']:8.2f} "
                  f"{med['default'] / best:11.2f}x {before if before else float('nan'):9.2f} "
                  f"{med['default'] / before if before else float('nan'):13.2f}x")


if __name__ == "__main__":
    main()
