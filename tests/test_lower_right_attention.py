"""Rows continuing a cached query part attend lower-right causally through SDPA's causal bias, not a boolean mask."""
from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.attention.bias as attention_bias
import transformers.integrations.sdpa_attention as transformers_sdpa

from qwen3vl_integrations import Qwen3VLReranker
from qwen3vl_integrations.core import lower_right_attention
from qwen3vl_integrations.core.lower_right_attention import LOWER_RIGHT_SDPA, sdpa_lower_right


class _Attention(torch.nn.Module):
    is_causal = True
    num_key_value_groups = 2


def _calls(monkeypatch, module, name: str) -> list:
    calls: list = []
    original = getattr(module, name)
    monkeypatch.setattr(module, name, lambda *args, **kwargs: calls.append(args) or original(*args, **kwargs))
    return calls


@pytest.mark.parametrize(("length", "keys"), [(5, 12), (2, 3), (7, 40)])
def test_cached_rows_equal_the_masked_attention(monkeypatch, length, keys):
    """The output at every query position equals transformers' SDPA given the lower-right boolean mask that it
    builds for rows after a cache (no padding mask), with grouped key/value heads."""
    generator = torch.Generator().manual_seed(length)
    query = torch.randn(3, 4, length, 16, generator=generator)
    key, value = (torch.randn(3, 2, keys, 16, generator=generator) for _ in range(2))
    visible = torch.arange(keys)[None, :] <= torch.arange(length)[:, None] + (keys - length)
    expected, _ = transformers_sdpa.sdpa_attention_forward(_Attention(), query, key, value,
                                                           visible[None, None].expand(3, 1, -1, -1), scaling=0.3)
    biases = _calls(monkeypatch, attention_bias, "causal_lower_right")
    out, weights = sdpa_lower_right(_Attention(), query, key, value, visible[None, None], scaling=0.3)
    assert biases == [(length, keys)] and weights is None
    assert out.shape == expected.shape == (3, length, 4, 16)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("length", "keys", "causal", "switch"), [
    (6, 6, True, True),  # no cache: plain causal, transformers' path (FlashAttention with is_causal already)
    (1, 9, True, True),  # one token per row: its mask is all ones
    (4, 9, False, True),  # not a causal module
    (4, 9, True, False),  # the switch off
])
def test_other_attention_is_transformers_sdpa(monkeypatch, length, keys, causal, switch):
    monkeypatch.setattr(lower_right_attention, "CACHED_ROWS_LOWER_RIGHT", switch)
    module = _Attention()
    module.is_causal = causal
    stock = _calls(monkeypatch, transformers_sdpa, "sdpa_attention_forward")
    biases = _calls(monkeypatch, attention_bias, "causal_lower_right")
    query, key, value = torch.randn(1, 4, length, 8), torch.randn(1, 2, keys, 8), torch.randn(1, 2, keys, 8)
    sdpa_lower_right(module, query, key, value, None, scaling=0.5)
    assert len(stock) == 1 and biases == []


def test_reranker_rows_after_the_query_part_use_it(tiny_reranker_path, tiny_core_kwargs, media_dir, monkeypatch):
    """A loaded model's language model runs `sdpa_lower_right` (its vision tower keeps SDPA); the rows after a
    shared query part take the lower-right path, and the scores equal
    those with transformers' mask and those of whole pairs."""
    tiny_core_kwargs.pop("share_query_prefix", None)
    shared = Qwen3VLReranker(str(tiny_reranker_path), share_query_prefix=True, **tiny_core_kwargs)
    whole = Qwen3VLReranker(str(tiny_reranker_path), share_query_prefix=False, **tiny_core_kwargs)
    backbone = shared.load().backbone
    assert backbone.language_model.config._attn_implementation == LOWER_RIGHT_SDPA
    assert backbone.visual.config._attn_implementation == "sdpa"
    query = "which car is red?"
    documents = ["a red car", "a considerably longer text about a blue car parked in front of a white house " * 4,
                 {"image": media_dir / "red.png", "text": "a photo"}, "medium length text about cars"]
    biases = _calls(monkeypatch, attention_bias, "causal_lower_right")
    scores = np.asarray(shared.score(query, documents, batch_size=2))
    # Several micro-batches, each continuing the query part's cache in at least the first layer.
    assert len({shape for shape in biases}) >= 2 and all(1 < length < keys for length, keys in biases)
    monkeypatch.setattr(lower_right_attention, "CACHED_ROWS_LOWER_RIGHT", False)
    np.testing.assert_allclose(scores, shared.score(query, documents, batch_size=2), rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores, whole.score(query, documents, batch_size=2), rtol=0, atol=1e-5)


def _sdpa_calls(monkeypatch) -> list[dict]:
    calls: list[dict] = []
    original = torch.nn.functional.scaled_dot_product_attention

    def record(query, key, value, **kwargs):
        calls.append({"rows": query.shape[2], "keys": key.shape[2], "mask": kwargs.get("attn_mask") is not None,
                      "is_causal": kwargs.get("is_causal", False)})
        # A causal bias dispatches on `func is scaled_dot_product_attention`: the original must be in place.
        torch.nn.functional.scaled_dot_product_attention = original
        try:
            return original(query, key, value, **kwargs)
        finally:
            torch.nn.functional.scaled_dot_product_attention = record

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", record)
    return calls


@pytest.mark.parametrize(("length", "keys", "groups", "excess"), [
    (400, 410, 2, None),  # the core's threshold: 390 tokens more than the cache
    (9, 12, 2, 4), (9, 12, 1, 4), (30, 37, 4, 0)])
def test_long_cached_rows_on_the_cpu_take_the_causal_kernel(monkeypatch, length, keys, groups, excess):
    """Rows much longer than the cache run SDPA's causal kernel behind placeholder rows, without a mask or repeated
    key/value heads, and give transformers' masked result."""
    if excess is not None:
        monkeypatch.setattr(lower_right_attention, "CPU_LONG_ROWS_MIN_EXCESS", excess)
    module = _Attention()
    module.num_key_value_groups = groups
    generator = torch.Generator().manual_seed(keys)
    query = torch.randn(2, 4, length, 16, generator=generator)
    key, value = (torch.randn(2, 4 // groups, keys, 16, generator=generator) for _ in range(2))
    visible = torch.arange(keys)[None, :] <= torch.arange(length)[:, None] + (keys - length)
    expected, _ = transformers_sdpa.sdpa_attention_forward(module, query, key, value,
                                                           visible[None, None].expand(2, 1, -1, -1), scaling=0.25)
    biases = _calls(monkeypatch, attention_bias, "causal_lower_right")
    calls = _sdpa_calls(monkeypatch)
    out, weights = sdpa_lower_right(module, query, key, value, None, scaling=0.25)
    assert biases == [] and weights is None
    assert calls == [{"rows": keys, "keys": keys, "mask": False, "is_causal": True}]
    assert out.shape == expected.shape == (2, length, 4, 16)
    torch.testing.assert_close(out, expected, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize(("length", "keys", "switch"), [(300, 310, True), (9, 12, False)])
def test_shorter_rows_and_the_switch_off_keep_the_causal_bias(monkeypatch, length, keys, switch):
    monkeypatch.setattr(lower_right_attention, "CPU_LONG_ROWS_CAUSAL", switch)
    if not switch:
        monkeypatch.setattr(lower_right_attention, "CPU_LONG_ROWS_MIN_EXCESS", 0)
    biases = _calls(monkeypatch, attention_bias, "causal_lower_right")
    query, key, value = torch.randn(1, 4, length, 8), torch.randn(1, 2, keys, 8), torch.randn(1, 2, keys, 8)
    sdpa_lower_right(_Attention(), query, key, value, None, scaling=0.5)
    assert biases == [(length, keys)]


def test_reranker_long_documents_on_the_cpu(tiny_reranker_path, tiny_core_kwargs, monkeypatch):
    """With the threshold lowered so that the tiny model's documents cross it, the rows after the query part take the
    causal kernel, and the scores equal those with the causal bias and those of whole pairs."""
    tiny_core_kwargs.pop("share_query_prefix", None)
    shared = Qwen3VLReranker(str(tiny_reranker_path), share_query_prefix=True, **tiny_core_kwargs)
    whole = Qwen3VLReranker(str(tiny_reranker_path), share_query_prefix=False, **tiny_core_kwargs)
    query = "which car is red?"
    documents = ["a considerably longer text about a blue car parked in front of a white house " * 6,
                 "a red car " * 20, "short", "medium length text about cars " * 5]
    monkeypatch.setattr(lower_right_attention, "CPU_LONG_ROWS_MIN_EXCESS", 16)
    calls = _sdpa_calls(monkeypatch)
    scores = np.asarray(shared.score(query, documents, batch_size=2))
    causal_rows = [c for c in calls if c["is_causal"] and not c["mask"]]
    assert causal_rows and all(c["rows"] == c["keys"] for c in causal_rows)
    assert any(c["mask"] for c in calls)  # the batch of short documents kept the bias
    monkeypatch.setattr(lower_right_attention, "CPU_LONG_ROWS_CAUSAL", False)
    np.testing.assert_allclose(scores, shared.score(query, documents, batch_size=2), rtol=0, atol=1e-6)
    np.testing.assert_allclose(scores, whole.score(query, documents, batch_size=2), rtol=0, atol=1e-5)
