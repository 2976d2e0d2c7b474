#!/usr/bin/env bash
# The GPU benchmark as one script: the real Qwen3-VL-2B shape with random weights, bf16, one H100.
# Run from the repository root on a machine with a CUDA GPU and PyTorch. Python packages missing there can be
# carried as wheels in .whl/ (transformers 5.x, tokenizers, qwen-vl-utils, av); they are installed into /tmp/site.
# Writes gpu_table.md, gpu.json and gpu_log.txt into $OUT (or benchmarks/results/). Finishes in under 8 minutes.
set -euo pipefail
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
if compgen -G ".whl/*.whl" > /dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader | tee "$OUT/gpu_log.txt"
python3 -c "import torch, transformers; print('torch', torch.__version__, 'transformers', transformers.__version__)" \
  | tee -a "$OUT/gpu_log.txt"
timeout 440 python3 -m benchmarks.throughput --model 2b --device cuda --dtype bfloat16 \
  --cases "${CASES:-embed_text,embed_images,embed_images_448,embed_mixed,rerank_text,rerank_images}" \
  --case-timeout 90 --markdown "$OUT/gpu_table.md" --json "$OUT/gpu.json" 2>&1 | tee -a "$OUT/gpu_log.txt"
