#!/usr/bin/env bash
# The GPU benchmark as one script: the real Qwen3-VL-2B shape with random weights, bf16, one H100, under 8 minutes.
#
#   bash benchmarks/gpu.sh            # from the repository root, on a machine with a CUDA GPU and PyTorch
#
# Nothing is downloaded. Python packages the machine lacks (transformers 5.x, qwen-vl-utils, PyAV, ...) are taken
# from wheels in .whl/ if present and installed into /tmp/site (--no-index --no-deps). The 2B model is initialised
# directly on the GPU in bf16 and shared by the embedder and the reranker (nothing is saved).
#
# Writes into $OUT (default benchmarks/results/):
#   gpu_table.md / gpu.json    the table: ours vs the official procedure, tokens/s, MFU, targets
#   gpu_profile.txt            torch.profiler tables of one more run of ours for two cases (where the time goes)
#   gpu_log.txt                everything printed, with timestamps
# CASES=a,b,... runs a subset; EXTRA_WORKERS=N[,M...] adds rows with N (M, ...) preprocessing workers for
# EXTRA_CASES (default: the 448x448 images). Extra rows time ours again with image pixels normalised on the host
# (embed_images_448, embed_images, embed_mixed, rerank_images), with each output read before the next micro-batch is
# queued (embed_text, embed_images_448, rerank_text) and, unless ALL_LEVERS=0, with transformers' own RMSNorm (embed_text), with torch's own choice of attention kernels, cuDNN's
# included (embed_text, rerank_text), with the padding mask sent to the model and with the last decoder layer run at
# every position (embed_text, rerank_text), the vision layout computed by the tower (embed_images_448), the rows after
# a shared query part attending through transformers' mask (rerank_image_query), and the reranker sharing the query
# part where its default on GPUs does not (rerank_text, rerank_images) and not where it does (rerank_image_query):
# each lever, measured on the GPU. COMPILE=1 adds last rows of COMPILE_CASES (default embed_text) with the core's
# torch_compile option, the decoder layers compiled during an untimed run first (COMPILE_OPTIONS: torch.compile's
# options as JSON, default torch's). AB_LEVER=name runs benchmarks.levers afterwards (that core switch on and off in
# alternation, AB_RUNS runs each, on AB_CASES) into gpu_lever.txt; a+b+c switches several together.
# CASES= (empty) leaves the main run out. LONG_TEXTS=N,MIN,MAX runs embed_text on N texts of MIN-MAX tokens, ours
# against the official procedure (gpu_long_texts.md), then the interleaved A/B of the long-text cut on them
# (gpu_long_texts_lever.txt; LONG_TIMEOUT, 150 s each).
# SHORT_TEXTS=N,MIN,MAX runs embed_text once more on N texts of MIN-MAX tokens, with a row of ours at
# batch_size=SHORT_BATCH_SIZE (default 256) items per forward pass, into gpu_short_texts.md (SHORT_TIMEOUT, 150 s).
# CALL_SIZE=N adds rows of ours with the inputs handed to the core in calls of N items, as LlamaIndex's get_*_batch
# methods chunk them (CALL_SIZE_CASES, default embed_text,embed_images_448).
# CONCURRENT_CLIENTS=1,8,32 runs benchmarks.concurrent_queries (CONCURRENT_QUERIES short queries, default 128, then
# CONCURRENT_IMAGE_QUERIES 448x448 image queries, default none, from that many client threads, one call each) into
# gpu_concurrent_queries.md (CONCURRENT_TIMEOUT, 240 s).
# HOST_PIXELS_CASES, UNQUEUED_CASES and PROFILE_CASES name the cases of those extra rows and of the profile (empty:
# none). Each timed side runs REPEATS (default 3) times after a short warm-up; the table gives the median, the JSON every
# run (a first run pays for what is new to the GPU libraries, such as per-shape kernel plans).
# Hard caps: 75 s per timed side of a case, MAIN_TIMEOUT (default 400) s for the main run.
# Dry run: DEVICE=cpu MODEL=tiny DTYPE=float32 QUICK=1 [CACHE_DIR=dir] runs every step the same way on the CPU with
# the tiny checkpoint and a few inputs (no CUDA checks), to try a command line before it spends GPU time
# (tests/test_gpu_script.py runs the planned one so).
set -euo pipefail
START=$SECONDS
OUT="${OUT:-benchmarks/results}"
mkdir -p "$OUT"
LOG="$OUT/gpu_log.txt"
: > "$LOG"
say() { echo "[gpu.sh $(date +%H:%M:%S) +$((SECONDS - START))s] $*" | tee -a "$LOG"; }
DEVICE="${DEVICE:-cuda}"
# The model, device and dtype of every step; the dry run's --quick (a few inputs) and cache folder.
RUN_ARGS=(--model "${MODEL:-2b}" --device "$DEVICE" --dtype "${DTYPE:-bfloat16}" ${CACHE_DIR:+--cache-dir "$CACHE_DIR"})
QUICK_ARGS=(${QUICK:+--quick})

if [ "$DEVICE" = cuda ] && compgen -G ".whl/*.whl" > /dev/null; then
  say "installing the carried wheels: $(ls .whl | tr '\n' ' ')"
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
    2>&1 | tee -a "$LOG"
  export PYTHONPATH="/tmp/site:${PYTHONPATH:-}"
fi
export PYTHONPATH="$PWD:${PYTHONPATH:-}" PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 \
  TOKENIZERS_PARALLELISM=false
if [ "$DEVICE" = cuda ]; then
  nvidia-smi --query-gpu=name,memory.total,memory.used,driver_version,clocks.sm --format=csv,noheader 2>&1 | tee -a "$LOG" || true
fi
DEVICE="$DEVICE" python3 - <<'EOF' 2>&1 | tee -a "$LOG"
import importlib, os, platform, sys, torch, transformers
if os.environ["DEVICE"] != "cuda":
    print(f"dry run on {os.environ['DEVICE']}: torch {torch.__version__}, transformers {transformers.__version__}")
    sys.exit(0)
assert torch.cuda.is_available(), "torch sees no GPU"
assert int(transformers.__version__.split(".")[0]) >= 5, f"transformers {transformers.__version__} is too old"
for name in ("qwen_vl_utils", "av", "PIL", "numpy"):
    try:
        importlib.import_module(name)
    except ImportError as exc:
        print(f"missing {name}: {exc}" + (" (mp4 videos become frame lists)" if name == "av" else ""))
print(f"python {platform.python_version()}, torch {torch.__version__}, transformers {transformers.__version__}, "
      f"{torch.cuda.get_device_name(0)}, {os.cpu_count()} CPUs")
# The fused RMSNorm lever on one text batch's activations: stock transformers code against ours.
from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLTextRMSNorm
from qwen3vl_integrations.core.rms_norm import use_fused_rms_norm
norm = Qwen3VLTextRMSNorm(2048).cuda().to(torch.bfloat16)
norm.weight.data.normal_()
x = torch.randn(16384, 2048, device="cuda", dtype=torch.bfloat16)
def ms(fn):
    for _ in range(3):
        fn()
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    start.record()
    for _ in range(20):
        fn()
    end.record()
    torch.cuda.synchronize()
    return start.elapsed_time(end) / 20
with torch.inference_mode():
    stock_out, stock_ms = norm(x), ms(lambda: norm(x))
    holder = torch.nn.Module()
    holder.norm = norm
    use_fused_rms_norm(holder)
    fused_out, fused_ms = norm(x), ms(lambda: norm(x))
print(f"RMSNorm of 16384x2048 bf16: stock {stock_ms:.3f} ms, fused {fused_ms:.3f} ms, "
      f"max |diff| {(stock_out.float() - fused_out.float()).abs().max().item():.3g}")
EOF

# Set empty to leave those rows (or the profile) out.
HOST_PIXELS_CASES="${HOST_PIXELS_CASES-embed_images_448,embed_images,embed_mixed,rerank_images}"
UNQUEUED_CASES="${UNQUEUED_CASES-embed_text,embed_images_448,rerank_text}"
PROFILE_CASES="${PROFILE_CASES-embed_text,embed_images_448}"
LEVER_ROWS=()
if [ "${ALL_LEVERS:-1}" != 0 ]; then
  LEVER_ROWS=(--extra-stock-rms-norm embed_text --extra-cudnn-attention embed_text,rerank_text
    --extra-padding-mask embed_text,rerank_text --extra-whole-last-layer embed_text,rerank_text
    --extra-tower-vision-layout embed_images_448 --extra-masked-cached-rows rerank_image_query
    --extra-shared-query-part rerank_text,rerank_images --extra-whole-pairs rerank_image_query)
fi
COMPILE_ROWS=()
if [ -n "${COMPILE:-}" ]; then
  COMPILE_ROWS=(--extra-compiled "${COMPILE_CASES:-embed_text}" --compile-options "${COMPILE_OPTIONS:-true}")
fi
CASES="${CASES-embed_text,embed_images,embed_images_448,embed_mixed,embed_query,rerank_text,rerank_images,rerank_image_query}"
status=0
if [ -n "$CASES" ]; then
say "main run: ours vs the official procedure, ${REPEATS:-3} timed runs each"
timeout "${MAIN_TIMEOUT:-400}" python3 -m benchmarks.throughput "${RUN_ARGS[@]}" ${QUICK_ARGS[@]+"${QUICK_ARGS[@]}"} \
  --cases "$CASES" \
  --repeats "${REPEATS:-3}" --case-timeout 75 \
  ${EXTRA_WORKERS:+--extra-workers "$EXTRA_WORKERS" --extra-cases "${EXTRA_CASES:-embed_images_448}"} \
  ${CALL_SIZE:+--extra-call-size "$CALL_SIZE" --extra-call-cases "${CALL_SIZE_CASES:-embed_text,embed_images_448}"} \
  ${HOST_PIXELS_CASES:+--extra-host-pixels "$HOST_PIXELS_CASES"} ${UNQUEUED_CASES:+--extra-unqueued "$UNQUEUED_CASES"} \
  ${LEVER_ROWS[@]+"${LEVER_ROWS[@]}"} ${COMPILE_ROWS[@]+"${COMPILE_ROWS[@]}"} \
  ${PROFILE_CASES:+--profile "$PROFILE_CASES" --profile-out "$OUT/gpu_profile.txt"} \
  --markdown "$OUT/gpu_table.md" --json "$OUT/gpu.json" 2>&1 | tee -a "$LOG" || status=$?
if [ "$status" -ne 0 ]; then
  say "main run stopped with status $status (a partial table is in $OUT/gpu_table.md)"
fi
fi
if [ -n "${LONG_TEXTS:-}" ]; then
  say "long texts ($LONG_TEXTS): ours vs the official procedure, then the long-text cut on and off"
  timeout "${LONG_TIMEOUT:-150}" python3 -m benchmarks.throughput "${RUN_ARGS[@]}" \
    --cases embed_text --texts "$LONG_TEXTS" --repeats "${REPEATS:-3}" --case-timeout 75 \
    --markdown "$OUT/gpu_long_texts.md" --json "$OUT/gpu_long_texts.json" 2>&1 | tee -a "$LOG" \
    || say "long texts stopped with status $?"
  timeout "${LONG_TIMEOUT:-150}" python3 -m benchmarks.levers --lever long-text-cut "${RUN_ARGS[@]}" \
    --cases embed_text --texts "$LONG_TEXTS" --runs "${AB_RUNS:-3}" 2>&1 | tee -a "$LOG" "$OUT/gpu_long_texts_lever.txt" \
    || say "long-text A/B stopped with status $?"
fi
if [ -n "${SHORT_TEXTS:-}" ]; then
  say "short texts ($SHORT_TEXTS), then with batch_size=${SHORT_BATCH_SIZE:-256}"
  timeout "${SHORT_TIMEOUT:-150}" python3 -m benchmarks.throughput "${RUN_ARGS[@]}" \
    --cases embed_text --texts "$SHORT_TEXTS" --repeats "${REPEATS:-3}" --case-timeout 75 \
    --extra-batch-size "${SHORT_BATCH_SIZE:-256}" --extra-batch-size-cases embed_text \
    --markdown "$OUT/gpu_short_texts.md" --json "$OUT/gpu_short_texts.json" 2>&1 | tee -a "$LOG" \
    || say "short texts stopped with status $?"
fi
if [ -n "${CONCURRENT_CLIENTS:-}" ]; then
  say "short queries from $CONCURRENT_CLIENTS concurrent clients"
  timeout "${CONCURRENT_TIMEOUT:-240}" python3 -m benchmarks.concurrent_queries "${RUN_ARGS[@]}" \
    --clients "$CONCURRENT_CLIENTS" --queries "${CONCURRENT_QUERIES:-128}" \
    --image-queries "${CONCURRENT_IMAGE_QUERIES:-0}" --repeats "${REPEATS:-3}" \
    --output "$OUT/gpu_concurrent_queries.md" 2>&1 | tee -a "$LOG" || say "concurrent queries stopped with status $?"
fi
if [ -n "${AB_LEVER:-}" ]; then
  say "interleaved A/B of $AB_LEVER on ${AB_CASES:-embed_text,rerank_text}, ${AB_RUNS:-3} runs each"
  timeout "${AB_TIMEOUT:-150}" python3 -m benchmarks.levers --lever "$AB_LEVER" "${RUN_ARGS[@]}" ${QUICK_ARGS[@]+"${QUICK_ARGS[@]}"} \
    --cases "${AB_CASES:-embed_text,rerank_text}" --runs "${AB_RUNS:-3}" 2>&1 | tee -a "$LOG" "$OUT/gpu_lever.txt" \
    || say "A/B stopped with status $?"
fi
say "done in $((SECONDS - START)) s; table: $OUT/gpu_table.md"
cat "$OUT/gpu_table.md" 2>/dev/null || true
exit "$status"
