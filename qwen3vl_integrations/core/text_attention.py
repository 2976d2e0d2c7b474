"""The language model's attention layers as this package computes them: transformers' forward, with the queries,
keys and values from one matrix product (`fused_projections.py`), and the queries and keys normed and rotated
together (`rotary.py`), with the stock values.

Queries and keys get the same per-head operations (an RMSNorm over each head, then the rotary embedding; only the
norm's weight differs, one row per head here), so one kernel can run them on both. Per layer this leaves 8 of the 17
kernels the projections, norms and rotation took (3 products -> 1, 4 norm kernels -> 2, 10 rotation kernels -> 5):
kernel launches bound a text batch on a GPU.
"""
from __future__ import annotations

import sys
from typing import Any

import torch

from . import fused_projections
from .rms_norm import rms_norm, runs_fused
from .rotary import rotate_text

# Attention classes whose forward is exactly `_forward` below with transformers' `apply_rotary_pos_emb`, the
# projections and norms of the stock modules.
_KNOWN_TEXT_ATTENTION = frozenset({"Qwen3VLTextAttention"})


def is_known_text_attention(attention: Any) -> bool:
    """Whether `attention` computes what `_forward` computes (q/k RMSNorm per head, rotary embedding, grouped keys and
    values, causal, no sliding window), so that code of this package may compute it instead."""
    return (type(attention).__name__ in _KNOWN_TEXT_ATTENTION
            and all(hasattr(attention, name) for name in ("q_proj", "k_proj", "v_proj", "o_proj", "q_norm", "k_norm",
                                                          "head_dim", "scaling", "layer_idx"))
            and getattr(attention, "sliding_window", None) is None)


def _query_key_norm_weight(attention: Any) -> torch.Tensor | None:
    """The q and k norms' weights as one row per query head, then one per key head, when both norms run `rms_norm`
    with one epsilon (else None). Made again when either weight changes (in place: its version counter; replaced or
    moved: its address)."""
    modules = attention._modules  # read per layer and pass: the modules' dictionaries, not their attributes
    q_norm, k_norm = modules["q_norm"], modules["k_norm"]
    q_weight, k_weight = q_norm._parameters.get("weight"), k_norm._parameters.get("weight")
    if not (runs_fused(q_norm) and runs_fused(k_norm) and q_norm.variance_epsilon == k_norm.variance_epsilon
            and q_weight is not None and k_weight is not None
            and q_weight.shape == k_weight.shape == (attention.head_dim,)):
        return None
    if torch.compiler.is_compiling():  # addresses and versions cannot be traced: made in the graph, and fused there
        query_heads, kv_heads = _heads(attention)
        return torch.cat([q_weight.expand(query_heads, -1), k_weight.expand(kv_heads, -1)])
    key = (q_weight.data_ptr(), q_weight._version, k_weight.data_ptr(), k_weight._version)
    made = vars(attention).get("_query_key_norm")
    if made is None or made[0] != key:
        query_heads, kv_heads = _heads(attention)
        made = key, torch.cat([q_weight.detach().expand(query_heads, -1), k_weight.detach().expand(kv_heads, -1)])
        attention._query_key_norm = made
    return made[1]


def _heads(attention: Any) -> tuple[int, int]:
    """(query heads, key/value heads) of the joined projection."""
    query_rows, key_rows, _ = fused_projections.joined_rows(attention, "qkv")
    return query_rows // attention.head_dim, key_rows // attention.head_dim


def queries_keys_values(attention: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                        ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Normed and rotated queries and keys, and values, [batch, heads, tokens, head_dim], of `hidden`
    [batch, tokens, hidden_size] at positions with rotary cosines and sines [batch, tokens, head_dim]."""
    joined = fused_projections.joined_weights(attention, "qkv")
    if joined is None:
        return queries(attention, hidden, cos, sin), *keys_values(attention, hidden, cos, sin)
    shape = (*hidden.shape[:-1], -1, attention.head_dim)
    query_heads, kv_heads = _heads(attention)
    projected = torch.nn.functional.linear(hidden, *joined).view(shape)
    query_key = projected[..., :query_heads + kv_heads, :]
    norm_weight = _query_key_norm_weight(attention)
    if norm_weight is not None:
        query_key = rms_norm(query_key, norm_weight, attention.q_norm.variance_epsilon)
    else:  # norms not run by `rms_norm` (or with different epsilons): each its own forward
        query_key = torch.cat([attention.q_norm(query_key[..., :query_heads, :]),
                               attention.k_norm(query_key[..., query_heads:, :])], dim=-2)
    query_key = rotate_text(query_key, cos, sin)
    return (query_key[:, :query_heads], query_key[:, query_heads:],
            projected[..., query_heads + kv_heads:, :].transpose(1, 2))


def keys_values(attention: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                ) -> tuple[torch.Tensor, torch.Tensor]:
    """Normed and rotated keys, and values, [batch, kv_heads, tokens, head_dim], as in `queries_keys_values`."""
    shape = (*hidden.shape[:-1], -1, attention.head_dim)
    joined = fused_projections.joined_weights(attention, "qkv")
    if joined is None:
        key = attention.k_norm(attention.k_proj(hidden).view(shape))
        return rotate_text(key, cos, sin), attention.v_proj(hidden).view(shape).transpose(1, 2)
    weight, bias = joined
    query_rows, key_rows, _ = fused_projections.joined_rows(attention, "qkv")  # keys and values follow the queries
    projected = torch.nn.functional.linear(hidden, weight[query_rows:],
                                           None if bias is None else bias[query_rows:]).view(shape)
    kv_heads = key_rows // attention.head_dim
    key = rotate_text(attention.k_norm(projected[..., :kv_heads, :]), cos, sin)
    return key, projected[..., kv_heads:, :].transpose(1, 2)


def queries(attention: Any, hidden: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Normed and rotated queries [batch, heads, tokens, head_dim], as in `queries_keys_values`."""
    shape = (*hidden.shape[:-1], -1, attention.head_dim)
    return rotate_text(attention.q_norm(attention.q_proj(hidden).view(shape)), cos, sin)


def _forward(self: Any, hidden_states: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor],
             attention_mask: torch.Tensor | None, cache: Any = None, **kwargs: Any
             ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Qwen3-VL text attention (transformers' forward) with queries, keys and values from `queries_keys_values`."""
    if cache is None:  # transformers releases before the rename call it past_key_values
        cache = kwargs.pop("past_key_values", None)
    query, key, value = queries_keys_values(self, hidden_states, *position_embeddings)
    if cache is not None:
        output, weights = _attend_after_cache(self, query, key, value, attention_mask, cache, kwargs)
    else:
        output, weights = _attend(self, query, key, value, attention_mask, kwargs)
    return self.o_proj(output.reshape(*hidden_states.shape[:-1], -1).contiguous()), weights


def _attend(attention: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
            attention_mask: torch.Tensor | None, kwargs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The attention function the model's config names, as transformers' forward calls it."""
    module = sys.modules[type(attention).__module__]
    function = module.ALL_ATTENTION_FUNCTIONS.get_interface(attention.config._attn_implementation,
                                                            module.eager_attention_forward)
    return function(attention, query, key, value, attention_mask,
                    dropout=0.0 if not attention.training else attention.attention_dropout,
                    scaling=attention.scaling, **kwargs)


def _cache_update(cache: Any, attention: Any, key: torch.Tensor, value: torch.Tensor, **cache_kwargs: Any
                  ) -> tuple[torch.Tensor, torch.Tensor]:
    return cache.update(key, value, attention.layer_idx, **cache_kwargs)


# The cache's keys and values of this layer followed by `key` and `value`. Out of `torch.compile`d layers
# (`core/compiled_layers.py`): traced, the cache's per-layer state and the layer's index become guards, and each layer
# would compile anew up to torch's recompile limit. Outside the graph the layers share their compiled code with or
# without a cache. (Eager, the wrapper costs about a microsecond a call.)
cached_keys_values = torch.compiler.disable(_cache_update)


@torch.compiler.disable
def _attend_after_cache(attention: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                        attention_mask: torch.Tensor | None, cache: Any, kwargs: dict[str, Any]
                        ) -> tuple[torch.Tensor, torch.Tensor | None]:
    """`_attend` over the cached keys and values and these, out of compiled graphs as `cached_keys_values` (the
    attention of rows after a cache also picks its kernel by their lengths, `core/lower_right_attention.py`)."""
    key, value = _cache_update(cache, attention, key, value, kwargs=kwargs)
    return _attend(attention, query, key, value, attention_mask, kwargs)


def use_text_attention(backbone: Any) -> int:
    """Run the language model's attention layers with `_forward`, their projections joined where they can be.
    Returns the number of layers changed; `del layer.forward` restores one."""
    changed = 0
    for layer in getattr(getattr(backbone, "language_model", None), "layers", None) or []:
        attention = getattr(layer, "self_attn", None)
        if attention is not None and is_known_text_attention(attention):
            if getattr(attention, "qkv_weight", None) is None:
                fused_projections.join_linears(attention, "qkv", ("q_proj", "k_proj", "v_proj"))
            attention.forward = _forward.__get__(attention)
            changed += 1
    return changed
