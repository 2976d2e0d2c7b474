"""The language model's RMSNorms as one `rms_norm` kernel and one weight product, with the stock values.

The stock forward is a float32 sequence of elementwise kernels (cast, pow, mean, add, rsqrt, mul, cast, mul); on
GPUs these memory-bound kernels took as much time as the matrix products of a text batch.
"""
from __future__ import annotations

from typing import Any

import torch

# Classes whose forward is exactly weight * (x in float32 * rsqrt(mean(x^2) + eps)).to(x.dtype).
_STOCK_RMS_NORMS = frozenset({"Qwen3VLTextRMSNorm", "Qwen3RMSNorm", "Qwen2RMSNorm"})


def rms_norm(x: torch.Tensor, weight: torch.Tensor, eps: float) -> torch.Tensor:
    """The stock RMSNorm of `x` over its last dimension, times `weight` (broadcast: [dim], or one row per head)."""
    # F.rms_norm computes in float32 and rounds to the input dtype before the weight product, as the stock forward
    # does; the weight stays outside so that this rounding step is kept (bit-identical on CPU in every dtype).
    return weight * torch.nn.functional.rms_norm(x, x.shape[-1:], eps=eps)


def is_stock_rms_norm(module: Any) -> bool:
    """Whether `module` computes what `rms_norm(x, module.weight, module.variance_epsilon)` computes."""
    return (type(module).__name__ in _STOCK_RMS_NORMS and isinstance(getattr(module, "weight", None), torch.Tensor)
            and module.weight.dim() == 1 and isinstance(getattr(module, "variance_epsilon", None), float))


def _fused_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    return rms_norm(hidden_states, self.weight, self.variance_epsilon)


def runs_fused(module: Any) -> bool:
    """Whether `module` runs `rms_norm` (installed by `use_fused_rms_norm`)."""
    forward = vars(module).get("forward")
    return getattr(forward, "__func__", None) is _fused_forward


def use_fused_rms_norm(backbone: Any) -> int:
    """Run the model's stock RMSNorms (4 per language model layer, q/k norms included) by `rms_norm`. Returns the
    number of modules changed. `del module.forward` restores one."""
    changed = 0
    for module in backbone.modules():
        if is_stock_rms_norm(module):
            module.forward = _fused_forward.__get__(module)
            changed += 1
    return changed
