"""Greedy on one photo, quiet and with one other busy process, for several thread settings.

    python benchmarks/bench_threads.py [--ratio 0.05] [--repeats 3] [--photo chelsea]

Each setting runs in a fresh process (OpenMP reads its wait policy when torch loads), which times
``keypatch.propose`` on one test photo with the embedded model after one warm-up call. "busy" runs
the same with one other process spinning on a core meanwhile (a pure-Python loop, as another
user's job). Settings:

* ``default``: nothing set: :data:`keypatch.threads.TUNER` chooses all threads or one pass by pass
  (on because ``import keypatch`` puts MKL in its strict mode);
* ``all threads``: PyTorch's default count (the cores) fixed: ``set_threads(torch.get_num_threads())``
  (``--threads N``);
* ``all threads, MKL_CBWR=AUTO``: the same with MKL's default mode (what strict mode costs);
* ``passive``: all threads with ``OMP_WAIT_POLICY=PASSIVE`` (waiting threads sleep instead of spinning);
* ``1 thread``: ``set_threads(1)`` (``--threads 1``).

Prints the median seconds per setting and condition, and the ratios the thread defaults are chosen
by: each setting under contention against the best setting under contention, and quiet against
``all threads, MKL_CBWR=AUTO`` quiet (keypatch's behaviour before the tuner), all from this one run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time

CHILD = """
import json, sys, time
import numpy as np
import torch
import keypatch
from keypatch.experiments.photos import load_test_photos
from keypatch.threads import TUNER, set_threads
threads = int(sys.argv[1])
if threads >= 0:
    set_threads(threads or torch.get_num_threads())
image = np.asarray(load_test_photos()[sys.argv[3]])
mae = keypatch.load_mae("default")
keypatch.propose(image, float(sys.argv[2]), model=mae)  # warm-up
t = time.perf_counter()
r = keypatch.propose(image, float(sys.argv[2]), model=mae)
print(json.dumps({"seconds": time.perf_counter() - t, "threads": torch.get_num_threads(), "patches": r.patches,
                  "passes": TUNER.used}))
"""

HOG = "import os\np = os.getppid()\nwhile os.getppid() == p: pass"
"""Another user's job: a busy loop on one core, ending with this process."""

SETTINGS = {
    "default": ({}, -1),
    "all threads": ({}, 0),
    "all threads, MKL_CBWR=AUTO": ({"MKL_CBWR": "AUTO"}, 0),
    "passive": ({"OMP_WAIT_POLICY": "PASSIVE"}, 0),
    "1 thread": ({}, 1),
}
BASELINE = "all threads, MKL_CBWR=AUTO"


def run(env_extra: dict[str, str], threads: int, ratio: float, photo: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "MKL_CBWR")}
    env.update(env_extra)
    out = subprocess.run([sys.executable, "-c", CHILD, str(threads), str(ratio), photo], env=env,
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def cpu_name() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            text = f.read()
    except OSError:
        return platform.processor()
    def field(name: str) -> str:
        return next((ln.split(":", 1)[1].strip() for ln in text.splitlines() if ln.split(":")[0].strip() == name), "?")

    flags = field("flags").split()
    return (f"{field('model name')} (family {field('cpu family')} model {field('model')}, {os.cpu_count()} cpus; "
            f"{'avx512_bf16' if 'avx512_bf16' in flags else 'no avx512_bf16'})")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ratio", type=float, default=0.05)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--photo", default="chelsea")
    args = ap.parse_args()
    import torch

    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  {cpu_name()}  torch {torch.__version__}  "
          f"ratio {args.ratio}  photo {args.photo}  repeats {args.repeats}")
    times: dict[tuple[str, str], list[float]] = {}
    picks = set()
    for rep in range(args.repeats):  # interleaved, so drifts of the machine hit every setting alike
        for condition in ("quiet", "busy"):
            hog = None
            if condition == "busy":
                # a busy loop that ends with this process (even when it is killed)
                hog = subprocess.Popen([sys.executable, "-c", HOG])
                time.sleep(0.5)
            try:
                for name, (env, threads) in SETTINGS.items():
                    r = run(env, threads, args.ratio, args.photo)
                    times.setdefault((name, condition), []).append(r["seconds"])
                    picks.add(tuple(r["patches"]))
                    print(f"  rep {rep} {condition:5s} {name:28s} {r['seconds']:7.3f} s  ({r['threads']} threads; "
                          f"passes by thread count {r['passes'] or '-'})", flush=True)
            finally:
                if hog is not None:
                    hog.kill()
                    hog.wait()
    med = {k: statistics.median(v) for k, v in times.items()}
    best_busy = min(med[(n, "busy")] for n in SETTINGS)
    print(f"\nsame picks in every run: {len(picks) == 1}")
    print(f"{'setting':28s} {'quiet s':>8s} {'busy s':>8s} {'busy/quiet':>10s} {'busy vs best busy':>18s} "
          f"{'quiet speed vs baseline':>24s}")
    for name in SETTINGS:
        q, b = med[(name, "quiet")], med[(name, "busy")]
        print(f"{name:28s} {q:8.3f} {b:8.3f} {b / q:10.2f} {b / best_busy:17.2f}x "
              f"{med[(BASELINE, 'quiet')] / q:23.2f}x")
    print(f"(baseline: {BASELINE}, quiet)")


if __name__ == "__main__":
    main()
