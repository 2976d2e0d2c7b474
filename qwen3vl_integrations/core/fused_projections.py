"""Linear layers that read the same input, run as one matrix product: the language model's query, key and value
projections (`text_attention.py`), and its MLP's gate and up projections (here).

Each output value is the same dot product of the same operands as before (on CPU bit-identical in float32 and
bf16, `tests/test_fused_projections.py`; a GPU library may pick another kernel for the wider product, which can
round differently). What goes is kernel launches: a text batch on a GPU is bound by the host launching every kernel
of every layer. The joined weight is the only copy: the separate layers' weights become views of its rows, so no
memory is added and the stock modules still compute the same thing.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

# False: one matrix product per projection, the norms and rotation of queries and keys per tensor (for comparison;
# the joined weights stay, the separate layers reading their rows).
FUSED_PROJECTIONS = True

# MLP classes whose forward is exactly down_proj(act_fn(gate_proj(x)) * up_proj(x)).
_KNOWN_GATED_MLPS = frozenset({"Qwen3VLTextMLP"})


def join_linears(owner: torch.nn.Module, name: str, linears: Sequence[Any]) -> bool:
    """Stack the weights (and biases) of `linears` into non-persistent buffers `{name}_weight` and `{name}_bias` of
    `owner` (`None` without biases) and make each linear's weight a view of its rows. False, and nothing changed, for
    layers this cannot join: other than plain `nn.Linear` (quantized layers subclass it), with hooks that move
    weights, on different devices or dtypes, on the meta device, or with biases on some only."""
    if not linears or not all(type(layer) is torch.nn.Linear and not hasattr(layer, "_hf_hook") for layer in linears):
        return False
    weights = [layer.weight for layer in linears]
    biases = [layer.bias for layer in linears]
    first = weights[0]
    if (first.is_meta or any(w.device != first.device or w.dtype != first.dtype or w.shape[1] != first.shape[1]
                             for w in weights)
            or any(b is None for b in biases) != all(b is None for b in biases)):
        return False
    joined_weight = torch.cat([w.detach() for w in weights])
    joined_bias = None if biases[0] is None else torch.cat([b.detach() for b in biases])
    owner.register_buffer(f"{name}_weight", joined_weight, persistent=False)
    owner.register_buffer(f"{name}_bias", joined_bias, persistent=False)
    start = 0
    for layer, weight in zip(linears, weights):
        rows = slice(start, start + weight.shape[0])
        layer.weight = torch.nn.Parameter(joined_weight[rows], requires_grad=weight.requires_grad)
        if joined_bias is not None:
            layer.bias = torch.nn.Parameter(joined_bias[rows], requires_grad=layer.bias.requires_grad)
        start = rows.stop
    return True


def reads_joined(owner: Any, name: str, linears: Sequence[Any]) -> bool:
    """Whether `owner`'s joined `{name}_weight` is in use and the linears' weights are still its rows (a weight
    replaced, or the model moved to another device or dtype, which copies each tensor apart, falls back to the
    separate products: correct, only slower)."""
    joined = getattr(owner, f"{name}_weight", None)
    if not FUSED_PROJECTIONS or joined is None:
        return False
    if torch.compiler.is_compiling():  # addresses cannot be traced; a compiled model is not moved while it runs
        return True
    pointer, step = joined.data_ptr(), joined.shape[1] * joined.element_size()
    for layer in linears:
        if layer.weight.data_ptr() != pointer:
            return False
        pointer += layer.weight.shape[0] * step
    return True


def _gated_mlp_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    if not reads_joined(self, "gate_up", (self.gate_proj, self.up_proj)):
        return type(self).forward(self, hidden_states)
    gate, up = torch.nn.functional.linear(hidden_states, self.gate_up_weight, self.gate_up_bias).chunk(2, dim=-1)
    return self.down_proj(self.act_fn(gate) * up)


def use_fused_gate_up(backbone: Any) -> int:
    """Run the language model's MLPs with the gate and up projections as one product. Returns the number of MLPs
    changed; `del mlp.forward` restores one (its weights stay views of the joined one)."""
    changed = 0
    for layer in getattr(getattr(backbone, "language_model", None), "layers", None) or []:
        mlp = getattr(layer, "mlp", None)
        if (type(mlp).__name__ in _KNOWN_GATED_MLPS
                and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn"))
                and mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape
                and (getattr(mlp, "gate_up_weight", None) is not None
                     or join_linears(mlp, "gate_up", [mlp.gate_proj, mlp.up_proj]))):
            mlp.forward = _gated_mlp_forward.__get__(mlp)
            changed += 1
    return changed
