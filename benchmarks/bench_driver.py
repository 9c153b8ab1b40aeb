"""The Ray engine's driver at scale: its peak memory, seconds per image and image bytes read.

A synthetic tree of small distinct PNG files (32x32 noise, 100 folders), proposed with ``--strategy
random`` on ``random:toy`` (no model work: what is left is listing, hashing, claiming, scheduling
and storing). Each row is one ``keypatch propose`` process (the driver), which reports at its exit
its peak resident memory (``ru_maxrss``) and the bytes it read through system calls
(``/proc/self/io`` ``rchar``: files, pipes and sockets). Rows:

- ``uri``: the tree given as a ``file://`` URI: Ray lists it on the driver (names and sizes), the
  workers read, hash and decode, the driver claims digests and stores records;
- ``paths``: the tree given as a folder: the driver lists and hashes every file itself.

Two tree sizes give the driver's memory per image (the slope) apart from its fixed part, and the
line is extrapolated to a million images. Run from the repository root::

    python benchmarks/bench_driver.py --files 10000 100000 --tree /tmp/kp-tree
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vitb import cpu_name  # noqa: E402

DRIVER = """
import json, resource, sys
from keypatch.cli.main import main
code = main(sys.argv[1:])
io = dict(line.split(": ") for line in open("/proc/self/io").read().splitlines())
print("DRIVER " + json.dumps({"code": code, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
                              "rchar": int(io["rchar"]), "read_bytes": int(io["read_bytes"])}))
"""


def make_tree(root: Path, n: int, side: int = 32) -> int:
    """``n`` distinct ``side`` x ``side`` noise PNGs in 100 folders under ``root`` (kept between runs);
    their total bytes."""
    rng = np.random.default_rng(0)
    for i in range(n):
        path = root / f"d{i % 100:02d}" / f"{i:07d}.png"
        if not path.exists():
            path.parent.mkdir(parents=True, exist_ok=True)
            pixels = rng.integers(0, 256, (side, side, 3), dtype=np.uint8)
            pixels[0, 0] = [i % 256, (i // 256) % 256, i // 65536]  # distinct contents
            Image.fromarray(pixels).save(path)
    return sum(f.stat().st_size for f in root.rglob("*.png") if int(f.stem) < n)


def subset(root: Path, n: int, dest: Path) -> Path:
    """A tree of the first ``n`` files of ``root`` as hard links (same bytes, no copy)."""
    for i in range(n):
        src = root / f"d{i % 100:02d}" / f"{i:07d}.png"
        link = dest / src.parent.name / src.name
        link.parent.mkdir(parents=True, exist_ok=True)
        os.link(src, link)
    return dest


def drive(source: str, out: Path, workers: int, batch: int, *extra: str) -> dict:
    """One ``keypatch propose`` driver process: its seconds, peak memory and bytes read."""
    args = ["propose", source, "--ratio", "0.1", "--strategy", "random", "--model", "random:toy",
            "--batch-size", str(batch), "--quiet", "--out", str(out), *extra]
    t0 = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", DRIVER, *args], capture_output=True, text=True)
    seconds = time.perf_counter() - t0
    line = next((x for x in done.stdout.splitlines() if x.startswith("DRIVER ")), None)
    if done.returncode or line is None:
        raise SystemExit(f"keypatch {' '.join(args)} failed:\n{done.stderr[-3000:]}")
    return {**json.loads(line[len("DRIVER "):]), "seconds": seconds}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--files", type=int, nargs="*", default=[10000, 100000], help="tree sizes (none: only --large)")
    ap.add_argument("--tree", type=Path, default=None, help="where the tree is kept (default: a temporary one)")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--rows", nargs="+", default=["uri", "paths"], choices=["uri", "paths"])
    ap.add_argument("--large", type=int, default=2000,
                    help="then the same rows on this many 256x256 noise PNGs (~200 KB each): what the driver reads "
                         "per image against the files' size (0: none)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        root = args.tree or tmp / "tree"
        t0 = time.perf_counter()
        make_tree(root, max(args.files, default=0))
        print(f"# {cpu_name()}, {os.cpu_count()} cores; tree of {max(args.files, default=0)} files made or found in "
              f"{time.perf_counter() - t0:.0f} s; --strategy random --model random:toy --batch-size {args.batch_size}, "
              f"ray: {args.workers} worker(s) x 1 CPU")
        print("\n| source | files | image MB | s | ms / image | driver peak MB | driver read (rchar) MB "
              "| read / image bytes |\n|---|---|---|---|---|---|---|---|")
        rows, sizes = [], {}
        for n in sorted(args.files):
            tree = subset(root, n, tmp / f"tree{n}")
            size = sizes[n] = sum(f.stat().st_size for f in tree.rglob("*.png"))
            for kind in args.rows:
                source = f"file://{tree.resolve()}" if kind == "uri" else str(tree)
                r = drive(source, tmp / f"out-{kind}-{n}", args.workers, args.batch_size,
                          "--engine", "ray", "--workers", str(args.workers))
                rows.append((kind, n, r))
                print(f"| {kind} | {n} | {size / 1e6:.0f} | {r['seconds']:.0f} | {1e3 * r['seconds'] / n:.2f} "
                      f"| {r['peak_mb']:.0f} | {r['rchar'] / 1e6:.0f} | {r['rchar'] / size:.2f} |", flush=True)
        if len(args.files) > 1:
            print("\nExtrapolated to 1,000,000 images (a line through the two sizes):")
            for kind in args.rows:
                (n0, a), (n1, b) = [(n, r) for k, n, r in rows if k == kind][:: len(args.files) - 1]
                per_mb = (b["peak_mb"] - a["peak_mb"]) / (n1 - n0)
                per_s = (b["seconds"] - a["seconds"]) / (n1 - n0)
                per_read = (b["rchar"] - a["rchar"]) / (n1 - n0)
                print(f"- {kind}: {per_mb * 1e3:.2f} KB, {1e3 * per_s:.2f} ms and {per_read / 1e3:.2f} KB read per "
                      f"image (the files hold {(sizes[n1] - sizes[n0]) / (n1 - n0) / 1e3:.2f} KB per image) -> "
                      f"{a['peak_mb'] + per_mb * (1e6 - n0):.0f} MB peak, "
                      f"{(a['seconds'] + per_s * (1e6 - n0)) / 3600:.1f} h of driver time for a million")
        if args.large:
            big = tmp / "large"
            size = make_tree(big, args.large, side=256) / args.large
            small = args.large // 4
            print(f"\nFiles of 256x256 noise ({size / 1e3:.0f} KB each): what the driver reads per image, from "
                  f"{small} to {args.large} files (the difference leaves out what it reads whatever the count: "
                  "Python modules, Ray's start-up)")
            print("\n| source | s | driver read (rchar) KB per further image | of a file's bytes |\n|---|---|---|---|")
            for kind in args.rows:
                got = {}
                for n in (small, args.large):
                    tree = subset(big, n, tmp / f"large{n}-{kind}")
                    source = f"file://{tree.resolve()}" if kind == "uri" else str(tree)
                    got[n] = drive(source, tmp / f"out-{kind}-large{n}", args.workers, args.batch_size,
                                   "--engine", "ray", "--workers", str(args.workers))
                per = (got[args.large]["rchar"] - got[small]["rchar"]) / (args.large - small)
                print(f"| {kind} | {got[args.large]['seconds']:.0f} | {per / 1e3:.1f} | {per / size:.2f} |", flush=True)

if __name__ == "__main__":
    main()
