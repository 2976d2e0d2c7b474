"""Short queries from concurrent clients: a search service embedding each user's query in its own call.

    python -m benchmarks.concurrent_queries --model small --device cpu --clients 1,4,8,16

Each client is a thread that embeds its share of the same short queries one call at a time, as LangChain's and
LlamaIndex's async methods do (each call in a worker thread). Three ways, on the same queries and weights: ours,
whose calls that wait for the model run their text rows together (core/joining.py); ours with every call running
its own forward pass (`join_concurrent_calls=False`); and the official procedure, whose calls take turns (its
processor, and in this re-enactment the model's stock forwards, are shared state that is not safe to use from
several threads at once). For each: queries/s, each call's latency (median and 95th percentile), forward passes,
and the largest difference from the official procedure's vectors, run one call at a time. `--image-queries N` adds
rows for N image queries (a search by picture: `--image-size` px square JPEGs), whose calls join the same way.
"""
from __future__ import annotations

import argparse
import statistics
import threading
import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np
import torch

from benchmarks.corpora import TextMaker, jpeg, log_uniform_lengths, synthetic_image
from benchmarks.throughput import cache_folder, checkpoint_paths, environment, log

INSTRUCTION = "Retrieve images or text relevant to the user's query."
Query = dict[str, Any]
Way = tuple[str, Callable[[Query], np.ndarray]]  # (label, one call embedding one query)


def serve(clients: int, queries: Sequence[Query], embed_one: Callable[[Query], np.ndarray]
          ) -> tuple[float, list[float], np.ndarray]:
    """(seconds for all queries, each call's seconds, the vectors in query order): `clients` threads, client k
    embedding queries k, k + clients, ... one call each."""
    vectors: list[Any] = [None] * len(queries)
    latencies: list[float] = []
    failures: list[BaseException] = []
    barrier = threading.Barrier(clients + 1)

    def client(k: int) -> None:
        try:
            barrier.wait()
            for i in range(k, len(queries), clients):
                start = time.perf_counter()
                vectors[i] = embed_one(queries[i])
                latencies.append(time.perf_counter() - start)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
            failures.append(exc)

    threads = [threading.Thread(target=client, args=(k,), name=f"client-{k}") for k in range(clients)]
    for thread in threads:
        thread.start()
    barrier.wait()
    start = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    if failures:
        raise failures[0]
    return seconds, latencies, np.concatenate(vectors)


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def serve_all(kind: str, queries: Sequence[Query], counts: Sequence[int], ways: Sequence[Way], repeats: int,
              passes_run: list[int]) -> list[str]:
    """The table rows of `queries` served each way (the last one the official procedure, whose vectors, one call at
    a time, are the reference) from each number of clients: the median of `repeats` runs."""
    official = ways[-1][1]
    reference = np.concatenate([official(q) for q in queries])
    for query in queries[:4]:  # warm-up
        for _, embed_one in ways:
            embed_one(query)
    rows = []
    for clients in counts:
        measured: dict[str, tuple[float, list[float], float, float]] = {}  # seconds, latencies, passes, diff
        for label, embed_one in ways:
            runs, latencies, passes, diff = [], [], [], 0.0
            for _ in range(repeats):
                before = passes_run[0]
                seconds, call_seconds, vectors = serve(clients, queries, embed_one)
                passes.append(passes_run[0] - before)
                runs.append(seconds)
                latencies += call_seconds
                diff = max(diff, float(np.abs(vectors - reference).max()))
            measured[label] = (statistics.median(runs), latencies, statistics.median(passes), diff)
            log(f"{kind} queries, clients {clients}, {label}: {', '.join(f'{s:.2f} s' for s in runs)}; forward "
                f"passes {', '.join(map(str, passes))}")
        official_rate = len(queries) / measured[ways[-1][0]][0]
        for label, (seconds, latencies, median_passes, diff) in measured.items():
            rate = len(queries) / seconds
            rows.append(f"| {kind} | {clients} | {label} | {rate:.3g} | {rate / official_rate:.2f}x | "
                        f"{percentile(latencies, 0.5) * 1e3:.0f} | {percentile(latencies, 0.95) * 1e3:.0f} | "
                        f"{median_passes:g} | {diff:.1e} |")
    return rows


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="small", help="tiny, small or 2b (random checkpoints) or a folder")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default=None, help="float32 (CPU default) or bfloat16 (GPU default)")
    parser.add_argument("--clients", default="1,4,8,16", help="comma-separated numbers of concurrent clients")
    parser.add_argument("--queries", type=int, default=64, help="text queries in all, of 8 to 32 tokens (0: none)")
    parser.add_argument("--image-queries", type=int, default=0, help="also serve this many image queries")
    parser.add_argument("--image-size", type=int, default=448, help="the image queries' side in pixels")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per way and client count (median)")
    parser.add_argument("--cache-dir", default=None, help="where random checkpoints are kept")
    parser.add_argument("--output", default=None, help="also write the table to this file")
    args = parser.parse_args(argv)

    from benchmarks.official import official_embed
    from qwen3vl_integrations import Qwen3VLEmbedder
    from qwen3vl_integrations.core.loading import resolve_device, resolve_dtype

    device = resolve_device(args.device)
    dtype = resolve_dtype(args.dtype, device)
    cache_dir = cache_folder(args.cache_dir)
    path, _, made = checkpoint_paths(args.model, None, dtype, device, cache_dir, "auto")
    embedder = Qwen3VLEmbedder(path, device=device, dtype=dtype)
    loaded = embedder.load()
    maker = TextMaker(loaded.tokenizer, seed=0)
    kinds: dict[str, list[Query]] = {}
    if args.queries:
        kinds["text"] = [{"text": maker.text(n), "instruction": INSTRUCTION}
                         for n in log_uniform_lengths(args.queries, 8, 32, seed=11)]
    if args.image_queries:
        side = args.image_size
        kinds[f"image {side}px"] = [{"image": jpeg(synthetic_image(side, side, seed=101 + k)),
                                     "instruction": INSTRUCTION} for k in range(args.image_queries)]
    turns = threading.Lock()

    def official_one(query: Query) -> np.ndarray:
        with turns:
            return official_embed(embedder, [query])

    alone = Qwen3VLEmbedder(path, device=device, dtype=dtype, join_concurrent_calls=False)  # the same model
    ways: list[Way] = [
        ("ours", lambda q: embedder.embed([q])),
        ("ours, one pass per call", lambda q: alone.embed([q])),
        ("official procedure, calls in turn", official_one),
    ]
    passes_run = [0]  # the backbone's forward passes, whoever runs them
    loaded.backbone.register_forward_hook(lambda *_: passes_run.__setitem__(0, passes_run[0] + 1))
    counts = [int(c) for c in args.clients.split(",")]
    log(f"device {device}, dtype {str(dtype).replace('torch.', '')}, model {args.model} ({made}), "
        f"{', '.join(f'{len(q)} {kind} queries' for kind, q in kinds.items())}, clients {counts}, "
        f"{torch.get_num_threads()} torch threads")
    rows = [row for kind, queries in kinds.items()
            for row in serve_all(kind, queries, counts, ways, args.repeats, passes_run)]
    dtype_name = str(dtype).replace("torch.", "")
    env = environment(device, argparse.Namespace(dtype_name=dtype_name, model=args.model))
    machine = env["gpu"] or f"{env['cpu']}, {env['cpu_count']} cores"
    images = (f", {args.image_queries} image queries of {args.image_size}x{args.image_size} px"
              if args.image_queries else "")
    table = "\n".join([
        f"Short queries from concurrent clients, `{args.model}` model, {device.type} ({machine}), {dtype_name}, "
        f"torch {env['torch']}, transformers {env['transformers']}: {args.queries} text queries of 8-32 "
        f"tokens{images}, each client embedding its share one call at a time; median of {args.repeats} runs",
        "",
        "| queries | clients | way | queries/s | vs official | latency p50 ms | latency p95 ms | forward passes "
        "(median) | max \\|diff\\| |",
        "|---|---|---|---|---|---|---|---|---|",
        *rows,
    ])
    print(table)
    if args.output:
        Path(args.output).write_text(table + "\n")
    return table


if __name__ == "__main__":
    main()
