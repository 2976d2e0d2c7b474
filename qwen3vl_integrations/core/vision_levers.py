"""Forward overrides of the vision side of a loaded model: the patch embedding as one matrix product, the vision
attention in one call per run of equal-length images, and the deepstack merge by index. Each gives the stock results
to float rounding; deleting the instance attribute (`del module.forward`) restores the stock code.
"""
from __future__ import annotations

import inspect
from typing import Any

import torch

from . import rotary


def _linear_patch_embed_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    weight = self.proj.weight
    flat = weight.view(weight.shape[0], -1)  # (C, T, P, P) flattened in the order of the pixel_values rows
    return torch.nn.functional.linear(hidden_states.reshape(-1, flat.shape[1]).to(flat.dtype), flat, self.proj.bias)


def use_linear_patch_embed(backbone: Any) -> bool:
    """Run the vision patch embedding as one matrix product instead of a Conv3d on the same weights.

    The Conv3d's kernel equals its stride, so it is a plain linear map of each flattened patch; as a matrix product
    it is 2-3x faster on CPU (and avoids the slow Conv3d kernels of some torch/cuDNN releases on GPUs). The weights
    are shared, not copied; results agree to float rounding. Returns False when the model has no such layer.
    `del backbone.visual.patch_embed.forward` restores the original.
    """
    patch_embed = getattr(getattr(backbone, "visual", None), "patch_embed", None)
    proj = getattr(patch_embed, "proj", None)
    if (patch_embed is None or not isinstance(proj, torch.nn.Conv3d) or tuple(proj.kernel_size) != tuple(proj.stride)
            or proj.padding not in ((0, 0, 0), "valid") or tuple(proj.dilation) != (1, 1, 1) or proj.groups != 1):
        return False
    patch_embed.forward = _linear_patch_embed_forward.__get__(patch_embed)
    return True


def _runs(lengths: list[int]) -> list[tuple[int, int]]:
    """(length, count) for each run of equal consecutive lengths."""
    runs: list[tuple[int, int]] = []
    for length in lengths:
        if runs and runs[-1][0] == length:
            runs[-1] = (length, runs[-1][1] + 1)
        else:
            runs.append((length, 1))
    return runs


class OncePerTensor:
    """`fn(tensor)`, computed once for each new tensor and reused while the same tensor object comes back.

    A forward pass hands one tensor to all the layers that need it (the vision tower's chunk boundaries when they
    do not come precomputed, the language model's visual positions), so a value read back from the device, a GPU
    synchronisation, is read once per pass instead of once per layer."""

    def __init__(self, fn: Any) -> None:
        self.fn = fn
        self._tensor: torch.Tensor | None = None
        self._value: Any = None

    def __call__(self, tensor: torch.Tensor) -> Any:
        if tensor is not self._tensor:
            self._value, self._tensor = self.fn(tensor), tensor
        return self._value


def chunk_runs(cu_seqlens: torch.Tensor) -> list[tuple[int, int]]:
    """(length, count) of each run of equally long chunks, from the chunks' cumulative boundaries."""
    return _runs((cu_seqlens[1:] - cu_seqlens[:-1]).tolist())


def _grouped_vision_attention_forward(self: Any, hidden_states: torch.Tensor, cu_seqlens: torch.Tensor,
                                      position_embeddings: tuple[torch.Tensor, torch.Tensor],
                                      max_seqlen: int | None = None,
                                      chunk_runs: list[tuple[int, int]] | None = None, **kwargs: Any) -> torch.Tensor:
    """Qwen3-VL vision attention with one attention call per run of equally long chunks (images of one size,
    the frame groups of a video) instead of one call per chunk, as the stock non-flash path does. The runs come
    precomputed (`core/vision_layout.py`) or are read from `cu_seqlens`, once per pass. Queries and keys are rotated
    by `core/rotary.py` (the same values in fewer passes over memory)."""
    import sys

    module = sys.modules[type(self).__module__]
    seq_length = hidden_states.shape[0]
    query_key_value = self.qkv(hidden_states).reshape(seq_length, 3, self.num_heads, -1)
    cos, sin = position_embeddings
    if rotary.VISION_IN_FEWER_PASSES:
        query, key = rotary.rotate_vision_query_key(query_key_value, cos, sin)
    else:
        query, key = module.apply_rotary_pos_emb_vision(query_key_value[:, 0], query_key_value[:, 1], cos, sin)
    value = query_key_value[:, 2]
    attention = module.ALL_ATTENTION_FUNCTIONS.get_interface(self.config._attn_implementation,
                                                             module.eager_attention_forward)
    heads = self.num_heads
    outputs = []
    start = 0
    if chunk_runs is None:
        chunk_runs = self.chunk_runs(cu_seqlens)
    for length, count in chunk_runs:
        end = start + length * count
        # (tokens, heads, dim) -> (count, heads, length, dim)
        q, k, v = (t[start:end].reshape(count, length, heads, -1).transpose(1, 2) for t in (query, key, value))
        out, _ = attention(self, q, k, v, attention_mask=None, scaling=self.scaling, dropout=0.0, is_causal=False,
                           **kwargs)
        outputs.append(out.reshape(count * length, -1))  # out: (count, length, heads, dim)
        start = end
    attn_output = outputs[0] if len(outputs) == 1 else torch.cat(outputs)
    return self.proj(attn_output.contiguous())


def use_grouped_vision_attention(backbone: Any) -> int:
    """Batch the vision tower's per-image attention calls (SDPA and eager attention; FlashAttention-2 already runs
    all chunks in one varlen call and is left alone). Returns the number of attention layers changed.

    Stock transformers calls attention once per image (or video frame group) in each of the tower's layers: 24 x
    the number of images per forward pass for the 2B model. Equal-length neighbours (the planner puts images of one
    size side by side; a video's frame groups are equal) share one call. `del layer.forward` restores a layer.
    """
    visual = getattr(backbone, "visual", None)
    if visual is None:
        return 0
    changed = 0
    shared = OncePerTensor(chunk_runs)  # read once per pass (24 layers in the 2B); passes run under the model lock
    for layer in visual.modules():
        config = getattr(layer, "config", None)
        if (type(layer).__name__.endswith("VisionAttention") and hasattr(layer, "qkv")
                and hasattr(layer, "num_heads") and config is not None
                and getattr(config, "_attn_implementation", None) in ("sdpa", "eager")):
            layer.chunk_runs = shared
            layer.forward = _grouped_vision_attention_forward.__get__(layer)
            changed += 1
    return changed


def _indexed_deepstack_process(self: Any, hidden_states: torch.Tensor, visual_pos_masks: torch.Tensor,
                               visual_embeds: torch.Tensor) -> torch.Tensor:
    # The stock code indexes with the boolean mask twice per deep-stacked layer, each a read-back of the mask
    # (a GPU synchronisation); integer positions, found once per pass, add the same values in the same order.
    rows, columns = self.visual_positions(visual_pos_masks)
    hidden_states = hidden_states.clone()
    visual_embeds = visual_embeds.to(hidden_states.device, hidden_states.dtype)
    hidden_states[rows, columns] = hidden_states[rows, columns] + visual_embeds
    return hidden_states


def _visual_positions(visual_pos_masks: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    rows, columns = visual_pos_masks.nonzero(as_tuple=True)  # the mask is [batch, sequence]
    return rows, columns


def use_indexed_deepstack(backbone: Any) -> bool:
    """Add the deep-stacked vision features to the language model's hidden states at integer positions found once
    per forward pass, instead of by boolean-mask indexing in each of the 3 layers that take them. False when the
    model has no such step. `del backbone.language_model._deepstack_process` restores the original."""
    language_model = getattr(backbone, "language_model", None)
    stock = getattr(type(language_model), "_deepstack_process", None)
    if language_model is None or stock is None or list(inspect.signature(stock).parameters) != [
            "self", "hidden_states", "visual_pos_masks", "visual_embeds"]:
        return False
    language_model.visual_positions = OncePerTensor(_visual_positions)
    language_model._deepstack_process = _indexed_deepstack_process.__get__(language_model)
    return True
