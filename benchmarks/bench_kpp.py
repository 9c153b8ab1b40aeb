"""Fast KPP, side by side: exact greedy vs the paper's loop, and the approximate strategies.

One run, the same photos, model and device for every row. For each ratio it prints, per
strategy: seconds per image, MAE evaluations per image and the final ``L`` relative to exact
greedy (mean and worst over the photos), and the speed-up of exact greedy over a faithful
re-implementation of the paper's loop (``reference_loop.py``), checking that both choose the same
patches.

Run from the repository root::

    python benchmarks/bench_kpp.py                       # default model, CPU, r = 0.1 and 0.25
    python benchmarks/bench_kpp.py --model random:small --photos 3 --ratios 0.1   # quick look

The photos are the 13 test photographs of ``keypatch.experiments.photos`` (samples shipped with
scikit-image, scikit-learn and matplotlib); see ``benchmarks/README.md``.
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import os
import platform
import statistics
import sys
import time
from functools import partial
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from reference_loop import reference_kpp  # noqa: E402

from keypatch.experiments.photos import TEST_PHOTOS, load_test_photos  # noqa: E402
from keypatch.geometry import load_images  # noqa: E402
from keypatch.objective import losses as set_losses
from keypatch.proposers import get_proposer  # noqa: E402
from keypatch.reconstructors import load_mae  # noqa: E402
from keypatch.reconstructors.precision import resolve_precision  # noqa: E402


def test_photos() -> tuple[list[str], list[np.ndarray]]:
    """The test photos (scikit-image, scikit-learn, matplotlib samples) available offline."""
    photos = load_test_photos()
    if len(photos) < len(TEST_PHOTOS):
        print(f"(only {len(photos)} of {len(TEST_PHOTOS)} test photos are installed)", file=sys.stderr)
    return list(photos), list(photos.values())


STRATEGIES = {
    # row label: (registry name, options)
    "greedy": ("greedy", {}),
    "lazy": ("lazy", {}),
    "stochastic": ("stochastic", {"eps": 0.1}),
    "stochastic eps=0.01": ("stochastic", {"eps": 0.01}),
    "multi": ("multi", {}),
    "local": ("local", {}),
    "swap (stochastic eps=0.2, 2 rounds)": ("swap", {}),
    "swap (greedy, 1 round)": ("swap", {"base": "greedy", "rounds": 1}),
}


def run_strategy(model, x: torch.Tensor, k: int, name: str, options: dict, batch: int, seed: int = 0):
    """Patches, evaluations and seconds per image of one strategy on all images ``x``."""
    proposer = get_proposer(name, **options)
    patches, evals = [], []
    t0 = time.perf_counter()
    for s in range(0, x.shape[0], batch):
        p, _, e = proposer.select(model, x[s : s + batch], k, seed + s)
        patches.append(p)
        evals.extend(e)
    seconds = (time.perf_counter() - t0) / x.shape[0]
    return torch.cat(patches), evals, seconds


def _worker(args):
    spec, images, k, threads = args
    torch.set_num_threads(threads)
    model = load_mae(spec, device="cpu")
    proposer = get_proposer("greedy")
    proposer.select(model, images[:1], 2, 0)  # warm-up (allocator, kernels)
    t0 = time.perf_counter()
    patches, _, _ = proposer.select(model, images, k, 0)
    return patches, time.perf_counter() - t0


def _reference_worker(args):
    spec, images, k, threads = args
    torch.set_num_threads(threads)
    model = load_mae(spec, device="cpu")
    reference_kpp(model, images[0], 3)  # warm-up
    t0 = time.perf_counter()
    patches = torch.tensor([reference_kpp(model, im, k)[0] for im in images])
    return patches, time.perf_counter() - t0


def run_workers(spec: str, x: torch.Tensor, k: int, workers: int, reference: bool = False):
    """Exact greedy (or the paper's loop) split over ``workers`` single-thread processes.

    Returns the patches and the seconds per image of the slowest process.
    """
    parts = [x[i::workers] for i in range(workers)]
    with mp.get_context("spawn").Pool(workers) as pool:
        out = pool.map(_reference_worker if reference else _worker, [(spec, p, k, 1) for p in parts])
    patches = torch.empty(x.shape[0], k, dtype=torch.long)
    for i, (p, _) in enumerate(out):
        patches[i::workers] = p
    return patches, max(t for _, t in out) / x.shape[0]


def interleaved(model, x: torch.Tensor, k: int, reference: bool):
    """Exact greedy one image per call and, if ``reference``, the paper's loop, photo by photo.

    The two are timed back to back on each photo, in alternating order (greedy first on even
    photos, the loop first on odd ones), so that slow drifts of a shared machine hit both alike;
    the per-photo time ratios are their paired speed-ups. Returns greedy's patches and seconds
    per photo, and the loop's (None when ``reference`` is False).
    """
    proposer = get_proposer("greedy")
    g_p, g_s, r_p, r_s = [], [], [], []
    for i in range(x.shape[0]):
        order = ("greedy", "loop") if i % 2 == 0 else ("loop", "greedy")
        for which in order:
            if which == "loop" and not reference:
                continue
            t0 = time.perf_counter()
            if which == "greedy":
                g_p.append(proposer.select(model, x[i : i + 1], k, 0)[0][0])
                g_s.append(time.perf_counter() - t0)
            else:
                r_p.append(torch.tensor(reference_kpp(model, x[i], k)[0]))
                r_s.append(time.perf_counter() - t0)
    if not reference:
        return torch.stack(g_p), g_s, None, None
    return torch.stack(g_p), g_s, torch.stack(r_p), r_s


def final_losses(model, x: torch.Tensor, patches: torch.Tensor) -> torch.Tensor:
    """float32 ``L`` of each image's whole set (the same formula for every strategy)."""
    return set_losses(model, x, patches, torch.arange(x.shape[0]))


def add_row(rows: list, model, x: torch.Tensor, g_loss: torch.Tensor, label: str, patches: torch.Tensor,
            evals: list[int], sec: float, note: str = "") -> None:
    """One table row: final loss of ``patches`` relative to exact greedy's (mean and worst photo)."""
    rel = final_losses(model, x[: patches.shape[0]], patches) / g_loss[: patches.shape[0]] - 1.0
    rows.append([label, f"{sec:.2f}", f"{statistics.mean(evals):.0f}",
                 f"{100 * rel.mean().item():+.2f}%", f"{100 * rel.max().item():+.2f}%", note])


def fmt_row(cells, widths):
    return "| " + " | ".join(str(c).ljust(w) for c, w in zip(cells, widths, strict=True)) + " |"


def _native_bf16() -> str:
    """The CPU's bf16 instruction sets ("no" without any): bf16 greedy is fast only with them."""
    try:
        flags = set(Path("/proc/cpuinfo").read_text().split())
    except OSError:
        flags = set()
    have = sorted(flags & {"avx512_bf16", "amx_bf16"})
    return "+".join(have) if have else "no"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="default", help="load_mae spec (default: the embedded model)")
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.1, 0.25])
    ap.add_argument("--photos", type=int, default=0, help="use only the first N photos (0 = all)")
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0 = torch's default)")
    ap.add_argument("--batch", type=int, default=0, help="images per select() call (0 = all at once)")
    ap.add_argument("--strategies", nargs="+", default=list(STRATEGIES), choices=list(STRATEGIES))
    ap.add_argument("--reference-ratios", type=float, nargs="*", default=None,
                    help="ratios at which to time the paper's loop (default: all)")
    ap.add_argument("--workers", type=int, default=2,
                    help="also time exact greedy in this many 1-thread processes (0 or 1: skip)")
    ap.add_argument("--bf16-photos", type=int, default=2,
                    help="photos for the bfloat16 greedy row (0: skip; slow on CPUs without bf16)")
    args = ap.parse_args(argv)

    if args.threads:
        torch.set_num_threads(args.threads)
    names, arrays = test_photos()
    if args.photos:
        names, arrays = names[: args.photos], arrays[: args.photos]
    model = load_mae(args.model, device="cpu")
    x = load_images(arrays, model.config.image_size)
    n_img = x.shape[0]
    batch = args.batch or n_img
    ref_ratios = args.ratios if args.reference_ratios is None else args.reference_ratios
    c = model.config
    print(f"model {model.model_id}: encoder {c.depth}x{c.embed_dim}, decoder {c.decoder_depth}x{c.decoder_embed_dim}, "
          f"grid {model.grid.rows}x{model.grid.cols}")
    print(f"device cpu ({platform.processor() or platform.machine()}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} torch threads, {torch.backends.cpu.get_cpu_capability()}, "
          f"native bf16: {_native_bf16()}), torch {torch.__version__}")
    print(f"photos ({n_img}): {', '.join(names)}")
    exact = resolve_precision("auto", "cpu", c.embed_dim)  # greedy's default precision for this model here
    # warm-up: first-call costs (allocator, kernels) are not part of any row
    get_proposer("greedy").select(model, x[:1], 3, 0)

    for ratio in args.ratios:
        k = model.grid.count(ratio)
        print(f"\n## r = {ratio} (k = {k} of {model.grid.n} patches), {n_img} photos, "
              f"{batch} image(s) per call\n")
        rows: list[list[str]] = []
        g_patches, g_evals, g_sec = run_strategy(model, x, k, "greedy", {}, batch)
        g_loss = final_losses(model, x, g_patches)
        add = partial(add_row, rows, model, x, g_loss)

        add(f"greedy (exact, {exact})", g_patches, g_evals, g_sec, "all photos in one batch")
        p1, s1, rp, r1 = interleaved(model, x, k, ratio in ref_ratios)
        same = bool(torch.equal(p1, g_patches))
        add(f"greedy (exact, {exact}, 1 image/call)", p1, g_evals, statistics.mean(s1),
            ("same picks" if same else "PICKS DIFFER") + ("; interleaved with the loop" if rp is not None else ""))
        if args.workers > 1:
            pw, sw = run_workers(args.model, x, k, args.workers)
            same = bool(torch.equal(pw, g_patches))
            add(f"greedy (exact, {exact}, {args.workers} procs x 1 thread)", pw, g_evals, sw,
                "same picks" if same else "PICKS DIFFER")
        ref_sec = None
        if rp is not None:
            ref_sec = statistics.mean(r1)
            same = int((rp == g_patches).all(dim=1).sum())
            add("paper's loop (re-implemented)", rp, g_evals, ref_sec, f"same picks as greedy: {same}/{n_img}")
            if args.workers > 1:
                rpw, ref_sw = run_workers(args.model, x, k, args.workers, reference=True)
                same = int((rpw == g_patches).all(dim=1).sum())
                add(f"paper's loop ({args.workers} procs x 1 thread)", rpw, g_evals, ref_sw,
                    f"same picks as greedy: {same}/{n_img}")
        if args.bf16_photos:
            nb = min(args.bf16_photos, n_img)
            pb, eb, sb = run_strategy(model, x[:nb], k, "greedy", {"precision": "bfloat16"}, batch)
            same = int((pb == g_patches[:nb]).all(dim=1).sum())
            same_set = int((pb.sort(dim=1).values == g_patches[:nb].sort(dim=1).values).all(dim=1).sum())
            add("greedy (bfloat16)", pb, eb, sb, f"{nb} photos; same picks {same}/{nb}, same set {same_set}/{nb}")
        for label in args.strategies:
            if label == "greedy":
                continue
            name, opts = STRATEGIES[label]
            p, e, s = run_strategy(model, x, k, name, opts, batch)
            add(f"{label}", p, e, s, f"{g_evals[0] / statistics.mean(e):.1f}x fewer evaluations")
        head = ["strategy", "s / image", "MAE evals / image", "loss vs greedy (mean)", "(worst)", "note"]
        widths = [max(len(str(r[i])) for r in rows + [head]) for i in range(len(head))]
        print(fmt_row(head, widths))
        print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
        for r in rows:
            print(fmt_row(r, widths))
        print(f"\nmean final L of exact greedy: {g_loss.mean().item():.4f}")
        if ref_sec is not None:
            paired = [r / g for r, g in zip(r1, s1, strict=True)]
            print(f"exact greedy vs the paper's loop: {ref_sec / g_sec:.2f}x faster ({batch} image(s) per call)",
                  end="")
            print(f", {ref_sec / statistics.mean(s1):.2f}x one image at a time (paired per photo: median "
                  f"{statistics.median(paired):.2f}x, range {min(paired):.2f}-{max(paired):.2f}x)", end="")
            if args.workers > 1:
                print(f", {ref_sw / sw:.2f}x when both run in {args.workers} one-thread processes", end="")
            print()


if __name__ == "__main__":
    main()
