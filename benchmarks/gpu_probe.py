"""What a GPU gives keypatch, in one run of at most 8 minutes (``benchmarks/gpu_probe.sh``).

    python benchmarks/gpu_probe.py --device cuda                  # the full probe (random:base = ViT-B's cost)
    python benchmarks/gpu_probe.py --device cpu --quick           # the same sections, small, on a CPU

Sections, each a few lines of output:

1. **GEMM rates** on the decoder's shapes in bfloat16, float32 and (CUDA) TF32: the peaks the
   shares below are taken against.
2. **exact greedy** at ``--ratio`` on ``--model`` for ``--batches`` images per pass (the default
   precision, ``mixed`` where bfloat16 is native): seconds per image, model TFLOP/s (the FLOPs of
   plain MAE evaluations, ``flops.py``), share of the bfloat16 peak, and ``mixed``'s float32
   re-scores per image and step; with ``--check N`` the picks of N images against float32's.
3. **ranked** on ``--ranked-model`` (the embedded default model, whose ranker it ships) at
   ``--ranked-batches`` images per pass: images per second, the host synchronisations of one call
   as the code makes them (:class:`keypatch.syncs.HostSyncs`, any device) and (CUDA) as CUDA counts
   them (``torch.cuda.set_sync_debug_mode``), in the default precision (float32 for that narrow
   model); with ``--check N`` its picks under ``mixed`` against float32's.
4. **SDPA backends** on a deep decoder's attention shapes: milliseconds per call of each backend
   that runs here.
5. **torch.compile** of the scoring pass (``context_losses``, ``dynamic=True``) on one shape of
   a greedy step (``--compile-sets`` sets of ``k`` patches, the default precision's screening
   model): the start-up a run would pay per shape (the first two compiled calls) and the steady
   pass against eager, with the largest relative difference of the losses. ``--no-compile`` skips it.

Images are the test photos, repeated to fill a batch.
"""

from __future__ import annotations

import argparse
import sys
import time
import warnings
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_vitb import describe, gemm_peak, run_greedy, sync  # noqa: E402
from flops import greedy_flops  # noqa: E402

from keypatch.experiments.photos import load_test_photos  # noqa: E402
from keypatch.geometry import load_images  # noqa: E402
from keypatch.objective import Objective  # noqa: E402
from keypatch.proposers import get_proposer  # noqa: E402
from keypatch.reconstructors import load_mae  # noqa: E402
from keypatch.reconstructors.precision import resolve_precision  # noqa: E402
from keypatch.reconstructors.scoring import context_losses  # noqa: E402
from keypatch.syncs import HostSyncs  # noqa: E402


def photos(model, count: int) -> torch.Tensor:
    """``count`` test photos (repeated), normalised, on the model's device."""
    arrays = list(load_test_photos().values())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        x = load_images(arrays, model.config.image_size)
    return x[torch.arange(count) % x.shape[0]].to(model.device)


def gemms(device: torch.device, seconds: float) -> dict[str, float]:
    """TFLOP/s of the decoder-shaped GEMMs per arithmetic."""
    out = {"bfloat16": gemm_peak(device, torch.bfloat16, seconds) / 1e12,
           "float32": gemm_peak(device, torch.float32, seconds) / 1e12}
    if device.type == "cuda":
        before = torch.backends.cuda.matmul.allow_tf32
        torch.backends.cuda.matmul.allow_tf32 = True
        try:
            out["tf32"] = gemm_peak(device, torch.float32, seconds) / 1e12
        finally:
            torch.backends.cuda.matmul.allow_tf32 = before
    return out


def ranked(model, x: torch.Tensor, k: int, batch: int) -> tuple[float, int, int | None]:
    """Images per second of ``ranked``, ``batch`` images per pass, and the host syncs of one call:
    as the code makes them (:class:`HostSyncs`) and (CUDA) as CUDA counts them."""
    proposer = get_proposer("ranked")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # a ranker fitted to another model: timing only
        proposer.select(model, x[:batch], k, 0)  # warm
        sync(x.device)
        t0 = time.perf_counter()
        for s in range(0, x.shape[0], batch):
            proposer.select(model, x[s : s + batch], k, 0)
        sync(x.device)
        rate = x.shape[0] / (time.perf_counter() - t0)
        with HostSyncs() as counted:
            proposer.select(model, x[:batch], k, 0)
        syncs = None
        if x.device.type == "cuda":
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
                try:
                    proposer.select(model, x[:batch], k, 0)
                finally:
                    torch.cuda.set_sync_debug_mode("default")
            syncs = sum("synchroniz" in str(w.message) for w in caught)
    return rate, counted.count, syncs


def same_picks(model, x: torch.Tensor, k: int, name: str) -> int:
    """Images whose picks of ``name`` under ``mixed`` are float32's (``mixed`` named: ``auto`` is float32
    for a narrow model such as the default one, where the check would compare float32 with itself)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        mixed = get_proposer(name, precision="mixed").select(model, x, k, 0)[0].cpu()
        exact = get_proposer(name, precision="float32").select(model, x, k, 0)[0].cpu()
    return sum(torch.equal(a, b) for a, b in zip(mixed, exact, strict=True))


def compiled(model, x: torch.Tensor, k: int, sets: int, reps: int) -> tuple[float, float, float, float]:
    """torch.compile of the scoring pass on ``sets`` sets of ``k`` patches: (start-up s: the first two
    compiled calls and one eager, eager s per pass, compiled s per pass, largest relative difference
    of the losses)."""
    objective = Objective(model, x)
    net, ctx = objective.screen_model, objective.screen_context  # the screen: most of a step's passes
    g = torch.Generator().manual_seed(0)
    visible = torch.stack([torch.randperm(model.grid.n, generator=g)[:k] for _ in range(sets)]).to(x.device)
    ii = (torch.arange(sets) % x.shape[0]).to(x.device)
    fn = torch.compile(context_losses, dynamic=True)
    with torch.no_grad():
        t0 = time.perf_counter()
        out = fn(net, ctx, visible, ii)
        ref = context_losses(net, ctx, visible, ii)
        fn(net, ctx, visible, ii)  # a second compile where the first call's guards do not hold after eager's
        sync(x.device)
        first = time.perf_counter() - t0
        per = []
        for f in (context_losses, fn):
            sync(x.device)
            t0 = time.perf_counter()
            for _ in range(reps):
                f(net, ctx, visible, ii)
            sync(x.device)
            per.append((time.perf_counter() - t0) / reps)
    return first, per[0], per[1], float(((out - ref).abs() / ref.abs()).max())


def sdpa(model, device: torch.device, sets: int, reps: int) -> dict[str, float]:
    """Milliseconds per attention call of each SDPA backend on the decoder's shapes (``sets`` sets)."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    cfg = model.config
    h = cfg.decoder_num_heads
    hd = cfg.decoder_embed_dim // h
    n1 = model.grid.n + 1
    dtype = torch.bfloat16 if resolve_precision("auto", device, cfg.embed_dim) != "float32" else torch.float32
    q, kk, v = (torch.randn(sets, h, n1, hd, device=device, dtype=dtype) for _ in range(3))
    out = {}
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION", "MATH"):
        backend = getattr(SDPBackend, name, None)
        if backend is None:
            continue
        try:
            with sdpa_kernel([backend]):
                F.scaled_dot_product_attention(q, kk, v)
                sync(device)
                t0 = time.perf_counter()
                for _ in range(reps):
                    F.scaled_dot_product_attention(q, kk, v)
                sync(device)
            out[name.lower()] = (time.perf_counter() - t0) / reps * 1e3
        except RuntimeError:  # not available for this device, dtype or shape
            continue
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--model", default="random:base")
    ap.add_argument("--ratio", type=float, default=0.1)
    ap.add_argument("--batches", type=int, nargs="+", default=[8, 32])
    ap.add_argument("--ranked-batches", type=int, nargs="+", default=[32, 256])
    ap.add_argument("--ranked-model", default="default", help="the model ranked runs on (its ranker's own)")
    ap.add_argument("--compile-sets", type=int, default=256, help="sets in the torch.compile section's pass")
    ap.add_argument("--no-compile", action="store_true", help="skip the torch.compile section")
    ap.add_argument("--check", type=int, default=8, help="images whose mixed picks are checked against float32's")
    ap.add_argument("--quick", action="store_true", help="small sizes (a CPU run of the same sections)")
    args = ap.parse_args()
    if args.quick:
        args.batches, args.ranked_batches, args.check, args.compile_sets = [2], [2, 4], 1, 32
    device = torch.device(args.device)
    model = load_mae(args.model, device=device)
    k = model.grid.count(args.ratio)
    if args.quick:
        k = min(k, 3)
    print(describe(args.model, device), flush=True)
    print(f"# {time.strftime('%Y-%m-%d %H:%M')}  k = {k}  precision auto = "
          f"{resolve_precision('auto', device, model.config.embed_dim)}", flush=True)
    peak = gemms(device, 0.5 if args.quick else 2.0)
    print("GEMM TFLOP/s (decoder shapes): " + ", ".join(f"{n} {v:.2f}" for n, v in peak.items()), flush=True)
    flop = greedy_flops(model.config, k)
    for batch in args.batches:
        x = photos(model, batch)
        _, seconds, refined, _ = run_greedy(model, x, k, "auto", batch)  # the default precision
        steps = (k - 1) * batch
        rate = flop / seconds / 1e12
        print(f"greedy, {batch} images per pass: {seconds:.3f} s/image, {rate:.2f} TFLOP/s, "
              f"{rate / peak['bfloat16'] * 100:.1f}% of the bf16 GEMM rate, {refined / max(1, steps):.1f} float32 "
              f"re-scores per image and step", flush=True)
    if args.check:
        same = same_picks(model, photos(model, args.check), k, "greedy")
        print(f"greedy: picks of mixed = float32's on {same} of {args.check} images", flush=True)
    small = load_mae(args.ranked_model, device=device)
    k_small = small.grid.count(args.ratio)
    for batch in args.ranked_batches:
        rate, counted, syncs = ranked(small, photos(small, batch), k_small, batch)
        print(f"ranked on {args.ranked_model} ({resolve_precision('auto', device, small.config.embed_dim)}), "
              f"k = {k_small}, {batch} images per pass: {rate:.1f} images/s, "
              f"{counted} host syncs per call as the code makes them"
              + (f", {syncs} as CUDA counts them" if syncs is not None else ""), flush=True)
    if args.check:
        same = same_picks(small, photos(small, args.check), k_small, "ranked")
        print(f"ranked: picks of mixed = float32's on {same} of {args.check} images", flush=True)
    times = sdpa(model, device, 64 if args.quick else 512, 3 if args.quick else 20)
    print("SDPA ms per call (decoder shapes): " + (", ".join(f"{n} {v:.2f}" for n, v in times.items()) or "none"),
          flush=True)
    if not args.no_compile:
        try:
            first, eager, fast, diff = compiled(model, photos(model, 2), k, args.compile_sets, 3 if args.quick else 10)
        except Exception as exc:  # noqa: BLE001 - a compiler missing on the lent machine is a finding, not a crash
            print(f"torch.compile of the scoring pass failed: {type(exc).__name__}: {str(exc)[:300]}", flush=True)
        else:
            print(f"torch.compile of the scoring pass ({args.compile_sets} sets of {k}): start-up {first:.1f} s, "
                  f"eager {eager * 1e3:.1f} ms, compiled {fast * 1e3:.1f} ms per pass ({eager / fast:.2f}x), "
                  f"largest relative difference {diff:.1e}", flush=True)


if __name__ == "__main__":
    main()
