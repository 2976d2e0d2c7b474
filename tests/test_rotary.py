"""Rotary embeddings of queries and keys in fewer passes (core/rotary.py): bit-identical to transformers'
`apply_rotary_pos_emb_vision` and `apply_rotary_pos_emb`, alone, in the vision tower, and in whole embeddings and
reranker scores (with and without the cached query part)."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qwen3vl_integrations.core import rotary
from qwen3vl_integrations.core.vision_levers import use_grouped_vision_attention


def _axial_cos_sin(tokens: int, dim: int) -> tuple[torch.Tensor, torch.Tensor]:
    angles = torch.randn(tokens, dim // 2) * 50  # large angles: every sign and magnitude of cos and sin
    both = torch.cat([angles, angles], dim=-1)  # as the tower's rotary embedding repeats its frequencies
    return both.cos(), both.sin()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("tokens, heads, dim", [(1, 1, 2), (37, 4, 16), (300, 16, 64)])
def test_rotate_query_key_is_bit_identical_to_transformers(dtype, tokens, heads, dim):
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb_vision

    torch.manual_seed(tokens)
    qkv = (torch.randn(tokens, 3 * heads * dim) * 30).to(dtype).view(tokens, 3, heads, dim)
    cos, sin = _axial_cos_sin(tokens, dim)
    # Different cosines per half too: the function must not rely on the halves being equal.
    cos[:, dim // 2:] = torch.randn(tokens, dim // 2).clamp(-1, 1)
    expected_query, expected_key = apply_rotary_pos_emb_vision(qkv[:, 0], qkv[:, 1], cos, sin)
    query, key = rotary.rotate_vision_query_key(qkv, cos, sin)
    for got, expected in ((query, expected_query), (key, expected_key)):
        assert got.dtype == dtype and got.shape == (tokens, heads, dim) and got.is_contiguous()
        assert torch.equal(got, expected)


def test_the_tower_gives_the_same_features_with_the_switch_on_and_off(tiny_embedding_path, monkeypatch):
    from transformers import AutoModel
    from transformers.models.qwen3_vl import modeling_qwen3_vl

    model = AutoModel.from_pretrained(str(tiny_embedding_path), dtype=torch.bfloat16, attn_implementation="sdpa")
    model.eval()
    assert use_grouped_vision_attention(model) == model.config.vision_config.depth
    grid = torch.tensor([[1, 6, 6], [1, 4, 8], [2, 4, 6]])
    torch.manual_seed(0)
    pixels = torch.randn(int(grid.prod(1).sum()), 3 * 2 * 16 * 16).to(torch.bfloat16)
    stock_calls = []
    stock = modeling_qwen3_vl.apply_rotary_pos_emb_vision
    monkeypatch.setattr(modeling_qwen3_vl, "apply_rotary_pos_emb_vision",
                        lambda *args: stock_calls.append(1) or stock(*args))
    with torch.no_grad():
        monkeypatch.setattr(rotary, "VISION_IN_FEWER_PASSES", False)
        expected = model.visual(pixels, grid_thw=grid)
        assert len(stock_calls) == model.config.vision_config.depth
        monkeypatch.setattr(rotary, "VISION_IN_FEWER_PASSES", True)
        got = model.visual(pixels, grid_thw=grid)
    assert len(stock_calls) == model.config.vision_config.depth  # not called with the switch on
    assert torch.equal(got.pooler_output, expected.pooler_output)
    for a, b in zip(got.deepstack_features, expected.deepstack_features, strict=True):
        assert torch.equal(a, b)


@pytest.mark.parametrize("fewer_passes", [True, False])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch, tokens, heads, dim", [(1, 1, 1, 2), (2, 37, 4, 16), (3, 50, 2, 128)])
def test_rotate_text_is_bit_identical_to_transformers(dtype, batch, tokens, heads, dim, fewer_passes, monkeypatch):
    from transformers.models.qwen3_vl.modeling_qwen3_vl import apply_rotary_pos_emb

    monkeypatch.setattr(rotary, "TEXT_IN_FEWER_PASSES", fewer_passes)
    torch.manual_seed(tokens)
    query = (torch.randn(batch, tokens, heads, dim) * 30).to(dtype)
    key = (torch.randn(batch, tokens, 1, dim) * 30).to(dtype)
    cos, sin = (t.expand(batch, tokens, dim).to(dtype) for t in _axial_cos_sin(tokens, dim))
    cos = cos.clone()
    cos[0, :, :1] = 0.5  # halves that differ
    expected_query, expected_key = apply_rotary_pos_emb(query.transpose(1, 2), key.transpose(1, 2), cos, sin)
    for got, expected in ((rotary.rotate_text(query, cos, sin), expected_query),
                          (rotary.rotate_text(key, cos, sin), expected_key)):
        assert got.dtype == expected.dtype and got.shape == expected.shape
        # The same memory layout as the stock result (what the attention kernel gets); a size-1 dimension's stride
        # is arbitrary.
        assert [st for st, n in zip(got.stride(), got.shape) if n > 1] == \
            [st for st, n in zip(expected.stride(), expected.shape) if n > 1]
        assert torch.equal(got, expected)


def test_loaded_language_models_rotate_with_fewer_passes(tiny_embedder):
    from qwen3vl_integrations.core.text_attention import use_text_attention

    backbone = tiny_embedder.load().backbone
    layers = backbone.language_model.layers
    assert all("forward" in vars(layer.self_attn) for layer in layers)
    assert use_text_attention(torch.nn.Linear(2, 2)) == 0
    for layer in layers:
        del layer.self_attn.forward
    layers[0].self_attn.sliding_window = 4  # a forward this code does not reproduce is left alone
    try:
        assert use_text_attention(backbone) == len(layers) - 1
        assert "forward" not in vars(layers[0].self_attn)
    finally:
        del layers[0].self_attn.sliding_window
        assert use_text_attention(backbone) == len(layers)


@pytest.mark.parametrize("switch", ["TEXT_IN_FEWER_PASSES", "VISION_IN_FEWER_PASSES"])
def test_embeddings_and_scores_are_the_same_with_each_switch_on_and_off(tiny_embedding_path, tiny_reranker_path,
                                                                       tiny_core_kwargs, lever_outputs, monkeypatch,
                                                                       switch):
    """bfloat16, where rounding would show: vectors of texts and images, and scores with and without the cached query
    part (whose rows attend to the cached keys, rotated in an earlier pass)."""
    from qwen3vl_integrations import Qwen3VLEmbedder, Qwen3VLReranker

    tiny_core_kwargs["dtype"] = "bfloat16"
    embedder = Qwen3VLEmbedder(model_name_or_path=str(tiny_embedding_path), **tiny_core_kwargs)
    reranker = Qwen3VLReranker(model_name_or_path=str(tiny_reranker_path), **tiny_core_kwargs)
    monkeypatch.setattr(rotary, switch, False)
    expected = lever_outputs(embedder, reranker)
    monkeypatch.setattr(rotary, switch, True)
    got = lever_outputs(embedder, reranker)
    assert got[0].dtype == expected[0].dtype
    for a, b in zip(got, expected, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))
