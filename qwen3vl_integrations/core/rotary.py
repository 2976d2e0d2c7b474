"""Rotary position embeddings of queries and keys in fewer passes over memory, with the same values.

transformers rotates as `x * cos + rotate_half(x) * sin`, `rotate_half` building a negated and concatenated copy;
the vision tower casts to float32 first and back after. These are memory-bound elementwise kernels on large
tensors: in the vision tower seven per tensor, six writing float32 copies (for 512 images of 448x448 on the 2B
model, 400k patches x 1,024 values x 2 tensors in each of 24 layers); in the language model five per tensor, on
transposed views.

Both functions here compute each value with the same operations on the same operands, so the results are
bit-identical; only the copies go. The sine product of the negated half becomes a difference (negation is exact:
c + (-x) * s == c - x * s). `rotate_vision_query_key` rotates queries and keys together in five kernels: the cosine
products (bf16 values widen exactly inside a product with float32, as the cast widens them), the sine products of
each half, and the sums, rounded to bf16 on store as the cast back rounds. `rotate_text` works on the contiguous
tensors before the transpose: the cosine product, then each half updated in place by its sine product, with the
stock roundings (few operations: the host launches them in every layer, and short texts are bound by launches).
"""
from __future__ import annotations

import torch

# False: transformers' own vision function, and its text formula op for op (for comparison).
VISION_IN_FEWER_PASSES = True
TEXT_IN_FEWER_PASSES = True


def rotate_vision_query_key(query_key_value: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor
                            ) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotated queries and keys [tokens, heads, head_dim] (contiguous, in the model's dtype) from the vision
    attention's qkv projection viewed as [tokens, 3, heads, head_dim] and the rotary cosines and sines
    [tokens, head_dim]: equal to transformers' `apply_rotary_pos_emb_vision(query, key, cos, sin)`, both tensors
    in one set of kernels, in float32 with no float32 copy of the inputs."""
    query_key = query_key_value[:, :2].transpose(0, 1)  # [2, tokens, heads, dim], a view
    cos, sin = cos.float()[None, :, None, :], sin.float()[None, :, None, :]
    half = query_key.shape[-1] // 2
    cos_part = torch.mul(query_key, cos)  # float32
    sin_part = torch.empty_like(cos_part)
    torch.mul(query_key[..., half:], sin[..., :half], out=sin_part[..., :half])
    torch.mul(query_key[..., :half], sin[..., half:], out=sin_part[..., half:])
    rotated = torch.empty(cos_part.shape, dtype=query_key_value.dtype, device=cos_part.device)
    torch.sub(cos_part[..., :half], sin_part[..., :half], out=rotated[..., :half])
    torch.add(cos_part[..., half:], sin_part[..., half:], out=rotated[..., half:])
    return rotated[0], rotated[1]


def rotate_text(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """Queries or keys [batch, tokens, heads, head_dim], before the transpose, rotated by the language model's
    cosines and sines [batch, tokens, head_dim]: what transformers' `apply_rotary_pos_emb` gives for the transposed
    tensor [batch, heads, tokens, head_dim], in that layout and with the same strides.

    With TEXT_IN_FEWER_PASSES and cosines of the tensor's dtype: few operations, as the host launches them for every
    layer, each rounding as the stock ones do (the cosine product, each half's sine product, and the sum).
    Otherwise transformers' formula, op for op."""
    half = x.shape[-1] // 2
    if not (TEXT_IN_FEWER_PASSES and cos.dtype == x.dtype):
        x, cos, sin = x.transpose(1, 2), cos[:, None], sin[:, None]
        return x * cos + torch.cat((-x[..., half:], x[..., :half]), dim=-1) * sin
    cos, sin = cos[:, :, None], sin[:, :, None]
    rotated = x * cos
    rotated[..., :half] -= x[..., half:] * sin[..., :half]
    rotated[..., half:] += x[..., :half] * sin[..., half:]
    return rotated.transpose(1, 2)
