"""Interleaved A/B of one switch of the core: ours only, the lever on and off in alternation, on the inputs of the
throughput benchmark.

    python -m benchmarks.levers --lever padding-mask --cases embed_text,embed_mixed,rerank_text --runs 3

A lever is a module switch of the core (`throughput.CORE_SWITCHES`) or an option of our objects (`OPTION_LEVERS`).

A shared machine drifts by 10-15% over minutes; alternating the two settings run by run (on, off, then off, on, ...)
keeps that drift out of the ratio, which separate whole-table runs (`throughput --extra-...`) cannot. Prints one
markdown table: median seconds with the lever on and off, every run, and the largest difference between the outputs.
"""
from __future__ import annotations

import argparse
import statistics
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from benchmarks.corpora import Sizes, build_corpora
from benchmarks.throughput import (BATCH_CASES, CORE_SWITCHES, attributes, batch_case_inputs, cache_folder,
                                   checkpoint_paths, core_switch, log)
from qwen3vl_integrations.core.compiled_layers import compile_options

# Options of our embedder and reranker measured as levers: name -> (attribute, value on, value off)
OPTION_LEVERS: dict[str, tuple[str, Any, Any]] = {"torch-compile": ("torch_compile", compile_options(True), None)}
LEVERS = sorted({*CORE_SWITCHES, *OPTION_LEVERS})


def case_functions(embedder: Any, reranker: Any, sizes: Sizes, media_dir: Path) -> dict[str, Callable[[], np.ndarray]]:
    """Case name -> our call on the throughput benchmark's inputs of that case."""
    def call(query: Any, items: list[Any]) -> Callable[[], np.ndarray]:
        if query is None:
            return lambda: embedder.embed(items)
        return lambda: np.asarray(reranker.score(query, items))

    cases = batch_case_inputs(build_corpora(embedder.load().tokenizer, sizes, media_dir))
    return {name: call(query, items) for name, (_, query, items) in cases.items()}


def alternate(fn: Callable[[], np.ndarray], setting: Callable[[bool], Any], runs: int
              ) -> tuple[dict[bool, list[float]], float]:
    """Seconds per run with the lever on (True) and off (False), taken in alternating order, and the largest
    difference between the two settings' outputs."""
    times: dict[bool, list[float]] = {True: [], False: []}
    outputs: dict[bool, np.ndarray] = {}
    for run in range(runs):
        for on in ((True, False) if run % 2 == 0 else (False, True)):
            with setting(on):
                start = time.perf_counter()
                outputs[on] = fn()
                times[on].append(time.perf_counter() - start)
    return times, float(np.abs(outputs[True] - outputs[False]).max())


def lever_setting(levers: list[str], on: bool, embedder: Any, reranker: Any) -> ExitStack:
    """A context in which these levers are on (or off): module switches of the core, options of our objects."""
    stack = ExitStack()
    switches = [lever for lever in levers if lever in CORE_SWITCHES]
    if switches:
        stack.enter_context(core_switch("+".join(switches), on))
    for lever in levers:
        if lever in OPTION_LEVERS:
            name, value_on, value_off = OPTION_LEVERS[lever]
            for owner in (embedder, reranker):
                stack.enter_context(attributes(owner, **{name: value_on if on else value_off}))
    return stack


def describe(lever: str) -> str:
    if lever in OPTION_LEVERS:
        name, value_on, value_off = OPTION_LEVERS[lever]
        return f"option `{name}`: {value_on!r} on, {value_off!r} off"
    path, value_on, value_off, _ = CORE_SWITCHES[lever]
    return f"`core.{path}`: {value_on!r} on, {value_off!r} off"


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lever", required=True, help=f"one of {LEVERS}, or several joined by + "
                        "(switched on and off together)")
    parser.add_argument("--cases", default="embed_text,rerank_text", help=f"comma-separated subset of {BATCH_CASES}")
    parser.add_argument("--runs", type=int, default=3, help="runs per setting (median)")
    parser.add_argument("--model", default="small", help="tiny, small or 2b (random checkpoints) or a folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    parser.add_argument("--quick", action="store_true", help="a few tiny inputs per case (smoke test)")
    parser.add_argument("--cache-dir", default=None, help="where random checkpoints and media are kept")
    parser.add_argument("--texts", default=None, metavar="N,MIN,MAX",
                        help="embed_text's texts: N texts of MIN to MAX tokens (default: the benchmark's)")
    parser.add_argument("--rerank-docs", default=None, metavar="N,MIN,MAX",
                        help="rerank_text's documents: N texts of MIN to MAX tokens (default: the benchmark's)")
    args = parser.parse_args(argv)
    unknown = set(args.cases.split(",")) - set(BATCH_CASES)
    if unknown:
        parser.error(f"unknown cases {sorted(unknown)}; choose from {BATCH_CASES}")
    levers = args.lever.split("+")
    if set(levers) - set(LEVERS):
        parser.error(f"unknown levers {sorted(set(levers) - set(LEVERS))}; choose from {LEVERS}")

    from qwen3vl_integrations import Qwen3VLEmbedder, Qwen3VLReranker
    from qwen3vl_integrations.core.loading import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    cache_dir = cache_folder(args.cache_dir)
    emb_path, rr_path, _ = checkpoint_paths(args.model, None, dtype, device, cache_dir, "auto")
    embedder = Qwen3VLEmbedder(emb_path, device=device, dtype=dtype)
    reranker = Qwen3VLReranker(rr_path, device=device, dtype=dtype)
    sizes = Sizes.for_run(args.quick, device.type).with_texts(args.texts).with_rerank_docs(args.rerank_docs)
    functions = case_functions(embedder, reranker, sizes, cache_dir / "media")
    switches = ", ".join(describe(lever) for lever in levers)

    rows = []
    for case in [c for c in BATCH_CASES if c in args.cases.split(",")]:
        for on in (True, False):  # warm-up of both settings (a compiled lever compiles here)
            with lever_setting(levers, on, embedder, reranker):
                functions[case]()
        times, diff = alternate(functions[case], lambda on: lever_setting(levers, on, embedder, reranker), args.runs)
        on, off = statistics.median(times[True]), statistics.median(times[False])
        runs = " / ".join(f"{a:.2f}, {b:.2f}" for a, b in zip(times[True], times[False]))
        rows.append(f"| {case} | {on:.2f} | {off:.2f} | {off / on:.3f}x | {runs} | {diff:.1e} |")
        log(rows[-1])
    hardware = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{torch.get_num_threads()} threads"
    text = "\n".join([
        f"Lever `{args.lever}` ({switches}), `{args.model}` model, "
        f"{device.type} ({hardware}), {str(dtype).replace('torch.', '')}, {args.runs} runs per setting, alternating"
        + (f"; embed_text: {sizes.texts} texts of {sizes.text_min}-{sizes.text_max} tokens" if args.texts else "")
        + (f"; rerank_text: {sizes.rerank_docs} documents of {sizes.rerank_doc_min}-{sizes.rerank_doc_max} tokens"
           if args.rerank_docs else ""),
        "", "| case | on: median s | off: median s | gain | runs on, off | max \\|diff\\| |", "|---|---|---|---|---|---|",
        *rows])
    print(text)
    return text


if __name__ == "__main__":
    main()
