#!/usr/bin/env bash
# The cheaper searches against exact greedy on a CUDA GPU, in one go, under 10 minutes: keypatch
# beside the machine's own CUDA torch, the CUDA tests, then bench_search.py at r = 0.1 and 0.25 on
# the default model (13 test photos + the validation photos when data/photos/val is there) and on
# random:base (ViT-B's cost) at r = 0.1 on 8 photos.
#   bash benchmarks/gpu_search.sh [OUT_DIR]
set -uo pipefail
cd "$(dirname "$0")/.."
out="${1:-.}"
python3 -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print(torch.cuda.get_device_name(), torch.__version__)" || exit 1
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
timeout 150 python3 -m pytest -q -p no:cacheprovider -m cuda tests 2>&1 | tail -5
timeout 400 python3 benchmarks/bench_search.py --ratios 0.1,0.25 --base-photos 8 \
    --only "ranked (m=4 errors=2 rounds=1 reach=2 moves=3)" --only "ranked reach=1 moves=2 (the former default)" --only "ranked moves=0 (every neighbour)" \
    --only "screened (m=6 keep=2 rounds=2)" --only "screened m=4" \
    2>&1 | grep -v "InputNote\|return torch.stack" | tee "$out/results_search_gpu_$(date +%F).txt"
