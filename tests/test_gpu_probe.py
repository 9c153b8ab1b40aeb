"""``benchmarks/gpu_probe.py``, the one script a lent GPU runs, works before it is lent: its
``--quick`` run on this CPU prints every section with numbers (a broken probe would waste the GPU's
minutes)."""

import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_the_gpu_probe_runs_every_section_on_a_cpu():
    out = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "gpu_probe.py"), "--device", "cpu", "--quick",
                          "--model", "random:small:0"], capture_output=True, text=True, timeout=600, check=True,
                         cwd=ROOT).stdout
    assert re.search(r"GEMM TFLOP/s \(decoder shapes\): bfloat16 [\d.]+, float32 [\d.]+", out)
    assert re.search(r"greedy, 2 images per pass: [\d.]+ s/image, [\d.]+ TFLOP/s, [\d.]+% of the bf16 GEMM rate, "
                     r"[\d.]+ float32 re-scores per image and step", out)
    assert re.search(r"greedy: picks of mixed = float32's on [01] of 1 images", out)
    assert re.search(r"ranked on default \(float32\), k = 20, 4 images per pass: [\d.]+ images/s, "
                     r"\d+ host syncs per call", out)
    assert re.search(r"ranked: picks of mixed = float32's on [01] of 1 images", out)
    assert re.search(r"SDPA ms per call \(decoder shapes\): \w+ [\d.]+", out)
    assert re.search(r"torch.compile of the scoring pass \(32 sets of 3\): start-up [\d.]+ s, eager [\d.]+ ms, "
                     r"compiled [\d.]+ ms per pass \([\d.]+x\), largest relative difference", out)
