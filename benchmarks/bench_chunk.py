"""Exact greedy's seconds per image against ``chunk_size`` (visible sets per MAE pass).

Run from the repository root::

    python benchmarks/bench_chunk.py                     # default model, 4 photos, r = 0.1

Prints one row per chunk size with its speed relative to the fastest, measured in the same run on
the same photos; all rows must choose the same patches (exact mode).
"""

from __future__ import annotations

import argparse
import time

import torch

from keypatch.experiments.photos import load_test_photos
from keypatch.geometry import load_images
from keypatch.proposers import get_proposer
from keypatch.reconstructors import load_mae


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default")
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--photos", type=int, default=4)
    ap.add_argument("--chunks", type=int, nargs="+", default=[16, 32, 64, 128, 256])
    ap.add_argument("--threads", type=int, default=0)
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    model = load_mae(args.model, device="cpu")
    photos = list(load_test_photos().values())[: args.photos]
    x = load_images(photos, model.config.image_size)
    k = model.grid.count(args.ratio)
    get_proposer("greedy").select(model, x[:1], 3, 0)  # warm-up
    rows, first = [], None
    for chunk in args.chunks:
        t0 = time.perf_counter()
        p, _, _ = get_proposer("greedy", chunk_size=chunk).select(model, x, k, 0)
        sec = (time.perf_counter() - t0) / x.shape[0]
        first = p if first is None else first
        rows.append((chunk, sec, bool(torch.equal(p, first))))
    best = min(s for _, s, _ in rows)
    print(f"model {model.model_id}, r = {args.ratio} (k = {k}), {x.shape[0]} photos in one batch, "
          f"{torch.get_num_threads()} threads")
    print("| chunk_size | s / image | vs fastest | same picks |\n|---|---|---|---|")
    for chunk, sec, same in rows:
        print(f"| {chunk} | {sec:.2f} | {sec / best:.2f}x | {'yes' if same else 'NO'} |")


if __name__ == "__main__":
    main()
