"""Attention of rows that continue a cached query part, on the CPU: the causal bias (run there as a mask) against
SDPA's causal kernel with placeholder rows in front (core/lower_right_attention.py).

    python -m benchmarks.cached_attention --runs 7

Both run through `sdpa_lower_right` on the same random queries, keys and values, in the shape of the `small`
benchmark model's layers (8 query heads, 4 key/value heads of 64) or of the real 2B (`--heads 16,8,128`), for
micro-batches of about 2,048 tokens (the core's CPU budget). Prints the median milliseconds of each, the ratio, the
path the core takes at that shape, and the largest difference between the two outputs.
"""
from __future__ import annotations

import argparse
import statistics
import time
from typing import Any, Callable, Sequence

import torch

from benchmarks.throughput import attributes


class _Attention(torch.nn.Module):
    is_causal = True

    def __init__(self, groups: int) -> None:
        super().__init__()
        self.num_key_value_groups = groups


def median_ms(fn: Callable[[], Any], runs: int) -> tuple[float, Any]:
    out = fn()  # warm-up
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1e3)
    return statistics.median(times), out


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cached", default="30,60,250", help="comma-separated cached query-part lengths")
    parser.add_argument("--rows", default="64,256,512,1000,2000", help="comma-separated row lengths")
    parser.add_argument("--batch-tokens", type=int, default=2048, help="rows per call: this many tokens' worth")
    parser.add_argument("--heads", default="8,4,64", help="query heads, key/value heads, head size")
    parser.add_argument("--runs", type=int, default=7)
    args = parser.parse_args(argv)

    from qwen3vl_integrations.core import lower_right_attention as attention

    heads, kv_heads, size = (int(n) for n in args.heads.split(","))
    module = _Attention(heads // kv_heads)
    generator = torch.Generator().manual_seed(0)
    rows = []
    for cached in (int(n) for n in args.cached.split(",")):
        for length in (int(n) for n in args.rows.split(",")):
            batch = max(1, args.batch_tokens // length)
            query = torch.randn(batch, heads, length, size, generator=generator)
            key, value = (torch.randn(batch, kv_heads, cached + length, size, generator=generator) for _ in range(2))

            def run() -> torch.Tensor:
                return attention.sdpa_lower_right(module, query, key, value, None, scaling=size ** -0.5)[0]

            with attributes(attention, CPU_LONG_ROWS_CAUSAL=False):
                masked, expected = median_ms(run, args.runs)
            with attributes(attention, CPU_LONG_ROWS_CAUSAL=True, CPU_LONG_ROWS_MIN_EXCESS=0):
                causal, out = median_ms(run, args.runs)
            chosen = "causal" if attention.takes_causal_kernel(length, cached + length, "cpu") else "bias"
            diff = float((out - expected).abs().max())
            rows.append(f"| {cached} | {length} | {batch} | {masked:.1f} | {causal:.1f} | {masked / causal:.2f}x "
                        f"| {chosen} | {diff:.1e} |")
            print(rows[-1], flush=True)
    text = "\n".join([
        f"Cached rows' attention on the CPU ({torch.get_num_threads()} threads), float32, {heads} query heads, "
        f"{kv_heads} key/value heads of {size}, median of {args.runs} runs; torch {torch.__version__}",
        "", "| cached tokens | row tokens | rows | causal bias ms | placeholder rows + causal ms | gain | core takes "
        "| max \\|diff\\| |", "|---|---|---|---|---|---|---|---|", *rows])
    print(text)
    return text


if __name__ == "__main__":
    main()
