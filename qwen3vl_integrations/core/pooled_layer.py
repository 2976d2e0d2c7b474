"""The language model's last decoder layer, run only where its output is read.

Embeddings and reranker scores read one hidden state per row, at its last real token. Every layer but the last must
run at all positions (the next layer attends to them), but the last layer's queries, attention output, output
projection and MLP are only needed at that one token; its keys and values still cover every position. That is
about 90% of one layer's arithmetic: 3.3% of the 2B language model (28 layers), 2.7% of the 8B (36), 11% of the
benchmark's 8-layer `small` checkpoint.
"""
from __future__ import annotations

import contextlib
from typing import Any, Iterator

import torch

from .text_attention import cached_keys_values, is_known_text_attention, keys_values, queries

# Decoder layer classes whose forward is exactly: x + attn(norm(x)), then h + mlp(norm(h)), with an attention that
# `text_attention.is_known_text_attention` knows.
_KNOWN_LAYERS = frozenset({"Qwen3VLTextDecoderLayer"})


def _pooled_forward(self: Any, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
                    attention_mask: torch.Tensor | None = None, position_ids: torch.Tensor | None = None,
                    cache: Any = None, **kwargs: Any) -> torch.Tensor:
    rows = self.pooled_tokens
    if rows is None:  # not asked for: the stock layer, with the arguments as they came
        passed = {"cache": cache} if cache is not None else {}
        return type(self).forward(self, hidden_states, position_embeddings=position_embeddings,
                                  attention_mask=attention_mask, position_ids=position_ids, **passed, **kwargs)
    if cache is None:  # transformers releases before the rename call it past_key_values
        cache = kwargs.get("past_key_values")
    attn = self.self_attn
    batch, length = hidden_states.shape[:2]
    row = torch.arange(batch, device=hidden_states.device)
    normed = self.input_layernorm(hidden_states)
    cos, sin = position_embeddings  # [B, L, head_dim]
    keys, values = keys_values(attn, normed, cos, sin)
    query = queries(attn, normed[row, rows][:, None], cos[row, rows][:, None], sin[row, rows][:, None])
    if cache is not None:  # the rows continue a cached query part: its keys and values come first
        keys, values = cached_keys_values(cache, attn, keys, values)
    cached = keys.shape[2] - length
    groups = query.shape[1] // keys.shape[1]
    # Causal: the pooled token sees every key up to its own position (the pads after it are never seen).
    visible = torch.arange(keys.shape[2], device=keys.device)[None, :] <= (rows + cached)[:, None]
    out = torch.nn.functional.scaled_dot_product_attention(
        query, keys.repeat_interleave(groups, dim=1), values.repeat_interleave(groups, dim=1),
        attn_mask=visible[:, None, None, :], scale=attn.scaling)
    hidden = hidden_states[row, rows][:, None] + attn.o_proj(out.transpose(1, 2).reshape(batch, 1, -1))
    return hidden + self.mlp(self.post_attention_layernorm(hidden))


def _is_known(layer: Any) -> bool:
    return (type(layer).__name__ in _KNOWN_LAYERS and is_known_text_attention(getattr(layer, "self_attn", None))
            and all(hasattr(layer, name) for name in ("input_layernorm", "post_attention_layernorm", "mlp")))


def use_pooled_last_layer(backbone: Any) -> bool:
    """Let the language model's last decoder layer run at one token per row (`pooled_tokens`); False when the
    layer is not one this code knows. Until `pooled_tokens` is set it runs the stock code.
    `del layer.forward` restores the original."""
    layers = getattr(getattr(backbone, "language_model", None), "layers", None)
    if not layers or not _is_known(layers[-1]):
        return False
    layers[-1].pooled_tokens = None
    layers[-1].forward = _pooled_forward.__get__(layers[-1])
    return True


def can_pool_last_layer(backbone: Any, has_vision: bool) -> bool:
    """Whether the last layer may run at the pooled tokens only: it is ours, and no vision features are added to
    its output (the model adds deep-stacked vision features to the outputs of its first few layers)."""
    layers = getattr(getattr(backbone, "language_model", None), "layers", None)
    if not layers or "forward" not in vars(layers[-1]):
        return False
    vision_config = getattr(backbone.config, "vision_config", None)
    deepstack = len(getattr(vision_config, "deepstack_visual_indexes", None) or ())
    return not has_vision or len(layers) > deepstack


@contextlib.contextmanager
def pooled_tokens(backbone: Any, rows: torch.Tensor) -> Iterator[None]:
    """Within this block (under the model lock) the last layer runs only at `rows` (one token index per row, in
    this forward pass's tokens) and the model's last hidden state is [B, 1, H]."""
    layer = backbone.language_model.layers[-1]
    layer.pooled_tokens = rows
    try:
        yield
    finally:
        layer.pooled_tokens = None
