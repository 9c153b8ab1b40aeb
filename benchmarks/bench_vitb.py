"""The paper's model at speed: exact KPP on ViT-B, float32 and ``mixed``, against the paper's loop.

One run, the same photos, weights and device for every row:

* the device's matrix-product peak, measured here (float32 and bfloat16 GEMMs of the decoder's
  shapes), and the CPU's flags (AVX512-BF16 / AMX or AVX2 only);
* the faithful re-implementation of the authors' loop (``reference_loop.py``, float32);
* keypatch's exact greedy in float32 and in ``mixed`` precision (bfloat16 screening, float32
  re-scoring), with the same picks checked against the loop;
* seconds per image, model TFLOP/s (the FLOPs of plain MAE evaluations, ``flops.py``) and their
  share of the measured peaks, the speed-ups over the loop, and ``mixed``'s re-scoring counts.

``random:base`` has the cost of the real ViT-B (``facebook/vit-mae-base``). Run from the
repository root::

    python benchmarks/bench_vitb.py                          # CPU: 2 photos, k = 5
    python benchmarks/bench_vitb.py --device cuda --ratio 0.1 --photos 8 --check 2 --no-loop
"""

from __future__ import annotations

import argparse
import platform
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from flops import greedy_flops  # noqa: E402
from reference_loop import reference_kpp  # noqa: E402

from keypatch.experiments.photos import load_test_photos  # noqa: E402
from keypatch.geometry import load_images  # noqa: E402
from keypatch.proposers import get_proposer  # noqa: E402
from keypatch.reconstructors import load_mae  # noqa: E402
from keypatch.reconstructors.precision import cpu_flags, native_bf16  # noqa: E402


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def gemm_peak(device: torch.device, dtype: torch.dtype, seconds: float = 2.0) -> float:
    """FLOP/s of the fastest of a few GEMMs shaped like the decoder's (rows x 512 -> 2048 and back)."""
    rows = 16384 if device.type == "cuda" else 3152
    shapes = [(rows, 512, 2048), (rows, 2048, 512), (rows, 512, 1536)]
    if device.type == "cuda":
        shapes.append((16384, 8192, 8192))
    best = 0.0
    for m, k, n in shapes:
        a = torch.randn(m, k, device=device, dtype=dtype)
        b = torch.randn(k, n, device=device, dtype=dtype)
        for _ in range(3):
            a @ b
        sync(device)
        reps, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < seconds / len(shapes):
            a @ b
            reps += 1
        sync(device)
        best = max(best, 2 * m * k * n * reps / (time.perf_counter() - t0))
    return best


def cpu_name() -> str:
    """The CPU's model name, family and model number from ``/proc/cpuinfo``."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        return platform.processor() or "cpu"
    info = dict(line.split(":", 1) for line in lines[:30] if ":" in line)
    info = {k.strip(): v.strip() for k, v in info.items()}
    return f"{info.get('model name', 'cpu')} (family {info.get('cpu family', '?')}, model {info.get('model', '?')})"


def describe(model_name: str, device: torch.device, threads: int | None = None) -> str:
    """One line naming the model, the device, the CPU's flags and the torch build."""
    flags = sorted(cpu_flags() & {"avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile"})
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else cpu_name()
    return (f"# {model_name} on {name} ({device}), CPU flags: {' '.join(flags) or 'none'}, "
            f"threads {threads or torch.get_num_threads()}, torch {torch.__version__}, "
            f"native bf16: {native_bf16(device)}")


def run_greedy(model, x: torch.Tensor, k: int, precision: str, batch: int):
    """Patches, seconds per image and the objective's counters of exact greedy at ``precision``."""
    proposer = get_proposer("greedy", precision=precision)
    proposer.select(model, x[:1], 2, 0)  # warm-up: kernels, the bfloat16 copy
    sync(x.device)
    patches, refined, widened = [], 0, 0
    t0 = time.perf_counter()
    for s in range(0, x.shape[0], batch):
        objective = proposer.objective(model, x[s : s + batch])
        p, _ = proposer.search(objective, k, [0] * objective.batch)
        patches.append(p)
        refined += objective.refined
        widened += objective.widened
    sync(x.device)
    return torch.cat(patches).cpu(), (time.perf_counter() - t0) / x.shape[0], refined, widened


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", default="random:base")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--photos", type=int, default=2, help="test photos to time (default 2)")
    ap.add_argument("--k", type=int, default=5, help="patches per image (default 5)")
    ap.add_argument("--ratio", type=float, help="instead of --k: round(ratio * 196) patches")
    ap.add_argument("--batch", type=int, default=1, help="images per search (default 1)")
    ap.add_argument("--threads", type=int, default=torch.get_num_threads())
    ap.add_argument("--no-loop", action="store_true", help="skip the paper's loop")
    ap.add_argument("--precisions", nargs="+", choices=["float32", "mixed", "bfloat16"], default=None,
                    help="greedy rows (default: float32, and mixed where bfloat16 is native; on AVX2-only "
                         "CPUs bfloat16 is emulated and several times slower than float32)")
    ap.add_argument("--check", type=int, default=0,
                    help="with --no-loop: photos whose mixed picks are checked against float32 (default 0)")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    warnings.simplefilter("ignore")  # non-square photos are noted
    model = load_mae(args.model, device=device)
    photos = load_test_photos()
    x = load_images(list(photos.values())[: args.photos], model.config.image_size).to(device)
    k = model.grid.count(args.ratio) if args.ratio else args.k
    print(describe(args.model, device, args.threads))
    print(f"# {x.shape[0]} photos, k = {k} (centre start), batch {args.batch}")
    peaks = {"float32": gemm_peak(device, torch.float32), "bfloat16": gemm_peak(device, torch.bfloat16)}
    print(f"measured GEMM peak: float32 {peaks['float32'] / 1e12:.3f} TFLOP/s, "
          f"bfloat16 {peaks['bfloat16'] / 1e12:.3f} TFLOP/s")
    work = greedy_flops(model.config, k)
    print(f"model FLOPs per image: {work / 1e12:.2f} TFLOP ({model.grid.n} patches, k = {k})")

    precisions = args.precisions or (["float32", "mixed"] if native_bf16(device) else ["float32"])
    rows = {}
    for precision in precisions:
        rows[precision] = run_greedy(model, x, k, precision, args.batch)
    loop = None
    if not args.no_loop:
        model32 = model.float()
        reference_kpp(model32, x[0], 2)  # warm-up
        sync(device)
        t0 = time.perf_counter()
        picks = torch.tensor([reference_kpp(model32, im, k)[0] for im in x])
        loop = (picks, (time.perf_counter() - t0) / x.shape[0])
    print(f"\n{'':10}{'s/image':>10}{'TFLOP/s':>10}{'% fp32 pk':>10}{'% bf16 pk':>10}{'vs loop':>9}  same picks")
    if loop is not None:
        rate = work / loop[1]
        print(f"{'loop':10}{loop[1]:10.2f}{rate / 1e12:10.3f}{100 * rate / peaks['float32']:10.1f}"
              f"{100 * rate / peaks['bfloat16']:10.1f}{1.0:9.2f}")
    reference = loop[0] if loop is not None else rows["float32"][0]
    for precision, (patches, seconds, *_) in rows.items():
        rate = work / seconds
        speedup = f"{loop[1] / seconds:9.2f}" if loop is not None else f"{'-':>9}"
        n_check = x.shape[0] if loop is not None else args.check
        same = bool((patches[:n_check] == reference[:n_check]).all()) if n_check else "-"
        print(f"{precision:10}{seconds:10.2f}{rate / 1e12:10.3f}{100 * rate / peaks['float32']:10.1f}"
              f"{100 * rate / peaks['bfloat16']:10.1f}{speedup}  {same}")
    if "mixed" not in rows:
        print("\nmixed: not run (bfloat16 is not native here; --precisions float32 mixed runs it)")
        return
    _, _, refined, widened = rows["mixed"]
    steps = x.shape[0] * (k - 1)
    print(f"\nmixed: {refined / steps:.1f} candidates re-scored in float32 per image and step "
          f"(of {model.grid.n - 1} to {model.grid.n - k + 1}); margin widened at {widened} of {steps} steps")


if __name__ == "__main__":
    main()
