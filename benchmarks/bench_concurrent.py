"""Runs sharing one store: two concurrent ``keypatch propose`` runs vs one alone, a kill -9 and a rerun,
per-image random masks, and per-seed exports, on 24 real photos.

    python benchmarks/bench_concurrent.py [--ratio 0.05] [--model default] [--work DIR]

The 24 photos are the 13 test photos (scikit-image, scikit-learn, matplotlib) and 11 more
scikit-image samples. Every check prints its numbers; the wall-time ratio of the two concurrent runs
(the later of the two to finish) to one run alone is measured in the same invocation.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

EXTRA = ["camera", "coins", "moon", "page", "text", "clock", "brick", "grass", "gravel", "colorwheel", "horse",
         "logo", "cat"]


def make_photos(folder: Path, count: int = 24) -> list[Path]:
    """The 13 test photos plus scikit-image samples, as PNG files, ``count`` in all."""
    import skimage.data

    from keypatch.experiments.photos import save_test_photos

    folder.mkdir(parents=True, exist_ok=True)
    save_test_photos(folder)
    for name in EXTRA:
        if len(list(folder.glob("*.png"))) >= count:
            break
        try:
            arr = getattr(skimage.data, name)()
        except Exception:  # missing or needs a download
            continue
        arr = (arr.astype(np.uint8) * (255 if arr.dtype == bool else 1)) if arr.dtype != np.uint8 else arr
        Image.fromarray(arr).save(folder / f"{name}.png")
    files = sorted(folder.glob("*.png"))
    if len(files) < count:
        raise SystemExit(f"only {len(files)} photos could be made")
    return files[:count]


def propose(photos: Path, out: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "keypatch.cli.main", "propose", str(photos), "--out", str(out), "--quiet",
           *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(p: subprocess.Popen) -> str:
    out, err = p.communicate()
    if p.returncode != 0:
        raise SystemExit(f"propose failed ({p.returncode}): {err}")
    return out.strip().splitlines()[-1]


def records(out: Path) -> list:
    from keypatch.store import ResultStore

    with ResultStore(out, create=False) as s:
        return s.records()


def check(records_: list, n: int) -> str:
    keys = [(r.sha256, r.settings) for r in records_]
    return f"{len(records_)} records, {len(set(keys))} distinct, {len(keys) - len(set(keys))} duplicated" + (
        "" if len(set(keys)) == n == len(keys) else "  <-- WRONG")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--ratio", default="0.05")
    ap.add_argument("--model", default="default")
    ap.add_argument("--work", type=Path, default=Path("/tmp/keypatch-bench-concurrent"))
    args = ap.parse_args()
    shutil.rmtree(args.work, ignore_errors=True)
    photos = args.work / "photos"
    files = make_photos(photos)
    n = len(files)
    common = ["--ratio", args.ratio, "--model", args.model]
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")), "?")
    flags = next((line for line in open("/proc/cpuinfo") if line.startswith("flags")), "")
    print(f"CPU: {cpu}, {os.cpu_count()} cores, avx512_bf16={'avx512_bf16' in flags}, avx2={'avx2' in flags}")
    print(f"{n} photos; greedy, ratio {args.ratio}, model {args.model}\n")

    # 1. random: one mask per image, the same whatever the batch size
    masks = {}
    for bs in ("1", "7"):
        out = args.work / f"random-b{bs}"
        finish(propose(photos, out, "--strategy", "random", "--batch-size", bs, *common))
        masks[bs] = {r.sha256: tuple(r.patches) for r in records(out)}
    print(f"random: {len(set(masks['1'].values()))} different masks of {len(masks['1'])} images; "
          f"batch size 7 gives the same masks: {masks['1'] == masks['7']}")

    # 2. one run alone vs two concurrent runs
    t0 = time.perf_counter()
    line = finish(propose(photos, args.work / "alone", *common))
    alone = time.perf_counter() - t0
    print(f"\none run alone: {alone:.1f} s  [{line}]")
    t0 = time.perf_counter()
    a = propose(photos, args.work / "shared", *common)
    b = propose(photos, args.work / "shared", *common)
    lines = [finish(a), finish(b)]
    both = time.perf_counter() - t0
    print(f"two concurrent runs: {both:.1f} s = {both / alone:.2f}x one run alone")
    for i, line in enumerate(lines):
        print(f"  run {i + 1}: {line}")
    print("  " + check(records(args.work / "shared"), n))
    same = {r.sha256: r.patches for r in records(args.work / "alone")} == {
        r.sha256: r.patches for r in records(args.work / "shared")}
    print(f"  same picks as the run alone: {same}")

    # 3. kill -9 of one of two runs mid-run, then the same command again
    out = args.work / "killed"
    a = propose(photos, out, *common)
    b = propose(photos, out, *common)
    while True:
        time.sleep(0.5)
        try:
            if len(records(out)) >= n // 3:
                break
        except (FileNotFoundError, ValueError):
            continue
    os.kill(a.pid, signal.SIGKILL)
    a.wait()
    at_kill = len(records(out))
    line_b = finish(b)
    after_b = len(records(out))
    line_c = finish(propose(photos, out, *common))
    print(f"\nkill -9 of run 1 with {at_kill} records stored; run 2 then ended with {after_b} records "
          f"[{line_b}]; rerun: [{line_c}]")
    print("  " + check(records(out), n))

    # 4. three seeds in one store, each exported on its own from the CLI
    out = args.work / "seeds"
    for seed in ("0", "1", "2"):
        finish(propose(photos, out, "--strategy", "random", "--seed", seed, *common))
    for seed in ("0", "1", "2"):
        r = subprocess.run([sys.executable, "-m", "keypatch.cli.main", "export", "--out", str(out), "--strategy",
                            "random", "--seed", seed, "--json", str(out / f"seed{seed}.json"), "--no-pictures"],
                           capture_output=True, text=True)
        data = json.loads((out / f"seed{seed}.json").read_text())
        want = {r_.sha256 for r_ in records(out) if r_.options.get("seed") == int(seed)}
        print(f"export --seed {seed}: exit {r.returncode}, {len(data)} images ({len(want)} stored with seed {seed}); "
              f"{r.stdout.strip()}")


if __name__ == "__main__":
    main()
