#!/usr/bin/env bash
# ViT-B (random:base, the real model's cost) exact KPP at r = 0.1 on a CUDA GPU, in one go, under
# 10 minutes: install keypatch beside the machine's CUDA torch, run the CUDA tests, check mixed's
# picks against float32 on 2 photos and time 8 (seconds per image, TFLOP/s, share of the peak).
#   bash benchmarks/gpu_vitb.sh [OUT_DIR]
set -euo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name())"
python3 -m pip install -q --no-deps -e . 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
python3 -m pip install -q pytest scikit-image 2>/dev/null || true
python3 -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tail -5
python3 benchmarks/bench_vitb.py --device cuda --ratio 0.1 --photos 8 --batch 8 --check 2 --no-loop \
    | tee "$out/results_vitb_gpu_$(date +%F).txt"
