"""The last decoder layer run only at each row's last real token (core/pooled_layer.py): the same vectors and scores
as the whole layer, for every kind of input and both reranker paths, and only where that is valid."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from qwen3vl_integrations import Qwen3VLEmbedder, Qwen3VLReranker
from qwen3vl_integrations.core import runner as runner_module
from qwen3vl_integrations.core.pooled_layer import can_pool_last_layer, use_pooled_last_layer


@pytest.fixture(scope="module")
def items(media_dir):
    frames = [Image.new("RGB", (64, 48), (50 * i, 20, 200 - 50 * i)) for i in range(4)]
    return ["a", "a considerably longer piece of text about a red car parked in front of a white house " * 3,
            {"image": media_dir / "red.png"}, {"image": media_dir / "wide.png", "text": "wide"},
            {"video": media_dir / "clip.mp4", "text": "clip"}, {"video": frames},
            "medium length text with a few more words", {"text": ["b", "c"], "instruction": "Find related passages"}]


def pooled_shapes(model):
    """Record the [B, L, H] shape of each forward pass's last hidden state."""
    shapes = []
    handle = model.load().backbone.register_forward_hook(
        lambda module, args, output: shapes.append(tuple(output.last_hidden_state.shape)))
    return shapes, handle


def test_embeddings_equal_the_whole_last_layer(deep_paths, items, tiny_core_kwargs, monkeypatch):
    emb = Qwen3VLEmbedder(str(deep_paths["embedding"]), batch_size=3, **tiny_core_kwargs)
    shapes, handle = pooled_shapes(emb)
    try:
        pooled = emb.embed(items)
        assert shapes and all(shape[1] == 1 for shape in shapes)  # every batch, vision ones included, ran pooled
        shapes.clear()
        monkeypatch.setattr(runner_module, "POOL_IN_LAST_LAYER", False)
        whole = emb.embed(items)
        assert any(shape[0] > 1 and shape[1] > 1 for shape in shapes)  # padded batches of several rows
    finally:
        handle.remove()
    assert np.abs(pooled - whole).max() <= 1e-5


@pytest.mark.parametrize("share", [True, False])
def test_scores_equal_the_whole_last_layer(deep_paths, items, media_dir, tiny_core_kwargs, share, monkeypatch):
    reranker = Qwen3VLReranker(str(deep_paths["reranker"]), share_query_prefix=share, batch_size=3,
                               **tiny_core_kwargs)
    documents = [d for d in items if not isinstance(d, dict) or "instruction" not in d]
    queries = ["a red car", {"image": media_dir / "blue.jpg", "text": "this"}]
    shapes, handle = pooled_shapes(reranker)
    try:
        pooled = [reranker.score(q, documents) for q in queries]
        assert any(shape[1] == 1 for shape in shapes)
        monkeypatch.setattr(runner_module, "POOL_IN_LAST_LAYER", False)
        whole = [reranker.score(q, documents) for q in queries]
    finally:
        handle.remove()
    assert np.abs(np.asarray(pooled) - np.asarray(whole)).max() <= 1e-5


def test_vision_batches_of_the_tiny_model_run_the_whole_layer(tiny_embedder, media_dir):
    """The tiny model adds vision features after its last layer, so its image batches may not be pooled."""
    emb = tiny_embedder
    backbone = emb.load().backbone
    assert can_pool_last_layer(backbone, has_vision=False) and not can_pool_last_layer(backbone, has_vision=True)
    shapes, handle = pooled_shapes(emb)
    try:
        emb.embed(["text"])
        emb.embed([{"image": media_dir / "red.png"}])
    finally:
        handle.remove()
    assert shapes[0][1] == 1 and shapes[1][1] > 1


def test_unknown_layers_keep_their_code(deep_paths):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(deep_paths["embedding"]), dtype=torch.float32).eval()
    assert not use_pooled_last_layer(torch.nn.Linear(2, 2))
    last = model.language_model.layers[-1]
    last.self_attn.sliding_window = 16  # a layout this code does not handle
    assert not use_pooled_last_layer(model) and "forward" not in vars(last)
    assert not can_pool_last_layer(model, has_vision=False)
    del last.self_attn.sliding_window
    assert use_pooled_last_layer(model) and can_pool_last_layer(model, has_vision=False)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():  # not asked to pool: the stock layer's results, bit for bit
        got = model(input_ids=ids).last_hidden_state
        del last.forward
        assert torch.equal(model(input_ids=ids).last_hidden_state, got)
