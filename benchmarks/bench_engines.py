"""Engines side by side: the local engine on one and on two threads, and Ray Data with one-thread actors.

One run, the same 24 photos (the 13 test photos and 11 scikit-image samples, as files), model,
strategy and ratio for every row; each row writes its own fresh store. The row "2 processes x 1
thread" runs two one-thread local processes on one store at once (they share the images through
the store's claims): what two one-thread workers get from this machine without Ray, the ceiling
for Ray's two one-thread actors. Every row is a process started the way a user starts it
(``keypatch propose ... [--engine ray]``), so Ray's start-up is part of its time. Prints seconds,
images per second, the ratio to the local engine on one thread, and whether the stored picks
equal that row's; and the same after the first record was stored (the records' ``created``
times), which leaves out each row's start-up (Ray's: its local instance, the actors importing
torch and loading the model). Last, Ray Data's own start-up on this machine: a process that
imports Ray, starts a local instance and streams one row through a task and a pool of the same
number of actors that do nothing (no keypatch, no torch); with the two-process row's rate after
its first record it bounds what Ray can reach end to end here. Run from the repository root::

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
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_concurrent import make_photos  # noqa: E402
from bench_vitb import cpu_name  # noqa: E402

from keypatch.store import ResultStore  # noqa: E402


def run(photos: Path, out: Path, threads: int, *extra: str, processes: int = 1) -> tuple[float, float]:
    """Seconds of ``processes`` ``keypatch propose`` processes on ``threads`` torch threads each, started
    together on one store (several share the images through its claims), and their start (epoch)."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    cmd = [sys.executable, "-m", "keypatch.cli.main", "propose", str(photos), "--out", str(out), "--quiet", *extra]
    start, t0 = time.time(), time.perf_counter()
    procs = [subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
             for _ in range(processes)]
    errors = [p.communicate()[1] for p in procs]
    seconds = time.perf_counter() - t0
    if any(p.returncode for p in procs):
        raise SystemExit(f"{' '.join(cmd)} failed:\n{errors[0][-3000:]}")
    return seconds, start


BARE_RAY = """
import logging, sys
import ray, ray.data
workers = int(sys.argv[1])
ray.init(num_cpus=workers + 1, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
ray.data.DataContext.get_current().enable_progress_bars = False
class Nothing:
    def __call__(self, batch):
        return batch
ds = ray.data.from_items([{"x": i} for i in range(workers)], override_num_blocks=workers)
ds = ds.map_batches(lambda b: b, batch_size=1, num_cpus=0.5)
ds = ds.map_batches(Nothing, batch_size=1, num_cpus=1,
                    compute=ray.data.ActorPoolStrategy(size=workers, max_tasks_in_flight_per_actor=1))
next(iter(ds.iter_rows()))
"""


def bare_ray_startup(workers: int) -> float:
    """Seconds from a process's start to the first row of a do-nothing Ray Data pipeline (task + actor pool)."""
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", BARE_RAY, str(workers)], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"the bare Ray Data pipeline failed:\n{out.stderr[-3000:]}")
    return time.perf_counter() - t0


def stored(out: Path) -> tuple[dict[str, list[int]], list[float]]:
    """Picks per image, and when each record was stored (epoch seconds, sorted)."""
    with ResultStore(out / "results.sqlite", create=False) as s:
        records = list(s.records())
    return ({r.sha256: r.patches for r in records},
            sorted(datetime.fromisoformat(r.created).timestamp() for r in records))


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
        rows = [("local, 1 thread", 1, 1, [], 1), ("local, 2 threads", 2, 1, [], 2),
                ("local, 2 processes x 1 thread, one store", 1, 2, [], 2),
                (f"ray, {args.workers} workers x 1 thread", 1, 1,
                 ["--engine", "ray", "--workers", str(args.workers), "--cpus-per-worker", "1"], args.workers)]
        results = []
        for i, (label, threads, processes, extra, cores) in enumerate(rows):
            out = tmp / f"out{i}"
            seconds, start = run(tmp / "photos", out, threads, *common, *extra, processes=processes)
            results.append((label, seconds, start, *stored(out), cores))
        report(results)
        bare = bare_ray_startup(args.workers)
        pair = results[2]
        best = bare + len(pair[3]) / rate(pair[4])
        print(f"\nRay Data's own start-up here (process start to the first row, no model): {bare:.1f} s; with the "
              f"two processes' rate after their first record, Ray's best end to end on these {len(pair[3])} photos: "
              f"{best:.1f} s = {results[0][1] / best:.2f}x the local engine on one thread")


def rate(created: list[float]) -> float:
    """Images per second from the first record stored to the last."""
    return (len(created) - 1) / (created[-1] - created[0])


def report(results: list[tuple[str, float, float, dict[str, list[int]], list[float], int]]) -> None:
    """The table: end to end, and from the first record stored to the last (start-up left out), with
    the steady rate per worker (thread or actor) against the local engine's one thread: the
    efficiency per worker."""
    base_s, base_p = results[0][1], results[0][3]
    steady_base = rate(results[0][4])
    print("\n| engine | s | images / s | vs local, 1 thread | first record after (s) | images / s after it "
          "| vs local, 1 thread, after it | efficiency per worker, after it | same picks |"
          "\n|---|---|---|---|---|---|---|---|---|")
    for label, seconds, start, p, created, cores in results:
        same = "yes" if p == base_p else f"NO ({sum(p.get(k) == v for k, v in base_p.items())}/{len(base_p)})"
        steady = rate(created)
        print(f"| {label} | {seconds:.1f} | {len(p) / seconds:.3f} | {base_s / seconds:.2f}x "
              f"| {created[0] - start:.1f} | {steady:.3f} | {steady / steady_base:.2f}x "
              f"| {steady / steady_base / cores:.2f} | {same} |")


if __name__ == "__main__":
    main()
