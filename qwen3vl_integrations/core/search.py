"""Exact top-k search over float, int8/uint8 and binary corpora, with optional rescoring (numpy; FAISS when
installed). The codes themselves are ``core.quantization``'s.

``search`` scores, always float32, best first, ties broken by the lower corpus index:

- float corpora: the inner product of the float32 query with the stored vector;
- int8/uint8 corpora: the inner product of the float32 query with the dequantized vector (asymmetric; a query given
  as int8/uint8 codes is dequantized first);
- binary corpora: ``n_bits - hamming(query_bits, vector_bits)`` with ``n_bits = 8 * bytes per vector`` (the number
  of agreeing bits; padding bits are zero on both sides and always agree);
- with ``rescore=``: the inner product of the float32 query with the (dequantized) rescore vectors of the first
  stage's ``top_k * rescore_multiplier`` candidates.

Inner products are computed exactly for the returned candidates (float64 accumulation of float32 values, rounded to
float32), so numpy and FAISS return identical arrays: the first stage (numpy BLAS or FAISS) only proposes a
candidate pool, which is widened until the float32 rounding bound proves no vector outside it can enter the top-k.
"""
from __future__ import annotations

from typing import Any

import numpy as np

from .quantization import (
    BINARY_PRECISIONS,
    FLOAT_PRECISIONS,
    INT_PRECISIONS,
    Ranges,
    _as_2d,
    _check_finite_rows,
    _check_int,
    _check_precision,
    _coerce_ranges,
    _dequantize_int,
    _row_norms,
    _to_numpy,
    quantize,
    truncate,
)

__all__ = ["search"]

# Working-set limits (elements). Tests shrink them to exercise the block merges.
_BLOCK_ELEMS = 1 << 24  # float32 corpus block in the float first stage (64 MiB)
_QUERY_BLOCK = 256  # queries per matrix product
_HAMMING_ELEMS = 1 << 19  # XOR temporary in the numpy Hamming kernel (words: 4 MiB)
_FAISS_BINARY_BLOCK_BYTES = 1 << 26  # corpus bytes handed to one FAISS Hamming call
_CANON_ELEMS = 1 << 17  # float64 temporary of the exact rescoring (small: stays in cache)
_U32 = 2.0**-24  # unit roundoff of float32
_POPCOUNT_LUT = np.array([bin(i).count("1") for i in range(256)], dtype=np.uint8)


def _load_faiss(use_faiss: bool | None):
    if use_faiss is not None and not isinstance(use_faiss, bool):  # "false" is a truthy string
        raise ValueError(f"use_faiss must be True, False or None, got {use_faiss!r}")
    if use_faiss is False:
        return None
    try:
        import faiss  # noqa: PLC0415  (optional extra)
    except ImportError:
        if use_faiss:
            raise ImportError("use_faiss=True needs faiss: pip install 'qwen3vl-integrations[faiss]'") from None
        return None
    return faiss


def _sort_best_first(scores: np.ndarray, idx: np.ndarray) -> np.ndarray:
    """Row-wise order by (-score, index)."""
    return np.lexsort((idx, -scores), axis=-1)


class _FloatView:
    """A float or int8/uint8 corpus seen as float32 blocks for the first stage, and exactly for rescoring.

    First stage: ``score ~= A[q] @ block[i] + b0[q]`` where ``block`` is the stored vectors in float32 (float corpora)
    or the centred codes ``code - 128`` (int8/uint8; ``A = q * step``, ``b0 = q . (low + 128 step)``).
    Exact: ``q . dequantize(x)`` with float64 accumulation.
    """

    def __init__(self, corpus: np.ndarray, precision: str, ranges: Ranges | None, name: str = "corpus"):
        self.corpus, self.precision, self.ranges, self.name = corpus, precision, ranges, name
        self.n, self.dim = corpus.shape

    def prepare(self, q: np.ndarray) -> tuple[np.ndarray, np.ndarray, float]:
        if self.ranges is None:
            return q, np.zeros(len(q)), 0.0
        step = self.ranges.step
        mid = self.ranges.low.astype(np.float64) + 128.0 * step
        q64 = q.astype(np.float64)
        a = np.ascontiguousarray((q64 * step).astype(np.float32))
        return a, q64 @ mid, float(np.linalg.norm(mid))

    def block(self, start: int, stop: int) -> np.ndarray:
        b = self.corpus[start:stop]
        if self.precision == "int8":
            return b.astype(np.float32)
        if self.precision == "uint8":
            out = b.astype(np.float32)
            out -= 128.0
            return out
        return np.ascontiguousarray(b, dtype=np.float32)

    def rows(self, idx: np.ndarray) -> np.ndarray:
        x = self.corpus[idx]
        if self.ranges is not None:
            return _dequantize_int(x, self.precision, self.ranges)
        return x.astype(np.float32, copy=False)

    def exact(self, q: np.ndarray, idx: np.ndarray) -> np.ndarray:
        """float32(q[r] . x[idx[r, j]]) with float64 accumulation, shape of idx."""
        nq, m = idx.shape
        out = np.empty((nq, m), dtype=np.float32)
        if m == 0:
            return out
        # Tiles of queries x candidates hold about _CANON_ELEMS values, however many candidates a query has.
        cols = max(1, min(m, _CANON_ELEMS // max(self.dim, 1)))
        rows = max(1, _CANON_ELEMS // (cols * max(self.dim, 1)))
        for s in range(0, nq, rows):
            for c in range(0, m, cols):
                sub = idx[s : s + rows, c : c + cols]
                x = self.rows(sub.reshape(-1)).astype(np.float64).reshape(*sub.shape, self.dim)
                _check_finite_rows(x.reshape(-1, self.dim), sub.reshape(-1), self.name)
                x *= q[s : s + rows, None, :].astype(np.float64)
                out[s : s + rows, c : c + cols] = x.sum(axis=-1)
        return out


def _float_pool(
    a: np.ndarray, b0: np.ndarray, view: _FloatView, kp: int, faiss
) -> tuple[np.ndarray, np.ndarray, float]:
    """Approximate top-``kp`` per query (any order) and the largest row norm seen in the first-stage blocks."""
    nq = len(a)
    pool_v = np.full((nq, 0), -np.inf)
    pool_i = np.zeros((nq, 0), dtype=np.int64)
    bmax = 0.0
    cb = max(1, _BLOCK_ELEMS // max(view.dim, 1))
    for start in range(0, view.n, cb):
        stop = min(view.n, start + cb)
        blk = view.block(start, stop)
        row_sq = np.einsum("ij,ij->i", blk, blk)
        if not np.all(np.isfinite(row_sq)):  # a NaN or inf value makes its row's norm NaN or inf
            _check_finite_rows(blk, np.arange(start, stop), view.name)
        sq = float(np.max(row_sq))  # float32 sum: relative error <= gamma_D
        bmax = max(bmax, float(np.sqrt(sq * (1.0 + 4.0 * view.dim * _U32))))
        kb = min(kp, stop - start)
        vs, is_ = [], []
        for qs in range(0, nq, _QUERY_BLOCK):
            aq = a[qs : qs + _QUERY_BLOCK]
            if faiss is not None:
                v, i = faiss.knn(aq, blk, kb, metric=faiss.METRIC_INNER_PRODUCT)
            else:
                s = aq @ blk.T
                if kb < s.shape[1]:
                    i = np.argpartition(s, s.shape[1] - kb, axis=1)[:, -kb:]
                    v = np.take_along_axis(s, i, axis=1)
                else:
                    i = np.broadcast_to(np.arange(s.shape[1]), s.shape)
                    v = s
            vs.append(v)
            is_.append(i.astype(np.int64) + start)
        v = np.concatenate(vs).astype(np.float64) + b0[:, None]
        i = np.concatenate(is_)
        pool_v = np.concatenate([pool_v, v], axis=1)
        pool_i = np.concatenate([pool_i, i], axis=1)
        if pool_v.shape[1] > kp:
            keep = np.argpartition(pool_v, pool_v.shape[1] - kp, axis=1)[:, -kp:]
            pool_v = np.take_along_axis(pool_v, keep, axis=1)
            pool_i = np.take_along_axis(pool_i, keep, axis=1)
    return pool_v, pool_i, bmax


def _float_topk(q: np.ndarray, view: _FloatView, k: int, faiss) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k by the exact inner product, ties by lower index; first stage by BLAS or FAISS."""
    nq, n = len(q), view.n
    a, b0, mid_norm = view.prepare(q)
    a_norm = _row_norms(a)
    q_norm = _row_norms(q)
    max_step = float(view.ranges.step.max()) if view.ranges is not None else 0.0
    gamma = view.dim * _U32 / (1.0 - view.dim * _U32)
    out_s = np.empty((nq, k), dtype=np.float32)
    out_i = np.empty((nq, k), dtype=np.int64)
    todo = np.arange(nq)
    kp = min(n, 2 * k + 16)
    while todo.size:
        pool_v, pool_i, bmax = _float_pool(a[todo], b0[todo], view, kp, faiss)
        s = view.exact(q[todo], pool_i)
        order = _sort_best_first(s, pool_i)[:, :k]
        top_s = np.take_along_axis(s, order, axis=1)
        top_i = np.take_along_axis(pool_i, order, axis=1)
        if kp >= n:
            ok = np.ones(todo.size, dtype=bool)
        else:
            # Anything outside the pool has a first-stage score <= min(pool) and an exact score at most `tol` above.
            xmax = bmax if view.ranges is None else mid_norm + max_step * bmax
            sk = top_s[:, -1].astype(np.float64)
            tol = 1.5 * ((gamma + 2 * _U32) * a_norm[todo] * bmax + 2 * _U32 * q_norm[todo] * xmax)
            tol += 4 * _U32 * np.abs(sk) + 1e-30
            ok = pool_v.min(axis=1) + tol < sk
        out_s[todo[ok]] = top_s[ok]
        out_i[todo[ok]] = top_i[ok]
        todo = todo[~ok]
        kp = min(n, kp * 4)
    return out_s, out_i


def _popcount_rows(x: np.ndarray) -> np.ndarray:
    if hasattr(np, "bitwise_count"):
        return np.bitwise_count(x).sum(axis=-1, dtype=np.int32)
    return _POPCOUNT_LUT[x.view(np.uint8)].sum(axis=-1, dtype=np.int32)


def _hamming_numpy(qb: np.ndarray, corpus: np.ndarray, k: int) -> np.ndarray:
    """Exact top-k keys ``hamming * n + index`` per query (sorted), XOR + popcount in bounded blocks."""
    nq, nbytes = qb.shape
    n = corpus.shape[0]
    words = nbytes % 8 == 0 and hasattr(np, "bitwise_count")
    qw = np.ascontiguousarray(qb).view(np.uint64) if words else qb
    width = qw.shape[1]
    qblock = max(1, min(nq, _QUERY_BLOCK))
    cb = max(1, _HAMMING_ELEMS // (qblock * width))
    pool = np.zeros((nq, 0), dtype=np.int64)
    for start in range(0, n, cb):
        stop = min(n, start + cb)
        blk = np.ascontiguousarray(corpus[start:stop])
        bw = blk.view(np.uint64) if words else blk
        keys = np.empty((nq, stop - start), dtype=np.int64)
        for qs in range(0, nq, qblock):
            d = _popcount_rows(np.bitwise_xor(qw[qs : qs + qblock, None, :], bw[None, :, :]))
            keys[qs : qs + qblock] = d.astype(np.int64) * n + np.arange(start, stop)
        pool = np.concatenate([pool, keys], axis=1)
        if pool.shape[1] > k:
            pool = np.partition(pool, k - 1, axis=1)[:, :k]
    return np.sort(pool, axis=1)


def _hamming_faiss(qb: np.ndarray, corpus: np.ndarray, k: int, faiss) -> np.ndarray:
    """Same keys as ``_hamming_numpy`` with FAISS; pools are widened where a tie at the cut could hide a lower index."""
    nq, nbytes = qb.shape
    n = corpus.shape[0]
    cb = max(1, _FAISS_BINARY_BLOCK_BYTES // nbytes)
    out = np.empty((nq, k), dtype=np.int64)
    todo = np.arange(nq)
    kp = min(n, 2 * k + 16)
    while todo.size:
        q = np.ascontiguousarray(qb[todo])
        pool = np.zeros((todo.size, 0), dtype=np.int64)
        worst = []  # (max distance returned, block fully returned?)
        for start in range(0, n, cb):
            stop = min(n, start + cb)
            blk = np.ascontiguousarray(corpus[start:stop])  # a view when the corpus is C-contiguous
            kb = min(kp, stop - start)
            d, i = faiss.knn_hamming(q, blk, kb)
            pool = np.concatenate([pool, d.astype(np.int64) * n + i + start], axis=1)
            worst.append((d.max(axis=1), kb == stop - start))
            if pool.shape[1] > k:
                pool = np.partition(pool, k - 1, axis=1)[:, :k]
        pool = np.sort(pool, axis=1)
        dk = pool[:, -1] // n
        ok = np.ones(todo.size, dtype=bool)
        for w, full in worst:
            if not full:
                ok &= w > dk  # an unreturned vector of this block may tie with the k-th at a lower index
        out[todo[ok]] = pool[ok]
        todo = todo[~ok]
        kp = min(n, kp * 4)
    return out


def _binary_topk(qb: np.ndarray, corpus: np.ndarray, k: int, faiss) -> tuple[np.ndarray, np.ndarray]:
    corpus_u8 = corpus.view(np.uint8)
    qb = np.ascontiguousarray(qb.view(np.uint8))
    if faiss is not None:
        keys = _hamming_faiss(qb, corpus_u8, k, faiss)
    else:
        keys = _hamming_numpy(qb, corpus_u8, k)
    n = corpus.shape[0]
    dist, idx = np.divmod(keys, n)
    return (8 * corpus.shape[1] - dist).astype(np.float32), idx


def _infer_precision(arr: np.ndarray, name: str) -> str:
    if np.issubdtype(arr.dtype, np.floating):
        return "float32"
    if arr.dtype == np.int8:
        return "int8"
    if arr.dtype == np.uint8:
        return "uint8"
    raise ValueError(f"{name} must be float, int8 or uint8, got dtype {arr.dtype}")


def _float_queries(q: np.ndarray, dim: int, rescore_dim: int | None, ranges: Any, precision: str) -> np.ndarray:
    """Float32 queries of width ``dim`` (first stage). Int codes are dequantized; longer queries are truncated
    (Matryoshka funnel) only when they match the rescore corpus."""
    if not np.issubdtype(q.dtype, np.floating):
        if precision in INT_PRECISIONS and q.dtype == np.dtype(precision):
            q = _dequantize_int(q, precision, _coerce_ranges(ranges, q.shape[1], precision))
        else:
            raise ValueError(f"queries for a {precision} corpus must be float vectors, got dtype {q.dtype}")
    q = q.astype(np.float32)
    if not np.all(np.isfinite(q)):
        raise ValueError("queries contain NaN or infinite values")
    if q.shape[1] == dim:
        return q
    if rescore_dim is not None and q.shape[1] == rescore_dim and q.shape[1] > dim:
        return truncate(q, dim, normalize=True, min_dimensions=1)
    raise ValueError(
        f"queries have {q.shape[1]} dimensions but the corpus has {dim}; truncate() the queries to {dim} "
        f"(or pass a rescore corpus with {q.shape[1]} dimensions)"
    )


def search(
    query_vecs: Any,
    corpus: Any,
    precision: str,
    top_k: int = 10,
    rescore: Any = None,
    ranges: Any = None,
    rescore_multiplier: int = 4,
    use_faiss: bool | None = None,
    rescore_ranges: Any = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k inner-product / Hamming search over a (quantized) corpus, with optional exact rescoring.

    Args:
        query_vecs: float queries ``[nq, dim]`` (or one 1-D query). For binary corpora they are binarised; packed
            codes (``[nq, bytes]`` int8/uint8) are accepted when no rescoring is asked. For int8/uint8 corpora int
            codes are dequantized with ``ranges``. With ``rescore``, queries may have the rescore corpus' dimension
            and are truncated (and re-normalised) for the first stage: a Matryoshka funnel.
        corpus: ``[n, dim]`` float32/float16, ``[n, dim]`` int8/uint8 codes, or ``[n, bytes]`` packed bits, as
            produced by ``quantize(..., precision)``.
        precision: the corpus precision, one of ``PRECISIONS``.
        top_k: results per query (clamped to ``n``).
        rescore: optional ``[n, dim']`` float or int8/uint8 vectors aligned with ``corpus``. The first stage keeps
            ``top_k * rescore_multiplier`` candidates, which are re-ranked by the inner product of the float query
            with the (dequantized) rescore vectors.
        ranges: ``Ranges`` of an int8/uint8 corpus (and of int8/uint8 rescore vectors, unless ``rescore_ranges``).
        use_faiss: ``None`` (auto) uses FAISS for Hamming search when it is installed and numpy BLAS for float/int8
            (faster than FAISS' flat inner-product search on CPU); ``True`` requires FAISS and uses it for both
            (``knn_hamming`` / ``knn`` with inner product, the flat-index kernels, on corpus blocks without copying
            the corpus); ``False`` uses numpy only. Results are identical in every mode.
        rescore_ranges: ``Ranges`` of int8/uint8 rescore vectors when they differ from ``ranges`` (an int8 first
            stage at a smaller Matryoshka dimension than its int8 rescore vectors needs both).

    Returns:
        ``(scores, indices)``: float32 and int64 arrays ``[nq, min(top_k, n)]``, best first, ties by lower index.
        Scores: inner products, or ``n_bits - hamming`` for a binary first stage without rescoring.
    """
    precision = _check_precision(precision)
    top_k = _check_int(top_k, "top_k", 1)
    rescore_multiplier = _check_int(rescore_multiplier, "rescore_multiplier", 1)
    corpus = _to_numpy(corpus)
    if corpus.ndim != 2:
        raise ValueError(f"corpus must be a 2-D array, got shape {corpus.shape}")
    if precision in FLOAT_PRECISIONS:
        if not np.issubdtype(corpus.dtype, np.floating):
            raise ValueError(f"a {precision} corpus must have a float dtype, got {corpus.dtype}")
    elif corpus.dtype != np.dtype({"int8": np.int8, "binary": np.int8}.get(precision, np.uint8)):
        expected = "int8" if precision in ("int8", "binary") else "uint8"
        raise ValueError(f"a {precision} corpus must have dtype {expected}, got {corpus.dtype}")
    q, _ = _as_2d(_to_numpy(query_vecs), "query_vecs")
    n, nq = corpus.shape[0], q.shape[0]

    rescore_view = None
    rescore_ranges = ranges if rescore_ranges is None else rescore_ranges
    if rescore is not None:
        rescore_arr = _to_numpy(rescore)
        if rescore_arr.ndim != 2 or rescore_arr.shape[0] != n:
            raise ValueError(f"rescore must be [n={n}, dim] aligned with the corpus, got shape {rescore_arr.shape}")
        rescore_prec = _infer_precision(rescore_arr, "rescore")
        if rescore_prec in INT_PRECISIONS:
            rescore_ranges = _coerce_ranges(rescore_ranges, rescore_arr.shape[1], rescore_prec)
        rescore_view = _FloatView(rescore_arr, rescore_prec, rescore_ranges if rescore_prec in INT_PRECISIONS else None,
                                  name="rescore")
    faiss = _load_faiss(use_faiss)

    k = min(top_k, n)
    m = min(n, top_k * rescore_multiplier) if rescore_view is not None else k
    rescore_dim = rescore_view.dim if rescore_view is not None else None
    q_float = None
    if precision in BINARY_PRECISIONS:
        nbytes = corpus.shape[1]
        if np.issubdtype(q.dtype, np.floating):
            q_float = q.astype(np.float32)
            if not np.all(np.isfinite(q_float)):
                raise ValueError("queries contain NaN or infinite values")
            d = q_float.shape[1]
            if -(-d // 8) == nbytes:
                q_first = q_float
            elif rescore_dim is not None and d == rescore_dim and d > 8 * nbytes:
                q_first = q_float[:, : 8 * nbytes]  # sign bits do not depend on the norm
            else:
                raise ValueError(f"queries have {d} dimensions but the binary corpus packs {8 * nbytes} bits")
            qb = quantize(q_first, precision)
        elif q.dtype in (np.int8, np.uint8):
            if q.shape[1] != nbytes:
                raise ValueError(f"packed queries have {q.shape[1]} bytes but the corpus has {nbytes}")
            if rescore_view is not None:
                raise ValueError("rescoring needs float queries, not packed bits")
            qb = q if (q.dtype == np.int8) == (precision == "binary") else (q.view(np.uint8) ^ np.uint8(0x80))
        else:
            raise ValueError(f"queries must be float vectors or packed bits, got dtype {q.dtype}")
        def first_stage() -> tuple[np.ndarray, np.ndarray]:
            return _binary_topk(qb, corpus, m, faiss)
    else:
        first_ranges = _coerce_ranges(ranges, corpus.shape[1], precision) if precision in INT_PRECISIONS else None
        q_first = _float_queries(q, corpus.shape[1], rescore_dim, ranges, precision)
        if q.shape[1] == corpus.shape[1]:
            q_float = q_first
        view = _FloatView(corpus, precision, first_ranges)

        def first_stage() -> tuple[np.ndarray, np.ndarray]:
            # Auto mode keeps numpy BLAS here: FAISS' flat inner-product search was slower on CPU in our benchmark.
            return _float_topk(np.ascontiguousarray(q_first), view, m, faiss if use_faiss else None)

    rescoring = None  # the rescore vectors and the float queries they are scored against
    if rescore_view is not None:
        if q_float is None:
            q_prec = rescore_view.precision if rescore_view.precision in INT_PRECISIONS else "float32"
            q_float = _float_queries(q, rescore_view.dim, None, rescore_ranges, q_prec)
        if q_float.shape[1] != rescore_view.dim:
            raise ValueError(
                f"queries have {q_float.shape[1]} dimensions but the rescore vectors have {rescore_view.dim}")
        rescoring = rescore_view, q_float
    if n == 0 or nq == 0:  # after every check: an empty corpus does not hide a mistake that a full one reveals
        return np.zeros((nq, k), dtype=np.float32), np.zeros((nq, k), dtype=np.int64)
    scores, idx = first_stage()
    if rescoring is None:
        return scores, idx
    view, q_float = rescoring
    exact = view.exact(q_float, idx)
    order = _sort_best_first(exact, idx)[:, :k]
    return np.take_along_axis(exact, order, axis=1), np.take_along_axis(idx, order, axis=1)
