"""Throughput of our batched core against a re-enactment of the official procedure, same inputs, same weights.

    python -m benchmarks.throughput --model tiny|small|2b|PATH --device cpu|cuda [--dtype bfloat16] [--quick]
                                    [--json OUT.json] [--markdown OUT.md]

Cases (items/s and real tokens/s, i.e. without padding; peak memory; max |ours - baseline|):

* ``embed_text``       (a) 256 texts, log-uniform 10-2,000 tokens
* ``embed_images``     (b) 64 JPEG images, 224-1,344 px per side
* ``embed_images_448`` 448x448 JPEG images (the GPU images/s target)
* ``embed_mixed``      (c) texts, images, image+text, videos (frame lists and mp4 files)
* ``embed_query``      64 short texts (8-32 tokens), one call each: the latency of online query embedding
* ``rerank_text``      1 query x 64 text documents (10-1,000 tokens)
* ``rerank_images``    1 query x 64 image documents (224-896 px)
* ``rerank_image_query`` 1 image query (448x448) x the 64 text documents of ``rerank_text``

The baseline (benchmarks/official.py) embeds in chunks of 8, one padded processor call and forward per chunk, and
scores one reranker pair per forward pass, as upstream does. Random checkpoints are built once into
``~/.cache/qwen3vl-integrations/bench`` (``--model 2b`` is built in memory, directly on the device).
"""
from __future__ import annotations

import argparse
import importlib
import json
import os
import platform
import signal
import statistics
import sys
import time
from contextlib import ExitStack, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# OpenMP threads that spin while waiting make timings erratic on a shared CPU (a spinning thread takes the core its
# descheduled partner needs). Sleeping waits cost both sides the same; export OMP_WAIT_POLICY=ACTIVE to measure spins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402
import torch  # noqa: E402

from benchmarks.corpora import Corpora, Sizes, build_corpora  # noqa: E402
from benchmarks.official import Counter, official_embed, official_score  # noqa: E402
from qwen3vl_integrations.core.compiled_layers import compile_options  # noqa: E402

SIZES = ("tiny", "small", "2b")
CASES = ("embed_text", "embed_images", "embed_images_448", "embed_mixed", "embed_query", "rerank_text",
         "rerank_images", "rerank_image_query")
DIFF_TOLERANCE = 1e-5  # float32 on CPU
# Dense peak throughput used for model FLOP utilisation (H100 SXM datasheet; the H200 has the same compute).
PEAK_FLOPS = {"bfloat16": 989.4e12, "float16": 989.4e12, "float32": 494.7e12}  # fp32 counted at the TF32 rate
# Targets (issue 8): ratios on CPU with the small model; absolute rates on a GPU with the 2B shape in bf16.
CPU_RATIO_TARGETS = {"embed_text": 2.0, "embed_mixed": 2.0, "rerank_text": 3.0, "rerank_images": 3.0}
GPU_TARGETS = {"embed_text": ("tokens/s", 100_000), "embed_images_448": ("items/s", 250),
               "rerank_text": ("tokens/s", 50_000)}


def cache_folder(given: str | None = None) -> Path:
    """Where random checkpoints and media are kept: the folder given (`--cache-dir`), or the user's cache."""
    if given:
        return Path(given).expanduser()
    root = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(root) / "qwen3vl-integrations" / "bench"


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ------------------------------------------------------------------------------------------- checkpoints

def checkpoint_paths(model: str, reranker_model: str | None, dtype: torch.dtype, device: torch.device,
                     cache_dir: Path, build: str) -> tuple[str, str, str]:
    """(embedding path, reranker path, how they were made). Random sizes are built once and reused."""
    if model not in SIZES:
        return model, reranker_model or model, "given"
    dtype_name = str(dtype).replace("torch.", "")
    if build == "auto":
        build = "memory" if model == "2b" else "disk"
    if build == "memory":
        return (*build_in_memory(model, dtype, device, cache_dir), "random, built in memory")
    paths = [str(cached_checkpoint(cache_dir, model, kind, dtype_name)) for kind in ("embedding", "reranker")]
    return paths[0], paths[1], "random, cached on disk"


def cached_checkpoint(cache_dir: Path, size: str, kind: str, dtype_name: str, text_layers: int | None = None) -> Path:
    """The random checkpoint of `size` and `kind` (with `text_layers` language-model layers, default the size's) in
    `cache_dir`, built the first time it is asked for."""
    from qwen3vl_integrations.testing import build_random_checkpoint

    layers = "" if text_layers is None else f"-{text_layers}-layers"
    path = cache_dir / f"{size}{layers}-{kind}-{dtype_name}"
    if not (path / "config.json").exists() or not list(path.glob("*.safetensors")):
        log(f"building the {size}{layers} {kind} checkpoint in {path}")
        start = time.perf_counter()
        build_random_checkpoint(path, size=size, kind=kind, dtype=dtype_name, seed=0, text_layers=text_layers)
        log(f"  built in {time.perf_counter() - start:.1f} s")
    return path


def build_in_memory(size: str, dtype: torch.dtype, device: torch.device, cache_dir: Path) -> tuple[str, str]:
    """Initialise a random model directly on `device` and put it in the core's shared registry for both roles.

    Only the config and the processor are written to disk; the embedding and reranker objects then find the model
    in the registry instead of loading weights (the 2B shape: seconds on a GPU instead of a 4 GB save and load).
    """
    from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

    from qwen3vl_integrations.core import loading
    from qwen3vl_integrations.testing import build_processor, build_tokenizer, random_checkpoint_config

    dtype_name = str(dtype).replace("torch.", "")
    attn = loading.resolve_attention(None, device)
    paths = []
    config = None
    for kind in ("embedding", "reranker"):
        path = cache_dir / f"{size}-{kind}-{dtype_name}-config"
        tokenizer = build_tokenizer(kind)
        config = random_checkpoint_config(size, tokenizer)
        build_processor(tokenizer).save_pretrained(path)
        config.save_pretrained(path)
        paths.append(path)
    log(f"initialising the random {size} model on {device} in {dtype_name}")
    start = time.perf_counter()
    config._attn_implementation = attn
    with torch.random.fork_rng(devices=[]), torch.device(device):
        torch.manual_seed(0)
        model = Qwen3VLForConditionalGeneration._from_config(config, dtype=dtype, attn_implementation=attn)
    model.eval().requires_grad_(False)
    loading.use_model_levers(model.model)
    if device.type == "cuda":
        torch.cuda.synchronize()
    log(f"  initialised in {time.perf_counter() - start:.1f} s")
    for role, path in zip(("embedding", "reranker"), paths):
        loading.share_model(str(path), role, device, dtype, attn, model, AutoProcessor.from_pretrained(path))
    return str(paths[0]), str(paths[1])


# --------------------------------------------------------------------------------------------- measuring

class CaseTimeout(Exception):
    pass


@contextmanager
def time_limit(seconds: float | None) -> Iterator[None]:
    """Raise CaseTimeout in the main thread after `seconds` (a hard cap per measured run)."""
    if not seconds or not hasattr(signal, "SIGALRM"):
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise CaseTimeout(f"over {seconds:.0f} s")

    previous = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


class PeakMemory:
    """Peak memory of a region: CUDA allocator peak on GPUs, the process's RSS high-water mark (VmHWM) on CPU."""

    def __init__(self, device: torch.device) -> None:
        self.device = device

    def reset(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        else:
            try:
                with open("/proc/self/clear_refs", "w") as f:
                    f.write("5")  # resets VmHWM to the current RSS (Linux >= 4.0)
            except OSError:
                pass

    def peak_mib(self) -> float | None:
        if self.device.type == "cuda":
            return torch.cuda.max_memory_allocated() / 2**20
        try:
            with open("/proc/self/status") as f:
                for line in f:
                    if line.startswith("VmHWM:"):
                        return int(line.split()[1]) / 1024
        except OSError:
            pass
        try:
            import resource

            return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        except Exception:  # pragma: no cover
            return None


@dataclass
class Run:
    seconds: list[float] = field(default_factory=list)
    cpu_seconds: list[float] = field(default_factory=list)  # process CPU time, all threads
    peak_mib: float | None = None
    error: str | None = None

    @property
    def cpu_time(self) -> float | None:
        return statistics.median(self.cpu_seconds) if self.cpu_seconds else None

    @property
    def time(self) -> float | None:
        return statistics.median(self.seconds) if self.seconds else None


def measure(fn: Callable[[], Any], device: torch.device, repeats: int, timeout: float | None) -> tuple[Run, Any]:
    """Time `repeats` calls of `fn` (median reported). `timeout` caps all repeats together: a repeat that would not
    fit is skipped, and a first call that overruns is stopped and reported."""
    run, result = Run(), None
    memory = PeakMemory(device)
    memory.reset()
    start_all = time.perf_counter()
    try:
        with time_limit(timeout):
            for _ in range(repeats):
                if timeout and run.seconds and time.perf_counter() - start_all + max(run.seconds) > timeout:
                    break  # another repeat would not fit under the cap
                start, cpu_start = time.perf_counter(), time.process_time()
                result = fn()
                if device.type == "cuda":
                    torch.cuda.synchronize()
                run.seconds.append(time.perf_counter() - start)
                run.cpu_seconds.append(time.process_time() - cpu_start)
    except CaseTimeout as exc:
        if not run.seconds:
            run.error = f"timed out ({exc})"
    run.peak_mib = memory.peak_mib()
    return run, result


def profile_once(fn: Callable[[], Any], device: torch.device, path: Path, label: str) -> None:
    """One more call of `fn` under torch.profiler; the top operators by device and by CPU time go to `path`."""
    from torch.profiler import ProfilerActivity, profile

    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    start = time.perf_counter()
    with profile(activities=activities) as prof:
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
    wall = time.perf_counter() - start
    averages = prof.key_averages()
    device_key = "self_device_time_total" if hasattr(averages[0], "self_device_time_total") else "self_cuda_time_total"
    lines = [f"## {label}: {wall:.3f} s wall under the profiler"]
    if device.type == "cuda":
        # Kernels only: an operator's device time repeats that of the kernels it launched.
        device_total = sum(getattr(e, device_key, 0) or 0 for e in averages
                           if str(getattr(e, "device_type", "")).endswith(("CUDA", "PrivateUse1"))) / 1e6
        lines.append(f"device busy {device_total:.3f} s of {wall:.3f} s ({device_total / wall:.0%}); kernels by time:")
        lines.append(averages.table(sort_by=device_key, row_limit=25, max_name_column_width=60))
    lines.append("CPU operators by self time:")
    lines.append(averages.table(sort_by="self_cpu_time_total", row_limit=25, max_name_column_width=60))
    with open(path, "a", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n\n")
    log(f"  profile of {label} appended to {path}")


@dataclass
class CaseResult:
    name: str
    description: str
    items: int
    unit: str
    tokens: int = 0
    patches: int = 0
    padded_tokens_ours: int = 0
    padded_tokens_baseline: int = 0
    passes_ours: int = 0  # forward passes (micro-batches) per run
    passes_baseline: int = 0
    ours_seconds: float | None = None
    baseline_seconds: float | None = None
    ours_items_per_s: float | None = None
    baseline_items_per_s: float | None = None
    ratio: float | None = None
    ours_cpu_seconds: float | None = None
    baseline_cpu_seconds: float | None = None
    cpu_time_ratio: float | None = None  # baseline CPU time / ours: robust to other load on a shared machine
    load_average: float | None = None
    ours_tokens_per_s: float | None = None
    baseline_tokens_per_s: float | None = None
    ours_peak_mib: float | None = None
    baseline_peak_mib: float | None = None
    max_abs_diff: float | None = None
    flops: float | None = None
    ours_mfu: float | None = None
    baseline_mfu: float | None = None
    target: str | None = None
    target_met: bool | None = None
    ours_runs: list[float] = field(default_factory=list)  # every timed run, in order (the first may pay warm-up
    baseline_runs: list[float] = field(default_factory=list)  # costs such as per-shape kernel plans)
    errors: list[str] = field(default_factory=list)


def count_ours(runner: Any) -> Counter:
    """Count the tokens of the sequences our runner scores (whole sequences, a shared query part included, as the
    baseline counts them) and the padded tokens it actually sends, by wrapping its forward passes."""
    counter = Counter()
    original = type(runner)._forward_last_hidden

    def wrapped(loaded: Any, inputs: Any, batch_size: int) -> torch.Tensor:
        counter.add_pass(inputs.tokens, inputs.batch["input_ids"].numel())
        return original(runner, loaded, inputs, batch_size)

    runner._forward_last_hidden = wrapped
    return counter


def model_parameters(backbone: Any) -> tuple[int, int]:
    """(language-model parameters without the embedding table, vision-tower parameters)."""
    vision = sum(p.numel() for p in backbone.visual.parameters())
    language = sum(p.numel() for p in backbone.language_model.parameters())
    language -= backbone.language_model.embed_tokens.weight.numel()
    return language, vision


# ------------------------------------------------------------------------------------------------- cases

def run_case(name: str, description: str, unit: str, items: int, ours_fn: Callable[[], np.ndarray],
             base_fn: Callable[[Counter], np.ndarray], ours_counter: Counter, args: argparse.Namespace,
             device: torch.device, params: tuple[int, int], warmup: Callable[[], None] | None) -> CaseResult:
    result = CaseResult(name, description, items, unit)
    result.load_average = _load_average()
    log(f"{name}: {description}" + (f" (load average {result.load_average:.1f})"
                                    if result.load_average is not None else ""))
    if warmup is not None:
        warmup()
    if args.full_warmup:
        ours_fn()  # e.g. compilation for every shape of the case happens here, not in the timed runs
    ours_counter.tokens = ours_counter.padded_tokens = ours_counter.passes = 0
    ours_run, ours_out = measure(ours_fn, device, args.repeats, args.case_timeout)
    log(f"  ours:     {_fmt_times(ours_run)}")
    ours_calls = max(1, len(ours_run.seconds))
    ours_tokens, ours_padded = ours_counter.tokens // ours_calls, ours_counter.padded_tokens // ours_calls
    ours_passes = ours_counter.passes // ours_calls
    base_counter = Counter()
    counting = [base_counter]

    def base_once() -> np.ndarray:
        counter = counting.pop() if counting else Counter()  # count the first repetition only
        return base_fn(counter)

    reuse: CaseResult | None = getattr(args, "baseline_skip", None)
    if reuse is None:
        base_run, base_out = measure(base_once, device, args.repeats, args.case_timeout)
        log(f"  baseline: {_fmt_times(base_run)}")
        args.baseline_outputs[name] = base_out
    else:  # an extra row: the main row's baseline stands
        base_run = Run([reuse.baseline_seconds] if reuse.baseline_seconds else [],
                       [reuse.baseline_cpu_seconds] if reuse.baseline_cpu_seconds else [], reuse.baseline_peak_mib)
        base_out = args.baseline_outputs.get(name)
        base_counter.tokens, base_counter.patches = reuse.tokens, reuse.patches
        base_counter.padded_tokens, base_counter.passes = reuse.padded_tokens_baseline, reuse.passes_baseline
    # Main rows only: an extra row's profile would be an unlabelled copy, and each costs a GPU run many seconds.
    if args.profile and name in args.profile.split(",") and reuse is None:
        try:
            with time_limit(args.case_timeout):
                profile_once(ours_fn, device, Path(args.profile_out), f"{name} (ours)")
        except Exception as exc:  # a diagnosis must never cost the table
            log(f"  profiling {name} failed: {exc!r}")
    for label, run in (("ours", ours_run), ("baseline", base_run)):
        if run.error:
            result.errors.append(f"{label}: {run.error}")
    result.tokens = base_counter.tokens or ours_tokens
    result.patches = base_counter.patches
    result.padded_tokens_baseline = base_counter.padded_tokens
    result.padded_tokens_ours = ours_padded
    result.passes_baseline, result.passes_ours = base_counter.passes, ours_passes
    if ours_run.time and base_counter.tokens and ours_tokens != base_counter.tokens and not ours_run.error:
        result.errors.append(f"token counts differ: ours {ours_tokens}, baseline {base_counter.tokens}")
    result.ours_seconds, result.baseline_seconds = ours_run.time, base_run.time
    result.ours_runs, result.baseline_runs = list(ours_run.seconds), list(base_run.seconds)
    result.ours_peak_mib, result.baseline_peak_mib = ours_run.peak_mib, base_run.peak_mib
    if ours_run.time:
        result.ours_items_per_s = items / ours_run.time
        result.ours_tokens_per_s = result.tokens / ours_run.time
    if base_run.time:
        result.baseline_items_per_s = items / base_run.time
        result.baseline_tokens_per_s = result.tokens / base_run.time
    if ours_run.time and base_run.time:
        result.ratio = base_run.time / ours_run.time
    result.ours_cpu_seconds, result.baseline_cpu_seconds = ours_run.cpu_time, base_run.cpu_time
    if ours_run.cpu_time and base_run.cpu_time:
        result.cpu_time_ratio = base_run.cpu_time / ours_run.cpu_time
    if ours_out is not None and base_out is not None and not ours_run.error and not base_run.error:
        result.max_abs_diff = float(np.max(np.abs(np.asarray(ours_out, np.float64) - np.asarray(base_out,
                                                                                                 np.float64))))
    language, vision = params
    if result.tokens:
        result.flops = 2.0 * language * result.tokens + 2.0 * vision * result.patches
        peak = PEAK_FLOPS.get(args.dtype_name)
        if device.type == "cuda" and peak:
            if ours_run.time:
                result.ours_mfu = result.flops / ours_run.time / peak
            if base_run.time:
                result.baseline_mfu = result.flops / base_run.time / peak
    check_target(result, args, device)
    log(f"  -> ours {_rate(result.ours_items_per_s)} {unit}/s, baseline {_rate(result.baseline_items_per_s)} "
        f"{unit}/s, x{result.ratio or float('nan'):.2f}, {_rate(result.ours_tokens_per_s)} tokens/s, "
        f"max|diff| {result.max_abs_diff if result.max_abs_diff is not None else float('nan'):.2e}"
        + (f", MFU {result.ours_mfu:.1%}" if result.ours_mfu is not None else "")
        + f", forward passes {result.passes_ours} / {result.passes_baseline}")
    return result


def extra_row(main_row: CaseResult, plan: dict[str, Callable[[], CaseResult]], args: argparse.Namespace,
              device: torch.device, label: str) -> CaseResult:
    """Ours again with other settings; the baseline is not re-run (its figures are copied from `main_row`)."""
    saved = args.baseline_skip
    args.baseline_skip = main_row
    try:
        row = plan[main_row.name]()
    finally:
        args.baseline_skip = saved
    row.description += f" [{label}]"
    return row


@contextmanager
def attributes(owner: Any, **values: Any) -> Iterator[None]:
    """Within this block `owner`'s attributes have these values (the old ones come back after)."""
    saved = {name: getattr(owner, name) for name in values}
    for name, value in values.items():
        setattr(owner, name, value)
    try:
        yield
    finally:
        for name, value in saved.items():
            setattr(owner, name, value)


# Core switches compared with their other value: lever -> ("module.ATTRIBUTE" of qwen3vl_integrations.core, the
# core's value, the other value, label of the other setting)
CORE_SWITCHES: dict[str, tuple[str, Any, Any, str]] = {
    "padding-mask": ("runner.SEND_PADDING_MASK", False, True, "padding mask sent"),
    "pooled-last-layer": ("runner.POOL_IN_LAST_LAYER", True, False, "whole last layer"),
    "vision-layout": ("runner.VISION_LAYOUT_ON_HOST", True, False, "vision layout computed by the tower"),
    "lower-right": ("lower_right_attention.CACHED_ROWS_LOWER_RIGHT", True, False,
                    "cached rows with transformers' mask"),
    "queue-next-batch": ("runner.QUEUE_NEXT_BATCH", True, False, "each output read before the next batch is queued"),
    "pixels-on-device": ("pixels.NORMALIZE_ON_DEVICE", True, False, "pixels normalised on the host"),
    "cut-patches": ("pixels.CUT_PATCHES", True, False, "patches cut by the image processor's call"),
    "grid-layouts": ("vision_layout.KEEP_GRID_LAYOUTS", True, False, "vision layout computed whole per batch"),
    "backend-token-ids": ("encoding.TOKEN_IDS_FROM_BACKEND", True, False, "token ids from the tokenizer's call"),
    "vision-rotary": ("rotary.VISION_IN_FEWER_PASSES", True, False, "vision rotary by transformers' function"),
    "text-rotary": ("rotary.TEXT_IN_FEWER_PASSES", True, False, "text rotary by transformers' formula"),
    "cpu-long-rows": ("lower_right_attention.CPU_LONG_ROWS_CAUSAL", True, False,
                      "long cached rows with the causal bias (a mask on the CPU)"),
    "long-text-cut": ("long_texts.CUT_LONG_TEXTS", True, False, "long texts tokenised whole"),
    "fused-projections": ("fused_projections.FUSED_PROJECTIONS", True, False,
                          "one matrix product per projection, q/k norms and rotation per tensor"),
}


def core_switch(lever: str, on: bool) -> Any:
    """Within this block the core runs with the lever on (its own value) or off; `a+b` switches several together."""
    stack = ExitStack()
    for part in lever.split("+"):
        path, core_value, other_value, _ = CORE_SWITCHES[part]
        module, name = path.rsplit(".", 1)
        stack.enter_context(attributes(importlib.import_module(f"qwen3vl_integrations.core.{module}"),
                                       **{name: core_value if on else other_value}))
    return stack


@contextmanager
def compiled(args: argparse.Namespace, embedder: Any, reranker: Any) -> Iterator[None]:
    """Ours with the core's `torch_compile` option (--compile-options), and one untimed full run per case first (it
    compiles the shapes)."""
    options = compile_options(json.loads(args.compile_options))
    with attributes(args, full_warmup=True), attributes(embedder, torch_compile=options), \
            attributes(reranker, torch_compile=options):
        yield


def extra_settings(args: argparse.Namespace, embedder: Any, reranker: Any, device: torch.device
                   ) -> list[tuple[str, str, Callable[[str], Any]]]:
    """(cases, label, case name -> context manager) for each extra-row option given, in the order they run."""
    from qwen3vl_integrations.core import runner as runner_module

    backbones = (embedder.load().backbone, reranker.load().backbone)
    settings: list[tuple[str, str, Callable[[str], Any]]] = []
    for workers in (int(n) for n in (args.extra_workers or "").split(",") if n.strip()):
        settings.append((args.extra_cases, f"workers={workers}", lambda name, workers=workers: attributes(
            embedder if name.startswith("embed") else reranker, preprocess_workers=max(0, workers))))
    for cases, share in ((args.extra_whole_pairs, False), (args.extra_shared_query_part, True)):
        if cases:
            settings.append((cases, f"share_query_prefix={'on' if share else 'off'}",
                             lambda name, share=share: attributes(reranker, share_query_prefix=share)))
    if args.extra_stock_rms_norm:
        settings.append((args.extra_stock_rms_norm, "stock RMSNorm", lambda name: stock_rms_norm(*backbones)))
    if args.extra_batch_overhead is not None:
        overhead = args.extra_batch_overhead
        settings.append((args.extra_overhead_cases, f"batch overhead {overhead} tokens", lambda name: attributes(
            runner_module, BATCH_OVERHEAD_TOKENS={device.type: overhead}, DEFAULT_BATCH_OVERHEAD_TOKENS=overhead)))
    if args.extra_batch_size is not None:
        size = args.extra_batch_size
        settings.append((args.extra_batch_size_cases, f"batch_size={size}", lambda name: attributes(
            embedder if name.startswith("embed") else reranker, batch_size=size)))
    if args.extra_call_size is not None:
        size = args.extra_call_size
        settings.append((args.extra_call_cases, f"calls of {size} items", lambda name: calls_of(embedder, size)))
    if args.extra_cudnn_attention:
        settings.append((args.extra_cudnn_attention, "torch's attention choice, cuDNN included",
                         lambda name: attributes(runner_module, CUDA_ATTENTION_BACKENDS=None)))
    for lever, cases in (("pooled-last-layer", args.extra_whole_last_layer), ("padding-mask", args.extra_padding_mask),
                         ("vision-layout", args.extra_tower_vision_layout),
                         ("lower-right", args.extra_masked_cached_rows),
                         ("queue-next-batch", args.extra_unqueued), ("pixels-on-device", args.extra_host_pixels),
                         ("cpu-long-rows", args.extra_long_rows_bias)):
        if cases:
            settings.append((cases, CORE_SWITCHES[lever][3], lambda name, lever=lever: core_switch(lever, on=False)))
    if args.extra_compiled:
        settings.append((args.extra_compiled, "torch.compile", lambda name: compiled(args, embedder, reranker)))
    return settings


@contextmanager
def calls_of(embedder: Any, size: int) -> Iterator[None]:
    """Within this block `embedder.embed` hands its inputs to the core in calls of `size` items, in order, as
    LlamaIndex's `get_*_batch` methods do with `embed_batch_size`."""
    embed = embedder.embed

    def in_calls(items: Sequence[Any], **kwargs: Any) -> np.ndarray:
        items = list(items)
        return np.concatenate([embed(items[start:start + size], **kwargs) for start in range(0, len(items), size)])

    embedder.embed = in_calls
    try:
        yield
    finally:
        del embedder.embed


@contextmanager
def stock_rms_norm(*backbones: Any) -> Iterator[None]:
    """Within this block the language models run transformers' own RMSNorm (the fused one comes back after)."""
    from qwen3vl_integrations.core.rms_norm import use_fused_rms_norm

    for backbone in backbones:
        for module in backbone.modules():
            if type(module).__name__.endswith("RMSNorm"):
                vars(module).pop("forward", None)
    try:
        yield
    finally:
        for backbone in backbones:
            use_fused_rms_norm(backbone)


# The cases that make one call over a list of inputs (all but embed_query).
BATCH_CASES = tuple(name for name in CASES if name != "embed_query")


def batch_case_inputs(corpora: Corpora) -> dict[str, tuple[str, Any, list[Any]]]:
    """Case name -> (description, reranker query or None for the embedder, the inputs of its one call)."""
    images = [{"image": data} for data in corpora.images]
    return {
        "embed_text": (f"{len(corpora.texts)} texts", None, corpora.texts),
        "embed_images": (f"{len(images)} images", None, images),
        "embed_images_448": (f"{len(corpora.images_448)} images 448x448", None,
                             [{"image": data} for data in corpora.images_448]),
        "embed_mixed": (f"{len(corpora.mixed)} mixed items", None, corpora.mixed),
        "rerank_text": (f"1 query x {len(corpora.rerank_texts)} texts", corpora.query, corpora.rerank_texts),
        "rerank_images": (f"1 query x {len(corpora.rerank_images)} images", corpora.query, corpora.rerank_images),
        "rerank_image_query": (f"1 image query x {len(corpora.rerank_texts)} texts",
                               {"image": corpora.images_448[0]}, corpora.rerank_texts),
    }


def on_issue_inputs(name: str, args: argparse.Namespace) -> bool:
    """Whether case `name` runs on the issue's inputs: not cut down by --quick or --limit, nor replaced by --texts
    (embed_text) or --rerank-docs (rerank_text)."""
    replaced = {"embed_text": args.texts, "rerank_text": args.rerank_docs}.get(name)
    return not (args.quick or args.limit or replaced)


def check_target(result: CaseResult, args: argparse.Namespace, device: torch.device) -> None:
    """The issue's target for this row, where it ran on the issue's inputs."""
    if not on_issue_inputs(result.name, args):
        return
    if device.type == "cpu" and args.model == "small" and result.name in CPU_RATIO_TARGETS:
        goal = CPU_RATIO_TARGETS[result.name]
        result.target = f">= {goal:g}x"
        ok = result.ratio is not None and result.ratio >= goal
        if args.dtype_name == "float32":
            result.target += f", diff <= {DIFF_TOLERANCE:g}"
            ok = ok and result.max_abs_diff is not None and result.max_abs_diff <= DIFF_TOLERANCE
        result.target_met = ok
    elif device.type == "cuda" and args.model == "2b" and result.name in GPU_TARGETS:
        what, goal = GPU_TARGETS[result.name]
        value = result.ours_tokens_per_s if what == "tokens/s" else result.ours_items_per_s
        result.target = f">= {goal:,} {what}"
        result.target_met = value is not None and value >= goal


def _load_average() -> float | None:
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _rate(value: float | None) -> str:
    if value is None:
        return "-"
    if value >= 10_000:
        return f"{value / 1000:,.0f}k"
    if value >= 100:
        return f"{value:,.0f}"
    if value >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def _fmt_times(run: Run) -> str:
    text = ", ".join(f"{s:.2f} s" for s in run.seconds) or "-"
    if run.cpu_seconds:
        text += " (CPU " + ", ".join(f"{s:.2f} s" for s in run.cpu_seconds) + ")"
    if run.peak_mib is not None:
        text += f" (peak {run.peak_mib:,.0f} MiB)"
    if run.error:
        text += f" [{run.error}]"
    return text


# ------------------------------------------------------------------------------------------------ output

def markdown_table(results: Sequence[CaseResult], device: torch.device) -> str:
    gpu = device.type == "cuda"
    header = ["case", "items", "ours items/s", "baseline items/s", "ratio"]
    if not gpu:
        header += ["ratio of CPU time"]
    header += ["ours tokens/s", "baseline tokens/s", "peak MiB ours / baseline", "max \\|diff\\|"]
    if gpu:
        header += ["MFU ours / baseline"]
    header += ["target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for r in results:
        mem = "/".join(f"{m:,.0f}" if m is not None else "-" for m in (r.ours_peak_mib, r.baseline_peak_mib))
        row = [f"{r.name}: {r.description}", str(r.items), _rate(r.ours_items_per_s), _rate(r.baseline_items_per_s),
               f"{r.ratio:.2f}x" if r.ratio else "-"]
        if not gpu:
            row.append(f"{r.cpu_time_ratio:.2f}x" if r.cpu_time_ratio else "-")
        row += [_rate(r.ours_tokens_per_s), _rate(r.baseline_tokens_per_s), mem,
                f"{r.max_abs_diff:.1e}" if r.max_abs_diff is not None else "-"]
        if gpu:
            row.append("/".join(f"{m:.1%}" if m is not None else "-" for m in (r.ours_mfu, r.baseline_mfu)))
        if r.target:
            row.append(f"{r.target}: {'met' if r.target_met else 'MISSED'}")
        else:
            row.append("-")
        if r.errors:
            row[-1] += " (" + "; ".join(r.errors) + ")"
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines)


def environment(device: torch.device, args: argparse.Namespace) -> dict[str, Any]:
    import transformers

    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    info = {"device": device.type, "dtype": args.dtype_name, "model": args.model, "torch": torch.__version__,
            "transformers": transformers.__version__, "python": platform.python_version(), "cpu": cpu,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "gpu": None, "peak_flops": None}
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
        info["peak_flops"] = PEAK_FLOPS.get(args.dtype_name)
    return info


def write_outputs(args: argparse.Namespace, env: dict[str, Any], notes: dict[str, Any],
                  results: Sequence[CaseResult], device: torch.device, final: bool) -> str:
    table = markdown_table(results, device)
    title = (f"Qwen3-VL throughput, `{args.model}` model, {env['device']}"
             + (f" ({env['gpu']})" if env.get("gpu") else f" ({env['cpu']}, {env['cpu_count']} cores)")
             + f", {env['dtype']}, torch {env['torch']}, transformers {env['transformers']}")
    footer = ["", "ratio = ours items/s / baseline items/s (wall clock); tokens/s count real tokens (no padding), "
              "vision tokens included; peak memory: " + ("CUDA max_memory_allocated" if device.type == "cuda"
                                                         else "process RSS high-water mark (VmHWM), weights included")
              + "."]
    if device.type != "cuda":
        loads = [r.load_average for r in results if r.load_average is not None]
        footer.append("ratio of CPU time = baseline process CPU seconds / ours (all threads; less sensitive to other "
                      "load on a shared machine)" + (f"; 1-minute load average during the run {min(loads):.1f}-"
                                                     f"{max(loads):.1f} on {env['cpu_count']} cores" if loads else "")
                      + f"; OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY', 'unset')}.")
    if device.type == "cuda":
        footer.append(f"MFU = (2 x LM params (no embedding table) x tokens + 2 x vision params x patches) / time / "
                      f"{env['peak_flops'] / 1e12:.1f} TFLOP/s ({env['dtype']} dense peak, H100 SXM datasheet); "
                      "attention FLOPs not counted.")
    if any(r.name.startswith("rerank") for r in results):
        footer.append("Reranker tokens count every pair's whole prompt, for ours and the baseline alike. Shared query "
                      f"prefix {env.get('share_query_prefix', 'auto')} (auto: on CPU, and on GPUs for image and video "
                      "queries): when on, ours runs the part of the prompt that all pairs of the query begin with once "
                      "per call" + (", so its MFU is an effective figure" if device.type == "cuda" else "") + ".")
    footer.append("Inputs: " + "; ".join(f"{k}: {v}" for k, v in notes.items()) + ".")
    text = f"{title}\n\n{table}\n" + "\n".join(footer) + "\n"
    if not final:
        text += "\n(partial: the run has not finished)\n"
    if args.markdown:
        Path(args.markdown).parent.mkdir(parents=True, exist_ok=True)
        Path(args.markdown).write_text(text, encoding="utf-8")
    if args.json:
        payload = {"environment": env, "inputs": notes, "final": final,
                   "ratios": {r.name: r.ratio for r in results},
                   "targets_met": {r.name: r.target_met for r in results if r.target},
                   "cases": [asdict(r) for r in results]}
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(payload, indent=2), encoding="utf-8")
    return text


# -------------------------------------------------------------------------------------------------- main

def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.throughput", description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="small",
                        help="tiny, small or 2b (random checkpoints, built once) or a checkpoint folder")
    parser.add_argument("--reranker-model", default=None, help="reranker checkpoint folder (default: --model)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    parser.add_argument("--quick", action="store_true", help="a few tiny inputs per case (smoke test)")
    parser.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    parser.add_argument("--repeats", type=int, default=None, help="timed runs per case (median; default 1 on CPU, "
                        "3 on GPU)")
    parser.add_argument("--case-timeout", type=float, default=None, help="hard cap in seconds per timed run")
    parser.add_argument("--cache-dir", default=None, help="where random checkpoints and videos are kept")
    parser.add_argument("--build", choices=("auto", "disk", "memory"), default="auto",
                        help="random checkpoints: saved to the cache (tiny, small) or built in memory on the device "
                             "(2b); default auto")
    parser.add_argument("--json", default=None, help="write the results as JSON here")
    parser.add_argument("--markdown", default=None, help="write the markdown table here")
    def extra_rows(flag: str, what: str, **kwargs: Any) -> None:
        parser.add_argument(flag, default=None, **kwargs, help=f"after the main cases, time ours again {what} (extra "
                            "rows, each against its main row's baseline)")

    extra_rows("--extra-workers", "on --extra-cases with this many preprocessing workers (a comma-separated list: a "
               "row for each)")
    parser.add_argument("--extra-cases", default="embed_text,embed_images,embed_images_448",
                        help="cases for --extra-workers")
    extra_rows("--extra-whole-pairs", "on these cases with share_query_prefix off")
    extra_rows("--extra-shared-query-part", "on these cases with share_query_prefix on")
    extra_rows("--extra-stock-rms-norm", "on these cases with the language model's stock RMSNorm")
    extra_rows("--extra-batch-overhead", "on --extra-overhead-cases with this fixed cost per forward pass (in tokens) "
               "in the batch planner instead of the core's", type=int)
    parser.add_argument("--extra-overhead-cases", default="embed_text,embed_images_448",
                        help="cases for --extra-batch-overhead")
    extra_rows("--extra-batch-size", "on --extra-batch-size-cases with this many items at most per forward pass (the "
               "core's batch_size; the token budget still applies)", type=int)
    parser.add_argument("--extra-batch-size-cases", default="embed_text", help="cases for --extra-batch-size")
    extra_rows("--extra-call-size", "on --extra-call-cases with the inputs handed to the core in calls of this many "
               "items, as LlamaIndex's get_*_batch methods do with embed_batch_size", type=int)
    parser.add_argument("--extra-call-cases", default="embed_text,embed_images_448",
                        help="embedding cases for --extra-call-size")
    extra_rows("--extra-cudnn-attention", "on these cases with torch's own choice of attention kernels, cuDNN's "
               "included (CUDA only)")
    extra_rows("--extra-whole-last-layer", "on these cases with the last decoder layer run at every position (the "
               "core runs it at each row's last token only)")
    extra_rows("--extra-padding-mask", "on these cases with the padding mask sent to the model (the core sends none)")
    extra_rows("--extra-tower-vision-layout", "on these cases with the vision tower computing its layout inside the "
               "forward pass (the core computes it with the batch)")
    extra_rows("--extra-masked-cached-rows", "on these cases with the rows that continue a cached query part "
               "attending through transformers' boolean mask (the core uses the lower-right causal kernel)")
    extra_rows("--extra-long-rows-bias", "on these cases with long rows that continue a cached query part attending "
               "through the lower-right causal bias, a mask on the CPU (the core runs them on the causal kernel behind "
               "placeholder rows there)")
    extra_rows("--extra-unqueued", "on these cases reading each micro-batch's output before queueing the next (the "
               "core queues the next one first)")
    extra_rows("--extra-host-pixels", "on these cases with image pixels rescaled and normalised by the processor on the "
               "host (the core does it on a CUDA device)")
    extra_rows("--extra-compiled", "on these cases, last, with the core's torch_compile option (the language model's "
               "decoder layers under torch.compile, dynamic shapes; one untimed full run first compiles)")
    parser.add_argument("--compile-options", default="true", help="the torch_compile option of --extra-compiled, as "
                        "JSON: true (torch's defaults) or torch.compile's options, e.g. "
                        "'{\"mode\": \"max-autotune-no-cudagraphs\"}'")
    parser.add_argument("--profile", default=None,
                        help="comma-separated cases to run once more, ours only, under torch.profiler (main "
                        "rows only)")
    parser.add_argument("--profile-out", default="profile.txt", help="where --profile writes its tables")
    parser.add_argument("--texts", default=None, metavar="N,MIN,MAX",
                        help="embed_text's texts: N texts of MIN to MAX tokens, log-uniform (default 256,10,2000)")
    parser.add_argument("--rerank-docs", default=None, metavar="N,MIN,MAX",
                        help="the reranked text documents: N texts of MIN to MAX tokens (default 64,10,1000)")
    parser.add_argument("--limit", type=int, default=None, help="use only the first N inputs of each case (experiments)")
    parser.add_argument("--threads", type=int, default=None, help="torch intra-op threads (default: torch's)")
    parser.add_argument("--workers", type=int, default=None,
                        help="preprocessing worker threads of our core (default: the core's)")
    parser.add_argument("--share-query-prefix", choices=("auto", "on", "off"), default="auto",
                        help="our reranker runs the query part of its prompts once per call (default: the core's "
                             "choice, auto)")
    parser.add_argument("--max-batch-tokens", type=int, default=None,
                        help="padded-token budget per micro-batch of our core (default: the core's)")
    args = parser.parse_args(argv)
    args.baseline_skip = None
    args.baseline_outputs = {}
    args.full_warmup = False
    unknown = set(args.cases.split(",")) - set(CASES)
    if unknown:
        parser.error(f"unknown case(s) {sorted(unknown)}")
    return args


def main(argv: Sequence[str] | None = None) -> dict[str, Any]:
    args = parse_args(argv)
    from qwen3vl_integrations import Qwen3VLEmbedder, Qwen3VLReranker
    from qwen3vl_integrations.core.loading import resolve_dtype

    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda but torch sees no GPU")
    dtype = resolve_dtype(args.dtype, device)
    args.dtype_name = str(dtype).replace("torch.", "")
    if args.repeats is None:
        args.repeats = 3 if device.type == "cuda" and not args.quick else 1
    cache_dir = cache_folder(args.cache_dir)
    env = environment(device, args)
    log(f"device {device} ({env['gpu'] or env['cpu']}), dtype {args.dtype_name}, torch {env['torch']}, "
        f"transformers {env['transformers']}, {env['torch_threads']} threads")

    emb_path, rr_path, origin = checkpoint_paths(args.model, args.reranker_model, dtype, device, cache_dir,
                                                 args.build)
    env["checkpoint"] = origin
    options: dict[str, Any] = {"device": device, "dtype": dtype}
    if args.workers is not None:
        options["preprocess_workers"] = args.workers
    if args.max_batch_tokens:
        options["max_batch_tokens"] = args.max_batch_tokens
    embedder = Qwen3VLEmbedder(emb_path, **options)
    reranker = Qwen3VLReranker(rr_path, share_query_prefix={"auto": None, "on": True, "off": False}[
        args.share_query_prefix], **options)
    env["share_query_prefix"] = args.share_query_prefix
    start = time.perf_counter()
    embedder.load()
    reranker.load()
    log(f"models ready in {time.perf_counter() - start:.1f} s")
    params = model_parameters(embedder.load().backbone)
    env["lm_params_without_embeddings"], env["vision_params"] = params
    ours_embed_counter = count_ours(embedder)
    ours_rerank_counter = count_ours(reranker)

    sizes = Sizes.for_run(args.quick, device.type).with_texts(args.texts).with_rerank_docs(args.rerank_docs)
    corpora: Corpora = build_corpora(embedder.load().tokenizer, sizes, cache_dir / "media")
    if args.limit:
        for name in ("texts", "images", "images_448", "mixed", "rerank_texts", "rerank_images", "queries"):
            setattr(corpora, name, getattr(corpora, name)[: args.limit])
    notes = dict(corpora.notes)
    notes["images_448"] = f"{len(corpora.images_448)} JPEG images of 448x448"

    # Warm-up: first calls allocate, spin up thread pools and (on GPUs) load kernels.
    warm_items = [corpora.texts[0], {"image": corpora.images_448[0]}]
    embedder.embed(warm_items)
    official_embed(embedder, warm_items)
    reranker.score(corpora.query, corpora.rerank_texts[:2])
    official_score(reranker, corpora.query, corpora.rerank_texts[:2])

    def embed_case(name: str, description: str, items: list[Any]) -> CaseResult:
        warm = None
        if device.type == "cuda":
            def warm() -> None:
                embedder.embed(items[:8])
                official_embed(embedder, items[:8])
        return run_case(name, description, "items", len(items), lambda: embedder.embed(items),
                        lambda counter: official_embed(embedder, items, counter), ours_embed_counter, args, device,
                        params, warm)

    def rerank_case(name: str, description: str, documents: list[Any], query: Any = corpora.query) -> CaseResult:
        warm = None
        if device.type == "cuda":
            def warm() -> None:
                reranker.score(query, documents[:8])
                official_score(reranker, query, documents[:8])
        return run_case(name, description, "pairs", len(documents), lambda: reranker.score(query, documents),
                        lambda counter: official_score(reranker, query, documents, counter=counter),
                        ours_rerank_counter, args, device, params, warm)

    def batch_case(name: str) -> CaseResult:
        description, query, items = batch_case_inputs(corpora)[name]
        if query is None:
            return embed_case(name, description, items)
        return rerank_case(name, description, items, query)

    plan: dict[str, Callable[[], CaseResult]] = {name: (lambda name=name: batch_case(name)) for name in BATCH_CASES}
    plan["embed_query"] = lambda: run_case(
        "embed_query", f"{len(corpora.queries)} short queries, one call each", "items", len(corpora.queries),
        lambda: np.concatenate([embedder.embed([q]) for q in corpora.queries]),
        lambda counter: np.concatenate([official_embed(embedder, [q], counter) for q in corpora.queries]),
        ours_embed_counter, args, device, params, None)
    results: list[CaseResult] = []
    for name in CASES:
        if name not in args.cases.split(","):
            continue
        results.append(plan[name]())
        write_outputs(args, env, notes, results, device, final=False)
    main_rows = list(results)  # extra rows are made from these only
    for cases, label, setting in extra_settings(args, embedder, reranker, device):
        for main_row in [r for r in main_rows if r.name in cases.split(",")]:
            try:
                with setting(main_row.name):
                    results.append(extra_row(main_row, plan, args, device, label))
            except Exception as exc:  # an experiment must never cost the table
                log(f"{main_row.name} [{label}] stopped: {exc!r}")
            write_outputs(args, env, notes, results, device, final=False)
    if args.extra_compiled:
        from torch._dynamo.utils import counters

        log(f"torch.compile: {dict(counters['stats'])}; graph breaks: {dict(counters['graph_break'])}")
    text = write_outputs(args, env, notes, results, device, final=True)
    print()
    print(text, flush=True)
    return {"environment": env, "inputs": notes, "cases": [asdict(r) for r in results], "markdown": text}


if __name__ == "__main__":
    main()
    sys.exit(0)
