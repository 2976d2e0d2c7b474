"""Causal attention for rows that continue a key/value cache, on SDPA's fastest kernel.

The reranker runs the query's part of every prompt once and each micro-batch of documents attends to that cache
(`prefix.py`). A row's L tokens then meet P + L keys. Rows are right-padded, so every real token may see exactly
the P cached keys and the row's tokens up to its own: causal attention aligned to the last key ("lower right").
transformers states this as a boolean [B, 1, L, P + L] mask, and SDPA given any mask cannot use its FlashAttention
kernel (its `is_causal` is aligned to the first key). `torch.nn.attention.bias.causal_lower_right` says the same
thing as a kind of mask, which SDPA runs with the FlashAttention kernel on CUDA and as the plain mask elsewhere.
On the CPU, rows much longer than the cache instead take SDPA's causal kernel with P placeholder rows in front of
them: row P + i then sees keys 0 .. P + i, exactly the lower-right rule, and the kernel skips the keys past each
block of rows, which a mask makes it compute. Pad tokens' own outputs change, and are never read.
"""
from __future__ import annotations

from typing import Any

import torch

# Registered with transformers under this name: SDPA, with the case above on the lower-right kernel.
LOWER_RIGHT_SDPA = "sdpa_lower_right"

# False: those rows get transformers' masked SDPA too (for comparison; the results are the same).
CACHED_ROWS_LOWER_RIGHT = True

# False: on the CPU too, every such row gets the causal bias (run there as a mask).
CPU_LONG_ROWS_CAUSAL = True
# Torch's CPU kernel skips keys in blocks of 512 (its kv split size), so the placeholder rows pay only when a row is
# enough longer than the cache; this excess is where they started to pay on 2 AVX2 cores (`python -m
# benchmarks.cached_attention`, benchmarks/results/cpu_cached_attention.md: 1.1-1.2x at 416-482 tokens more than
# the cache, 1.2-2.0x for rows of 768-4,000 tokens, 0.57-1.04x below it).
CPU_LONG_ROWS_MIN_EXCESS = 384


def takes_causal_kernel(rows: int, keys: int, device_type: str) -> bool:
    """Whether rows of this length after a cache (keys - rows cached keys) run SDPA's causal kernel behind
    placeholder rows rather than the causal bias."""
    return CPU_LONG_ROWS_CAUSAL and device_type == "cpu" and rows - (keys - rows) >= CPU_LONG_ROWS_MIN_EXCESS


def sdpa_lower_right(module: Any, query: torch.Tensor, key: torch.Tensor, value: torch.Tensor,
                     attention_mask: torch.Tensor | None, dropout: float = 0.0, scaling: float | None = None,
                     **kwargs: Any) -> tuple[torch.Tensor, None]:
    """transformers' SDPA attention, except that causal rows continuing a cache (1 < L < keys) attend lower-right
    causally without a mask. Same arguments and output ([B, L, heads, dim], None) as transformers' function."""
    from transformers.integrations.sdpa_attention import repeat_kv, sdpa_attention_forward

    length, keys = query.shape[2], key.shape[2]
    if not (CACHED_ROWS_LOWER_RIGHT and 1 < length < keys and getattr(module, "is_causal", False) and dropout == 0.0
            and kwargs.get("is_causal") in (None, True) and kwargs.get("position_bias") is None):
        return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling,
                                      **kwargs)
    groups = getattr(module, "num_key_value_groups", 1)
    if takes_causal_kernel(length, keys, query.device.type):
        cached = keys - length
        placeholders = query.new_zeros(*query.shape[:2], cached, query.shape[3])
        out = torch.nn.functional.scaled_dot_product_attention(
            torch.cat([placeholders, query], dim=2), key, value, is_causal=True, scale=scaling,
            enable_gqa=groups > 1)
        return out[:, :, cached:].transpose(1, 2).contiguous(), None
    from torch.nn.attention.bias import causal_lower_right

    if groups > 1:  # the FlashAttention path of a causal bias takes as many key/value heads as query heads
        key, value = repeat_kv(key, groups), repeat_kv(value, groups)
    out = torch.nn.functional.scaled_dot_product_attention(
        query, key, value, attn_mask=causal_lower_right(length, keys), scale=scaling)
    return out.transpose(1, 2).contiguous(), None


def use_lower_right_attention(backbone: Any) -> bool:
    """Run the language model's attention with `sdpa_lower_right` where it runs SDPA (masks are built as for SDPA).
    Setting the language model config's `_attn_implementation` back to "sdpa" restores the stock function."""
    config = getattr(getattr(backbone, "language_model", None), "config", None)
    if config is None or getattr(config, "_attn_implementation", None) != "sdpa":
        return False
    from transformers import AttentionInterface
    from transformers.masking_utils import AttentionMaskInterface, sdpa_mask

    AttentionInterface.register(LOWER_RIGHT_SDPA, sdpa_lower_right)
    AttentionMaskInterface.register(LOWER_RIGHT_SDPA, sdpa_mask)
    config._attn_implementation = LOWER_RIGHT_SDPA
    return True
