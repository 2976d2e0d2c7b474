"""Storage profiles benchmark: Matryoshka dimensions x precisions on synthetic unit vectors.

    python -m benchmarks.quantization [--n 100000] [--dim 2048] [--queries 100] [--dims 2048,1024,512] [--json PATH]

Builds ``n`` random unit vectors with ``--planted`` near neighbours per query (cosines evenly spaced from 0.85 down to
0.25, so the top 10 are all planted and the cut between 10th and 11th is a 0.02 gap), and prints one markdown table:
bytes per vector, search time per query (all queries in one `search` call, divided by the number of queries; best of
`--repeat` runs), and
recall@10 against exact float32 search at the full dimension and at the same dimension.

Caveat: the vectors are isotropic Gaussian, so truncation behaves like a random projection. Real Qwen3-VL embeddings
are trained for Matryoshka truncation and lose much less (technical report); use this table for the costs and for the
relative effect of quantization and rescoring, not for absolute quality.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import time
from pathlib import Path

import numpy as np

from qwen3vl_integrations.quantization import calibrate, quantize, search, truncate

TOP_K = 10
PROFILES = ("float32", "float16", "int8", "binary", "binary+int8 rescore x4", "binary+int8 rescore x10")


def make_data(n: int, dim: int, queries: int, planted: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Unit corpus ``[n, dim]`` and unit queries ``[queries, dim]``, float32, with planted neighbours per query."""
    rng = np.random.default_rng(seed)
    corpus = rng.standard_normal((n, dim), dtype=np.float32)
    for s in range(0, n, 16384):
        blk = corpus[s : s + 16384]
        blk /= np.linalg.norm(blk, axis=1, keepdims=True)
    q = rng.standard_normal((queries, dim), dtype=np.float32)
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    planted = min(planted, n // max(queries, 1))
    if planted:
        cos = np.linspace(0.85, 0.25, planted, dtype=np.float64)
        pos = rng.choice(n, size=(queries, planted), replace=False)
        r = rng.standard_normal((queries, planted, dim))
        r -= np.einsum("qpd,qd->qp", r, q)[:, :, None] * q[:, None, :]  # orthogonal to the query
        r /= np.linalg.norm(r, axis=2, keepdims=True)
        x = cos[None, :, None] * q[:, None, :] + np.sqrt(1 - cos**2)[None, :, None] * r
        corpus[pos.reshape(-1)] = x.reshape(-1, dim).astype(np.float32)
    return corpus, q


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def _timed(fn, repeat: int = 1):
    """Result of fn() and its best wall time over `repeat` runs (the machine may be shared)."""
    best = float("inf")
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = fn()
        best = min(best, time.perf_counter() - t0)
    return out, best


def run(n: int = 100_000, dim: int = 2048, queries: int = 100, dims: tuple[int, ...] = (2048, 1024, 512),
        planted: int = 30, calibration: int = 10_000, seed: int = 0, use_faiss: bool | None = None,
        repeat: int = 1) -> list[dict]:
    corpus, q = make_data(n, dim, queries, planted, seed)
    truth_full, _ = _timed(lambda: search(q, corpus, "float32", top_k=TOP_K, use_faiss=use_faiss)[1])
    rows = []
    for d in dims:
        xd = corpus if d == dim else truncate(corpus, d, min_dimensions=1)
        qd = q if d == dim else truncate(q, d, min_dimensions=1)
        ranges = calibrate(xd[: min(n, calibration)])
        codes = quantize(xd, "int8", ranges=ranges)
        bits = quantize(xd, "ubinary")
        truth_same = None
        for profile in PROFILES:
            if profile == "float32":
                store, prec, kw, nbytes = xd, "float32", {}, 4 * d
            elif profile == "float16":
                store, prec, kw, nbytes = quantize(xd, "float16"), "float16", {}, 2 * d
            elif profile == "int8":
                store, prec, kw, nbytes = codes, "int8", {"ranges": ranges}, d
            elif profile == "binary":
                store, prec, kw, nbytes = bits, "ubinary", {}, bits.shape[1]
            else:
                mult = int(profile.rsplit("x", 1)[1])
                store, prec, nbytes = bits, "ubinary", bits.shape[1] + d
                kw = {"rescore": codes, "ranges": ranges, "rescore_multiplier": mult}
            (_, idx), secs = _timed(lambda: search(qd, store, prec, top_k=TOP_K, use_faiss=use_faiss, **kw), repeat)
            if profile == "float32":
                truth_same = idx
            rows.append({
                "dims": d,
                "precision": profile,
                "bytes_per_vector": int(nbytes),
                "ms_per_query": 1000.0 * secs / queries,
                "recall_at_10_vs_full_float32": _recall(idx, truth_full),
                "recall_at_10_vs_same_dims_float32": _recall(idx, truth_same),
            })
        del xd, codes, bits
    return rows


def format_table(rows: list[dict], dim: int) -> str:
    head = (f"| dims | precision | bytes/vector | ms/query | recall@10 vs float32@{dim} "
            "| recall@10 vs float32@same dims |\n|---:|---|---:|---:|---:|---:|")
    lines = [head]
    for r in rows:
        lines.append(f"| {r['dims']} | {r['precision']} | {r['bytes_per_vector']:,} | {r['ms_per_query']:.2f} | "
                     f"{r['recall_at_10_vs_full_float32']:.3f} | {r['recall_at_10_vs_same_dims_float32']:.3f} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> str:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--n", type=int, default=100_000, help="corpus vectors")
    p.add_argument("--dim", type=int, default=2048, help="full dimension")
    p.add_argument("--queries", type=int, default=100)
    p.add_argument("--dims", default="2048,1024,512", help="comma-separated Matryoshka dimensions (<= --dim)")
    p.add_argument("--planted", type=int, default=30, help="planted neighbours per query")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=2, help="time each search this many times, report the best")
    p.add_argument("--backend", choices=("auto", "numpy", "faiss"), default="auto")
    p.add_argument("--json", type=Path, default=None, help="also write the rows and settings as JSON")
    a = p.parse_args(argv)
    dims = tuple(int(v) for v in a.dims.split(",") if v.strip())
    if not dims or any(not 0 < d <= a.dim for d in dims):
        p.error(f"--dims must be in 1..{a.dim}")
    use_faiss = {"auto": None, "numpy": False, "faiss": True}[a.backend]
    t0 = time.perf_counter()
    rows = run(a.n, a.dim, a.queries, dims, a.planted, seed=a.seed, use_faiss=use_faiss, repeat=a.repeat)
    table = format_table(rows, a.dim)
    try:
        import faiss  # noqa: F401

        backend = "faiss" if use_faiss is not False else "numpy"
    except ImportError:
        backend = "numpy"
    print(f"n={a.n:,} dim={a.dim} queries={a.queries} planted={a.planted} top_k={TOP_K} backend={backend} "
          f"cpus={os.cpu_count()} best of {a.repeat} ({platform.machine()}, total {time.perf_counter() - t0:.1f} s)\n")
    print(table)
    if a.json is not None:
        settings = {"n": a.n, "dim": a.dim, "queries": a.queries, "planted": a.planted, "seed": a.seed,
                    "repeat": a.repeat, "cpus": os.cpu_count(), "top_k": TOP_K, "backend": backend}
        a.json.write_text(json.dumps({**settings, "rows": rows}, indent=2))
    return table


if __name__ == "__main__":
    main()
