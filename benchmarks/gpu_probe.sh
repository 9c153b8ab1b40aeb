#!/usr/bin/env bash
# What a GPU gives keypatch, in one go, under 8 minutes: keypatch beside the machine's own CUDA torch,
# the CUDA tests, then benchmarks/gpu_probe.py (GEMM rates, exact greedy on random:base at r = 0.1 for
# 8 and 32 images per pass with mixed's re-scores and picks, ranked at 32 and 256 images per pass with
# its host syncs, the SDPA backends).
#   bash benchmarks/gpu_probe.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), torch.__version__)" || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout 100 python3 -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tail -3
timeout 370 python3 benchmarks/gpu_probe.py --device cuda 2>&1 | grep -v "InputNote\|return torch.stack" \
    | tee "$out/results_gpu_probe_$(date +%F).txt"
