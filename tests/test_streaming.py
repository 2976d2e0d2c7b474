"""Embedding streams: truncation and quantization apply to each micro-batch, so the returned array is the only one
that grows with the number of inputs (issue 8's memory target), and skipped inputs never cost a second copy."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest
import torch

from qwen3vl_integrations import Qwen3VLEmbedder
from qwen3vl_integrations.core import embedder as embedder_module
from qwen3vl_integrations.quantization import quantize, truncate

WIDE = 8192  # a wide fake output, so that one float32 copy of all vectors (16 MiB for 512 items) stands out


def wide_vectors(loaded, inputs, batch_size) -> torch.Tensor:
    """A fake forward pass: a WIDE-wide random vector per row, drawn from the row's own token ids."""
    return torch.stack([torch.randn(WIDE, generator=torch.Generator().manual_seed(int(ids[: last + 1].sum())))
                        for ids, last in zip(inputs.batch["input_ids"], inputs.last)])


@pytest.fixture
def wide_embedder(tiny_embedding_path, tiny_core_kwargs, monkeypatch):
    """The tiny model's preprocessing and batching, with a fake forward pass that returns WIDE-wide vectors."""
    emb = Qwen3VLEmbedder(str(tiny_embedding_path), batch_size=32, **tiny_core_kwargs)
    monkeypatch.setattr(Qwen3VLEmbedder, "embedding_dim", property(lambda self: WIDE))
    monkeypatch.setattr(emb, "_forward_last_hidden", wide_vectors)
    return emb


def peak_mib(call) -> float:
    """Peak of the memory Python and numpy allocate while `call` runs, above what was allocated before."""
    tracemalloc.start()
    try:
        call()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def test_the_output_is_the_only_array_that_grows(wide_embedder):
    texts = [f"item number {i}" for i in range(512)]
    wide_embedder.embed(texts[:8])  # load and warm up outside the measurement
    full = peak_mib(lambda: wide_embedder.embed(texts))
    binary = peak_mib(lambda: wide_embedder.embed(texts, precision="binary"))
    truncated = peak_mib(lambda: wide_embedder.embed(texts, dimensions=256))
    assert full >= 16  # the float32 output itself: the measurement sees numpy arrays
    assert binary < 8 and truncated < 8, (full, binary, truncated)  # 0.5 MiB outputs, no float32 copy of all rows


def test_finished_batches_equal_finishing_the_whole(wide_embedder):
    texts = [f"text {i} " * (i % 7 + 1) for i in range(40)]
    whole = wide_embedder.embed(texts, batch_size=3)
    np.testing.assert_array_equal(wide_embedder.embed(texts, batch_size=3, dimensions=256), truncate(whole, 256))
    np.testing.assert_array_equal(wide_embedder.embed(texts, precision="binary"), quantize(whole, "binary"))
    part = truncate(whole, 512)
    ranges = np.stack([part.min(0), part.max(0)])
    np.testing.assert_array_equal(wide_embedder.embed(texts, dimensions=512, precision="int8", ranges=ranges),
                                  quantize(part, "int8", ranges=ranges))


def test_bad_output_options_fail_before_any_model_work(tiny_embedding_path, tiny_core_kwargs, monkeypatch):
    emb = Qwen3VLEmbedder(str(tiny_embedding_path), **tiny_core_kwargs)
    monkeypatch.setattr(emb, "_forward_last_hidden", lambda *args: pytest.fail("the model ran"))
    with pytest.raises(ValueError, match="ranges"):
        emb.embed(["a", "b"], precision="int8")
    with pytest.raises(ValueError, match="dimensions"):
        emb.try_embed(["a", "b"], dimensions=7)
    with pytest.raises(ValueError, match="precision"):
        emb.embed(["a"], precision="int4")


def test_gaps_close_in_place(monkeypatch):
    monkeypatch.setattr(embedder_module, "GAP_CLOSING_ROWS", 7)  # several blocks
    rng = np.random.default_rng(0)
    vectors = rng.standard_normal((100, 5)).astype(np.float32)
    kept = np.flatnonzero(rng.random(100) < 0.6)
    expected = vectors[kept].copy()
    closed = embedder_module._close_gaps(vectors, kept)
    np.testing.assert_array_equal(closed, expected)
    assert np.shares_memory(closed, vectors)  # moved, not copied
    assert embedder_module._close_gaps(expected, np.arange(len(expected))) is expected


def test_try_embed_with_gaps_keeps_the_good_rows(tiny_embedding_path, tiny_core_kwargs):
    emb = Qwen3VLEmbedder(str(tiny_embedding_path), batch_size=2, **tiny_core_kwargs)
    items = ["a", {"image": b"not an image"}, "b", "c", {"video": []}, "d"]
    result = emb.try_embed(items, precision="binary")
    assert list(result.indices) == [0, 2, 3, 5] and [e.index for e in result.errors] == [1, 4]
    np.testing.assert_array_equal(result.embeddings, quantize(emb.embed(["a", "b", "c", "d"]), "binary"))
