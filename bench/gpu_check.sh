#!/usr/bin/env bash
# Everything GPU-side in one go (for a machine with a CUDA GPU): GPU tests, then the benchmark.
# Optional: reference wheels in .whl/ (image-reward 1.5 --no-deps, transformers 4.55.4, tokenizers 0.21.x,
# fairscale 0.4.13, timm 0.6.13) to run the reference side by side in the same process.
# Output: $OUT (or ./bench/results) gets bench_gpu.json and the logs.
set -euo pipefail
cd "$(dirname "$0")/.."
OUT="${OUT:-bench/results}"; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/site .whl/*.whl
    export PYTHONPATH="/tmp/site:$PYTHONPATH"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv | tee "$OUT/gpu.txt"
python3 bench/make_full_checkpoint.py /tmp/full
export IMAGEREWARD_FULL_CHECKPOINT_DIR=/tmp/full
python3 -m pytest -q -p no:cacheprovider tests/test_gpu.py tests/test_scorer.py tests/test_parity.py 2>&1 | tee "$OUT/pytest_gpu.log"
python3 bench/benchmark.py --checkpoint-dir /tmp/full --device cuda --images 64 --tensor-images 256 \
    --batch-sizes 1,16,64,256 --dtypes fp32,fp16,bf16 --reference-images 64 --out "$OUT/bench_gpu.json" \
    2>&1 | tee "$OUT/bench_gpu.log"
