"""Matryoshka truncation, int8/binary quantization and exact (re)scored search (issue 4). numpy only, fast."""
from __future__ import annotations

import json
import subprocess
import sys
import tracemalloc

import numpy as np
import pytest

import qwen3vl_integrations.core.quantization as cq
import qwen3vl_integrations.core.search as cs
from qwen3vl_integrations.quantization import (
    PRECISIONS,
    Ranges,
    calibrate,
    dequantize,
    quantize,
    search,
    truncate,
)

try:
    import faiss  # noqa: F401

    BACKENDS = [False, True]
except ImportError:  # pragma: no cover - faiss is an optional extra
    BACKENDS = [False]


def unit(rng, n, d):
    x = rng.standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def brute_ip(q, x):
    """Exact top order by (-float32(q . x), index) over all of x."""
    s = (np.asarray(q, np.float64) @ np.asarray(x, np.float64).T).astype(np.float32)
    order = np.lexsort((np.broadcast_to(np.arange(s.shape[1]), s.shape), -s), axis=-1)
    return np.take_along_axis(s, order, axis=1), order


def brute_hamming(qbits, xbits):
    """Exact order by (hamming, index), packed uint8 inputs."""
    xor = np.bitwise_xor(qbits[:, None, :].view(np.uint8), xbits[None, :, :].view(np.uint8))
    d = np.unpackbits(xor, axis=-1).sum(axis=-1, dtype=np.int64)
    order = np.lexsort((np.broadcast_to(np.arange(d.shape[1]), d.shape), d), axis=-1)
    return np.take_along_axis(d, order, axis=1), order


@pytest.fixture
def small_blocks(monkeypatch):
    """Tiny working sets so that every search crosses many corpus/query blocks and merges pools."""
    monkeypatch.setattr(cs, "_BLOCK_ELEMS", 64 * 97)
    monkeypatch.setattr(cs, "_QUERY_BLOCK", 3)
    monkeypatch.setattr(cs, "_HAMMING_ELEMS", 3 * 8 * 41)
    monkeypatch.setattr(cs, "_FAISS_BINARY_BLOCK_BYTES", 8 * 150)
    monkeypatch.setattr(cs, "_CANON_ELEMS", 4096)
    monkeypatch.setattr(cq, "_QUANT_ROWS_ELEMS", 500)


# ------------------------------------------------------------------------------------------------ truncate


def test_truncate_keeps_prefix_and_renormalises():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((5, 256)).astype(np.float64) * 3
    t = truncate(x, 64)
    assert t.dtype == np.float32 and t.shape == (5, 64)
    np.testing.assert_allclose(np.linalg.norm(t, axis=1), 1.0, rtol=1e-6)
    np.testing.assert_allclose(t, x[:, :64] / np.linalg.norm(x[:, :64], axis=1, keepdims=True), rtol=1e-6)
    # exact whether or not the input was normalised first
    np.testing.assert_allclose(truncate(truncate(x, 256), 64), t, rtol=1e-6, atol=1e-7)
    raw = truncate(x, 100, normalize=False)
    np.testing.assert_array_equal(raw, x[:, :100].astype(np.float32))
    one = truncate(x[0], 128)
    assert one.shape == (128,)
    np.testing.assert_allclose(one, truncate(x, 128)[0])
    assert truncate(x, None).shape == (5, 256)


def test_truncate_zero_vector_stays_zero_and_full_dim_below_64_is_allowed():
    z = np.zeros((2, 80), np.float32)
    z[1, 0] = 2.0
    t = truncate(z, 64)
    assert np.all(t[0] == 0) and t[1, 0] == 1.0
    small = np.ones((3, 32), np.float32)
    assert truncate(small, 32).shape == (3, 32)  # k == D: no Matryoshka cut, always fine
    assert truncate(small, 16, min_dimensions=8).shape == (3, 16)


@pytest.mark.parametrize("k", [63, 1, 0, -5, 257])
def test_truncate_rejects_bad_dimensions(k):
    x = np.ones((2, 256), np.float32)
    with pytest.raises(ValueError, match="dimensions"):
        truncate(x, k)


@pytest.mark.parametrize("k", [64.0, "64", True])
def test_truncate_rejects_non_integer_dimensions(k):
    with pytest.raises(ValueError, match="integer"):
        truncate(np.ones((2, 256), np.float32), k)


def test_truncate_rejects_integer_codes_and_3d():
    with pytest.raises(ValueError, match="float"):
        truncate(np.ones((2, 128), np.int8), 64)
    with pytest.raises(ValueError, match="1-D vector or a 2-D"):
        truncate(np.ones((2, 2, 128), np.float32), 64)


# ------------------------------------------------------------------------------------------------ ranges


def test_calibrate_min_max_and_percentile():
    x = np.array([[0.0, -1.0], [1.0, 3.0], [0.5, 1.0], [0.25, 2.0], [0.75, 0.0]], np.float32)
    r = calibrate(x)
    np.testing.assert_array_equal(r.low, [0.0, -1.0])
    np.testing.assert_array_equal(r.high, [1.0, 3.0])
    assert r.count == 5 and r.percentile is None
    p = calibrate(x, percentile=25)
    np.testing.assert_allclose(p.low, [0.25, 0.0])
    np.testing.assert_allclose(p.high, [0.75, 2.0])
    assert p.percentile == (25.0, 75.0)
    assert calibrate(x, percentile=(0, 50)).percentile == (0.0, 50.0)


@pytest.mark.parametrize("bad", [dict(sample=np.ones((1, 4), np.float32)),
                                 dict(sample=np.array([[np.nan, 0], [1, 1]], np.float32)),
                                 dict(sample=np.ones((3, 4), np.float32), percentile=60),
                                 dict(sample=np.ones((3, 4), np.float32), percentile=(1, 2, 3))])
def test_calibrate_errors(bad):
    with pytest.raises(ValueError):
        calibrate(**bad)


def test_ranges_save_load_json_and_npy(tmp_path):
    rng = np.random.default_rng(1)
    r = calibrate(rng.standard_normal((50, 70)).astype(np.float32) / 7, percentile=0.5)
    j = r.save(tmp_path / "ranges.json")
    back = Ranges.load(j)
    assert back == r and back.percentile == r.percentile and back.count == 50
    np.testing.assert_array_equal(back.low, r.low)  # bit-exact through JSON
    data = json.loads(j.read_text())
    assert data["dim"] == 70 and len(data["low"]) == 70
    n = r.save(tmp_path / "ranges.npy")
    arr = np.load(n)
    assert arr.shape == (2, 70) and arr.dtype == np.float32
    assert Ranges.load(n) == r
    upper = r.save(tmp_path / "RANGES.NPY")  # np.save(path) would have written RANGES.NPY.npy
    assert upper.exists() and Ranges.load(upper) == r and not (tmp_path / "RANGES.NPY.npy").exists()
    assert Ranges.from_dict(r.to_dict()) == r
    assert Ranges.from_dict({"min": [0, 1], "max": [1, 2]}) == Ranges(low=[0, 1], high=[1, 2])
    assert Ranges.from_array(r.to_array()) == r
    # the same ranges quantize identically after a round trip, also given as a path or an array
    x = rng.standard_normal((4, 70)).astype(np.float32) / 7
    q = quantize(x, "int8", ranges=r)
    for form in (back, Ranges.load(n), str(j), r.to_array(), r.to_dict()):
        np.testing.assert_array_equal(quantize(x, "int8", ranges=form), q)


def test_ranges_validation():
    with pytest.raises(ValueError, match="low <= high"):
        Ranges(low=[1.0], high=[0.0])
    with pytest.raises(ValueError, match="same non-zero length"):
        Ranges(low=[0.0, 1.0], high=[1.0])
    with pytest.raises(ValueError, match="finite"):
        Ranges(low=[0.0], high=[np.inf])
    with pytest.raises(ValueError, match=r"\[2, dim\]"):
        Ranges.from_array(np.zeros((3, 4)))


# ------------------------------------------------------------------------------------------------ int8 / uint8


def test_int8_rounding_hand_computed():
    # dim 0: low 0, high 255 -> step 1, so the code is the rounded value (half to even) clipped to 0..255;
    # dim 1: low -1, high 1 -> step 2/255: x = 0.3 -> 1.3 * 127.5 = 165.75 -> 166; x = -0.9 -> 12.75 -> 13.
    r = Ranges(low=[0.0, -1.0], high=[255.0, 1.0])
    x = np.array([[3.4, 0.3], [3.6, -0.9], [2.5, -1.0], [-7.0, 1.0], [300.0, 5.0], [255.0, -5.0]], np.float32)
    u = quantize(x, "uint8", ranges=r)
    assert u.dtype == np.uint8
    np.testing.assert_array_equal(u, [[3, 166], [4, 13], [2, 0], [0, 255], [255, 255], [255, 0]])
    i = quantize(x, "int8", ranges=r)
    assert i.dtype == np.int8
    np.testing.assert_array_equal(i.astype(int), u.astype(int) - 128)
    # clipped, never wrapped around: far outside the range saturates at the edges
    assert i[4, 0] == 127 and i[4, 1] == 127 and i[3, 0] == -128 and i[5, 1] == -128
    np.testing.assert_allclose(dequantize(u, "uint8", ranges=r)[0], [3.0, -1.0 + 166 * 2 / 255], rtol=1e-6)
    np.testing.assert_array_equal(dequantize(i, "int8", ranges=r), dequantize(u, "uint8", ranges=r))


def test_int8_round_trip_error_is_at_most_half_a_step(small_blocks):
    rng = np.random.default_rng(2)
    x = unit(rng, 300, 96)
    r = calibrate(x)
    for prec in ("int8", "uint8"):
        back = dequantize(quantize(x, prec, ranges=r), prec, ranges=r)
        assert back.dtype == np.float32
        assert np.all(np.abs(back - x) <= r.step[None, :] / 2 + 1e-6)
    # edges map exactly to the end codes
    edges = np.stack([r.low, r.high])
    np.testing.assert_array_equal(quantize(edges, "uint8", ranges=r), [[0] * 96, [255] * 96])
    np.testing.assert_allclose(dequantize(quantize(edges, "int8", ranges=r), "int8", ranges=r), edges, atol=1e-6)


def test_constant_dimension_and_one_d_input():
    r = Ranges(low=[0.5, -1.0], high=[0.5, 1.0])
    q = quantize(np.array([0.7, 0.0], np.float32), "uint8", ranges=r)
    assert q.shape == (2,) and q[0] == 0
    assert dequantize(q, "uint8", ranges=r)[0] == np.float32(0.5)


def test_int8_needs_ranges_and_says_to_calibrate():
    x = np.ones((3, 64), np.float32)
    with pytest.raises(ValueError, match="calibrate"):
        quantize(x, "int8")
    with pytest.raises(ValueError, match="calibrate"):
        quantize(x, "uint8", ranges=None)
    with pytest.raises(ValueError, match="ranges cover 32 dimensions"):
        quantize(x, "int8", ranges=calibrate(np.random.default_rng(0).standard_normal((4, 32)).astype(np.float32)))
    with pytest.raises(ValueError, match="NaN"):
        quantize(np.full((2, 2), np.nan, np.float32), "int8", ranges=Ranges(low=[0, 0], high=[1, 1]))


def test_float_precisions():
    x = np.random.default_rng(3).standard_normal((4, 16))
    assert quantize(x, "float32").dtype == np.float32
    h = quantize(x, "float16")
    assert h.dtype == np.float16
    np.testing.assert_array_equal(dequantize(h, "float16"), h.astype(np.float32))


# ------------------------------------------------------------------------------------------------ binary


def test_bit_packing_hand_computed():
    # bits (x > 0), first dimension in the most significant bit:
    # [1, -1, .5, 0, -2, 3, .1, -.1] -> 1 0 1 0 0 1 1 0 = 0b10100110 = 166
    # [5, -1, -1, -1, -1, -1, -1, 1]  -> 1 0 0 0 0 0 0 1 = 0b10000001 = 129
    # [2, -3] + padding              -> 1 0 (0 0 0 0 0 0) = 128
    x = np.array([1, -1, .5, 0, -2, 3, .1, -.1, 5, -1, -1, -1, -1, -1, -1, 1, 2, -3], np.float32)
    u = quantize(x, "ubinary")
    assert u.dtype == np.uint8
    np.testing.assert_array_equal(u, [166, 129, 128])
    b = quantize(x, "binary")
    assert b.dtype == np.int8
    np.testing.assert_array_equal(b, [166 - 128, 129 - 128, 0])
    signs = dequantize(u, "ubinary", dim=18)
    np.testing.assert_array_equal(signs, np.where(x > 0, 1.0, -1.0))
    np.testing.assert_array_equal(dequantize(b, "binary", dim=18), signs)
    assert dequantize(u, "ubinary").shape == (24,)


@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_binary_equals_sentence_transformers(precision):
    pytest.importorskip("sentence_transformers")
    try:
        from sentence_transformers.util.quantization import quantize_embeddings
    except ImportError:  # older releases
        from sentence_transformers.quantization import quantize_embeddings
    rng = np.random.default_rng(4)
    x = rng.standard_normal((33, 200)).astype(np.float32)
    x[:, ::7] = 0.0  # exact zeros count as negative on both sides
    theirs = quantize_embeddings(x, precision=precision)
    ours = quantize(x, precision)
    assert ours.dtype == theirs.dtype and ours.shape == theirs.shape
    assert ours.tobytes() == theirs.tobytes()


def test_binary_signs_dot_is_bits_minus_twice_hamming():
    rng = np.random.default_rng(5)
    x = rng.standard_normal((6, 64)).astype(np.float32)
    u = quantize(x, "ubinary")
    s = dequantize(u, "ubinary")
    ham, order = brute_hamming(u[:1], u)
    dots = s[0] @ s.T
    np.testing.assert_array_equal(dots[order[0]], 64 - 2 * ham[0])


def test_bad_precision_everywhere():
    x = np.ones((2, 64), np.float32)
    for fn in (lambda: quantize(x, "int4"), lambda: dequantize(x, "bf16"), lambda: search(x, x, "float64"),
               lambda: quantize(x, None)):
        with pytest.raises(ValueError, match="unknown precision"):
            fn()
    assert PRECISIONS == ("float32", "float16", "int8", "uint8", "binary", "ubinary")


def test_dequantize_dtype_mismatch():
    with pytest.raises(ValueError, match="dtype int8"):
        dequantize(np.zeros((2, 4), np.uint8), "binary")
    with pytest.raises(ValueError, match="dtype uint8"):
        dequantize(np.zeros((2, 4), np.int8), "uint8", ranges=Ranges(low=[0] * 4, high=[1] * 4))


# ------------------------------------------------------------------------------------------------ search


def _corpus_with_ties(rng, n, d):
    x = unit(rng, n, d)
    x[50:60] = x[7]  # exact duplicates of a vector
    x[200:230] = x[3]
    return x


@pytest.mark.parametrize("use_faiss", BACKENDS)
@pytest.mark.parametrize("precision", ["float32", "float16", "int8", "uint8"])
def test_search_float_and_int8_is_exact_top_k(small_blocks, precision, use_faiss):
    rng = np.random.default_rng(6)
    x = _corpus_with_ties(rng, 700, 64)
    q = np.concatenate([unit(rng, 9, 64), x[[7, 3]]])  # two queries hit the duplicate groups
    r = calibrate(x)
    corpus = quantize(x, precision, ranges=r)
    scores, idx = search(q, corpus, precision, top_k=12, ranges=r, use_faiss=use_faiss)
    assert scores.dtype == np.float32 and idx.dtype == np.int64 and scores.shape == idx.shape == (11, 12)
    want_s, want_i = brute_ip(q, dequantize(corpus, precision, ranges=r))
    np.testing.assert_array_equal(idx, want_i[:, :12])
    np.testing.assert_array_equal(scores, want_s[:, :12])
    # duplicates tie exactly and come back in index order
    assert list(idx[-1]) == [3] + list(range(200, 211))
    assert list(idx[-2][:11]) == [7] + list(range(50, 60))


@pytest.mark.parametrize("use_faiss", BACKENDS)
@pytest.mark.parametrize("precision", ["binary", "ubinary"])
def test_search_binary_is_exact_hamming_top_k(small_blocks, precision, use_faiss):
    rng = np.random.default_rng(7)
    x = _corpus_with_ties(rng, 800, 64)  # 64 bits: many distance ties
    q = np.concatenate([unit(rng, 10, 64), x[[7]]])
    bits = quantize(x, precision)
    scores, idx = search(q, bits, precision, top_k=15, use_faiss=use_faiss)
    ham, order = brute_hamming(quantize(q, precision), bits)
    np.testing.assert_array_equal(idx, order[:, :15])
    np.testing.assert_array_equal(scores, (64 - ham[:, :15]).astype(np.float32))
    assert list(idx[-1][:11]) == [7] + list(range(50, 60))
    # packed queries give the same answer, in either encoding
    for packed in (quantize(q, "binary"), quantize(q, "ubinary")):
        s2, i2 = search(packed, bits, precision, top_k=15, use_faiss=use_faiss)
        np.testing.assert_array_equal(i2, idx)
        np.testing.assert_array_equal(s2, scores)


def test_search_faiss_and_numpy_identical_at_default_block_sizes():
    pytest.importorskip("faiss")
    rng = np.random.default_rng(8)
    x = _corpus_with_ties(rng, 3000, 128)
    q = np.concatenate([unit(rng, 30, 128), x[[3, 7]]])
    r = calibrate(x)
    codes = quantize(x, "int8", ranges=r)
    cases = [(x, "float32", {}), (x.astype(np.float16), "float16", {}), (codes, "int8", {"ranges": r}),
             (quantize(x, "ubinary"), "ubinary", {}),
             (quantize(x, "binary"), "binary", {"rescore": codes, "ranges": r, "rescore_multiplier": 5})]
    for corpus, precision, kw in cases:
        a = search(q, corpus, precision, top_k=20, use_faiss=False, **kw)
        b = search(q, corpus, precision, top_k=20, use_faiss=True, **kw)
        c = search(q, corpus, precision, top_k=20, **kw)
        for one, two, three in zip(a, b, c):
            np.testing.assert_array_equal(one, two)
            np.testing.assert_array_equal(one, three)


@pytest.mark.parametrize("use_faiss", BACKENDS)
@pytest.mark.parametrize("rescore_kind", ["int8", "uint8", "float32", "float16"])
def test_rescoring_equals_brute_force_on_the_candidates(small_blocks, rescore_kind, use_faiss):
    rng = np.random.default_rng(9)
    x = _corpus_with_ties(rng, 600, 64)
    q = unit(rng, 8, 64)
    r = calibrate(x)
    store = quantize(x, rescore_kind, ranges=r)
    bits = quantize(x, "ubinary")
    top_k, mult = 7, 3
    scores, idx = search(q, bits, "ubinary", top_k=top_k, rescore=store, ranges=r, rescore_multiplier=mult,
                         use_faiss=use_faiss)
    _, cand = brute_hamming(quantize(q, "ubinary"), bits)
    cand = cand[:, : top_k * mult]  # exact first stage: top (hamming, index)
    deq = dequantize(store, rescore_kind, ranges=r)
    for row in range(len(q)):
        s, order = brute_ip(q[row : row + 1], deq[cand[row]])
        np.testing.assert_array_equal(idx[row], cand[row][order[0, :top_k]])
        np.testing.assert_array_equal(scores[row], s[0, :top_k])
    # the true inner product of the float query, not a reweighted one
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, deq[idx]), rtol=1e-5, atol=1e-6)


def test_rescoring_an_int8_first_stage_and_a_matryoshka_funnel(small_blocks):
    rng = np.random.default_rng(10)
    full = unit(rng, 500, 128)
    q = unit(rng, 6, 128)
    small = truncate(full, 64)
    r64 = calibrate(small)
    first = quantize(small, "int8", ranges=r64)
    # int8 first stage at 64 dims, float32 rescoring at 128 dims: queries at 128 are truncated for the first stage
    scores, idx = search(q, first, "int8", top_k=5, rescore=full, ranges=r64, rescore_multiplier=4)
    _, cand = brute_ip(truncate(q, 64), dequantize(first, "int8", ranges=r64))
    for row in range(len(q)):
        s, order = brute_ip(q[row : row + 1], full[cand[row, :20]])
        np.testing.assert_array_equal(idx[row], cand[row, :20][order[0, :5]])
        np.testing.assert_array_equal(scores[row], s[0, :5])
    # binary first stage on the first 64 bits, float rescoring at 128 dims
    bits = quantize(small, "ubinary")
    s2, i2 = search(q, bits, "ubinary", top_k=5, rescore=full, rescore_multiplier=100)
    want_s, want_i = brute_ip(q, full)
    np.testing.assert_array_equal(i2, want_i[:, :5])  # 100x oversampling covers the whole corpus
    np.testing.assert_array_equal(s2, want_s[:, :5])


def test_search_shapes_clamping_and_one_d_query():
    rng = np.random.default_rng(11)
    x = unit(rng, 5, 64)
    s, i = search(x[0], x, "float32", top_k=10)
    assert s.shape == i.shape == (1, 5) and i[0, 0] == 0
    s, i = search(x[:2], quantize(x, "ubinary"), "ubinary", top_k=3, rescore=x, rescore_multiplier=10)
    assert s.shape == (2, 3) and list(i[:, 0]) == [0, 1]
    s, i = search(x[:2], np.zeros((0, 64), np.float32), "float32")
    assert s.shape == (2, 0)


def test_search_errors():
    rng = np.random.default_rng(12)
    x = unit(rng, 20, 64)
    r = calibrate(x)
    codes = quantize(x, "int8", ranges=r)
    bits = quantize(x, "ubinary")
    with pytest.raises(ValueError, match="calibrate"):
        search(x, codes, "int8")
    with pytest.raises(ValueError, match="dtype uint8"):
        search(x, codes, "ubinary")
    with pytest.raises(ValueError, match="float dtype"):
        search(x, codes, "float32")
    with pytest.raises(ValueError, match="truncate"):
        search(unit(rng, 2, 128), x, "float32")
    with pytest.raises(ValueError, match="packs 64 bits"):
        search(unit(rng, 2, 128), bits, "ubinary")
    with pytest.raises(ValueError, match="aligned"):
        search(x, bits, "ubinary", rescore=codes[:5], ranges=r)
    with pytest.raises(ValueError, match="calibrate"):
        search(x, bits, "ubinary", rescore=codes)
    with pytest.raises(ValueError, match="float queries"):
        search(bits, bits, "ubinary", rescore=codes, ranges=r)
    with pytest.raises(ValueError, match="top_k"):
        search(x, x, "float32", top_k=0)
    with pytest.raises(ValueError, match="rescore_multiplier"):
        search(x, bits, "ubinary", rescore=x, rescore_multiplier=0)
    with pytest.raises(ValueError, match="NaN"):
        search(np.full((1, 64), np.nan, np.float32), x, "float32")


@pytest.mark.parametrize("use_faiss", BACKENDS)
@pytest.mark.parametrize("precision", ["float32", "float16"])
def test_a_non_finite_corpus_row_is_named_not_searched(small_blocks, precision, use_faiss):
    """FAISS answered a NaN row with label -1, which read the last document twice and dropped another."""
    rng = np.random.default_rng(15)
    x = unit(rng, 40, 64)
    for bad_row, bad in [(5, np.nan), (33, np.inf)]:
        corpus = x.copy()
        corpus[bad_row, 3] = bad
        with pytest.raises(ValueError, match=f"^corpus row {bad_row} contains NaN or infinite values"):
            search(x[:2], corpus.astype(precision), precision, top_k=25, use_faiss=use_faiss)
    rescore = x.copy()
    rescore[7, 0] = np.nan
    with pytest.raises(ValueError, match="^rescore row 7 contains NaN"):
        search(x[7:8], x, "float32", top_k=1, rescore=rescore, use_faiss=use_faiss)
    # as bits NaN would read as an ordinary "not > 0"; int8 codes would hide it too
    for p, kw in [("ubinary", {}), ("binary", {}), ("int8", {"ranges": calibrate(x)})]:
        with pytest.raises(ValueError, match="^vecs row 5 contains NaN"):
            quantize(np.where(np.arange(40)[:, None] == 5, np.nan, x), p, **kw)


def test_rescoring_memory_does_not_grow_with_the_candidates():
    """The exact rescoring works through candidates in tiles; it held all top_k x multiplier rows in float64."""
    rng = np.random.default_rng(16)
    x = unit(rng, 4000, 256)
    q = x[:1]
    search(q, x, "float32", top_k=5, rescore=x)  # warm up outside the trace
    tracemalloc.start()
    try:
        scores, idx = search(q, x, "float32", top_k=500, rescore=x, rescore_multiplier=8)  # 4000 candidates
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * 2**20, peak  # all candidates at once: 8 MiB of float64 (and 4 MiB of float32) rows
    want_s, want_i = brute_ip(q, x)
    np.testing.assert_array_equal(idx, want_i[:, :500])
    np.testing.assert_array_equal(scores, want_s[:, :500])


def test_int8_first_stage_with_int8_rescoring_at_another_dimension(small_blocks):
    """One `ranges` cannot describe both; `rescore_ranges` takes the rescore vectors' own."""
    rng = np.random.default_rng(17)
    full = unit(rng, 300, 128)
    q = unit(rng, 4, 128)
    small = truncate(full, 64)
    r64, r128 = calibrate(small), calibrate(full)
    first, store = quantize(small, "int8", ranges=r64), quantize(full, "int8", ranges=r128)
    with pytest.raises(ValueError, match="ranges cover 64 dimensions but the vectors have 128"):
        search(q, first, "int8", top_k=5, rescore=store, ranges=r64)
    scores, idx = search(q, first, "int8", top_k=5, rescore=store, ranges=r64, rescore_ranges=r128,
                         rescore_multiplier=4)
    _, cand = brute_ip(truncate(q, 64), dequantize(first, "int8", ranges=r64))
    deq = dequantize(store, "int8", ranges=r128)
    for row in range(len(q)):
        s, order = brute_ip(q[row : row + 1], deq[cand[row, :20]])
        np.testing.assert_array_equal(idx[row], cand[row, :20][order[0, :5]])
        np.testing.assert_array_equal(scores[row], s[0, :5])


def test_option_and_shape_errors_of_the_smaller_functions(tmp_path):
    rng = np.random.default_rng(18)
    x = unit(rng, 10, 64)
    with pytest.raises(ValueError, match="use_faiss must be True, False or None"):
        search(x, x, "float32", use_faiss="false")  # a truthy string: it used FAISS
    with pytest.raises(ValueError, match="1-D low and high"):
        Ranges(low=np.zeros((2, 3)), high=np.ones((2, 3)))
    with pytest.raises(ValueError, match="says dim=3 but holds 2"):
        Ranges.from_dict({"dim": 3, "low": [0, 0], "high": [1, 1]})
    r = Ranges(low=[0, 0], high=[1, 1], count=np.int64(3))
    assert Ranges.load(r.save(tmp_path / "r.json")).count == 3 and type(r.count) is int
    codes = quantize(x, "ubinary")
    with pytest.raises(ValueError, match="dim must be an integer"):
        dequantize(codes, "ubinary", dim=10.0)
    with pytest.raises(ValueError, match="dim= applies to binary and ubinary"):
        dequantize(quantize(x, "int8", ranges=calibrate(x)), "int8", ranges=calibrate(x), dim=10)
    # an empty corpus checks the queries as a full one does
    with pytest.raises(ValueError, match="truncate"):
        search(unit(rng, 2, 128), np.zeros((0, 64), np.float32), "float32")
    with pytest.raises(ValueError, match="packs 64 bits"):
        search(unit(rng, 2, 128), codes[:0], "ubinary")


def test_use_faiss_true_without_faiss(monkeypatch):
    import builtins

    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "faiss":
            raise ImportError("no faiss")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    x = unit(np.random.default_rng(13), 10, 64)
    with pytest.raises(ImportError, match=r"qwen3vl-integrations\[faiss\]"):
        search(x, x, "float32", use_faiss=True)
    s, i = search(x, quantize(x, "ubinary"), "ubinary", top_k=1)  # auto falls back to numpy
    assert list(i[:, 0]) == list(range(10))


@pytest.mark.parametrize("use_faiss", BACKENDS)
def test_binary_search_memory_is_not_proportional_to_the_corpus(use_faiss):
    # 131072 vectors x 2048 bits = 32 MiB of packed codes; search must not allocate anything of that order
    rng = np.random.default_rng(14)
    bits = rng.integers(0, 256, size=(131072, 256), dtype=np.uint8)
    q = rng.standard_normal((4, 2048)).astype(np.float32)
    search(q, bits[:1000], "ubinary", top_k=10, use_faiss=use_faiss)  # warm imports outside the trace
    tracemalloc.start()
    try:
        search(q, bits, "ubinary", top_k=10, use_faiss=use_faiss)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < bits.nbytes // 4, peak


def test_import_does_not_import_torch():
    code = ("import sys; import qwen3vl_integrations.quantization as q; q.search; "
            "assert 'torch' not in sys.modules, 'torch imported'; print('ok')")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "ok"


@pytest.mark.parametrize("use_faiss", BACKENDS)
@pytest.mark.parametrize("precision", ["float32", "int8", "ubinary"])
def test_many_exact_ties_resolve_to_lowest_indices(small_blocks, precision, use_faiss):
    # 150 copies of the best match scattered over the corpus, far more than any first-stage pool: the pool must
    # widen until the 5 lowest indices are certain, for both backends.
    rng = np.random.default_rng(15)
    x = unit(rng, 900, 64)
    pos = np.sort(rng.choice(np.arange(1, 900), size=150, replace=False))
    x[pos] = x[0]
    r = calibrate(x)
    corpus = quantize(x, precision, ranges=r)
    s, i = search(x[0], corpus, precision, top_k=5, ranges=r, use_faiss=use_faiss)
    assert list(i[0]) == [0] + list(pos[:4])
    assert len(set(s[0].tolist())) == 1
