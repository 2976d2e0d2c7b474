"""Linear layers that read the same input, run as one matrix product: the language model's query, key and value
projections (`text_attention.py`), and its MLP's gate and up projections (here).

Each output value is the same dot product of the same operands as before (the models' vectors and scores are
bit-identical on CPU in float32 and bf16, `tests/test_fused_projections.py`; a BLAS may still pick another kernel
for the wider product, which can round differently: GPU libraries, and CPUs for products of a few rows). What goes
is kernel launches, for which a batch of short texts waits on the host; used on CPUs and in compiled graphs only
(`FUSED_PROJECTIONS`: eager on a GPU the joined products measured slower). The joined weight is the only copy:
the separate layers' weights become views of its rows, so no memory is added and the stock modules still compute
the same thing.
"""
from __future__ import annotations

from typing import Any, Sequence

import torch

# None: joined on CPUs and in compiled graphs, separate elsewhere. On an H200 the joined products ran the texts
# 0.93x as fast (eager, interleaved A/B, 7 of 7 alternations slower; benchmarks/README.md, run 8). Their outputs are
# column slices, so the SiLU, the gating product and the rotation after them run torch's generic strided
# elementwise kernel (in the profile, a fifth of the kernel time was `mul` in it), which we take to cost more than
# the launches saved; torch.compile generates its own kernels for those. True: joined everywhere; False: one matrix
# product per projection, the norms and rotation of queries and keys per tensor (the joined weights stay either
# way, the separate layers reading their rows).
FUSED_PROJECTIONS: bool | None = None

# MLP classes whose forward is exactly down_proj(act_fn(gate_proj(x)) * up_proj(x)).
_KNOWN_GATED_MLPS = frozenset({"Qwen3VLTextMLP"})


def join_linears(owner: torch.nn.Module, name: str, children: Sequence[str]) -> bool:
    """Stack the weights (and biases) of `owner`'s linear layers named `children` into non-persistent buffers
    `{name}_weight` and `{name}_bias` of `owner` (`None` without biases) and make each linear's weight a view of its
    rows. False, and nothing changed, for layers this cannot join: other than plain `nn.Linear` (quantized layers
    subclass it), with hooks that move weights, on different devices or dtypes, on the meta device, or with biases
    on some only."""
    layers = [getattr(owner, child, None) for child in children]
    linears = [layer for layer in layers if type(layer) is torch.nn.Linear and not hasattr(layer, "_hf_hook")]
    if not linears or len(linears) != len(layers):
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
    layout = []
    start = 0
    for child, layer, weight in zip(children, linears, weights):
        rows = slice(start, start + weight.shape[0])
        layer.weight = torch.nn.Parameter(joined_weight[rows], requires_grad=weight.requires_grad)
        if joined_bias is not None:
            layer.bias = torch.nn.Parameter(joined_bias[rows], requires_grad=layer.bias.requires_grad)
        layout.append((child, weight.shape[0]))
        start = rows.stop
    # A plain attribute (read on every forward pass, where nn.Module's attribute lookup costs a microsecond a name).
    # The ignore: torch annotates Module.__setattr__ for tensors and modules only, yet it keeps any other value as is.
    owner._joined_layouts = {**vars(owner).get("_joined_layouts", {}), name: tuple(layout)}  # type: ignore[assignment]
    return True


def joined_rows(owner: Any, name: str) -> tuple[int, ...]:
    """How many rows of `owner`'s joined `{name}_weight` each of its linear layers has, in order."""
    return tuple(rows for _, rows in owner._joined_layouts[name])


def joins_on(device: torch.device) -> bool:
    """Whether joined products run on `device` outside compiled graphs (`FUSED_PROJECTIONS`)."""
    return FUSED_PROJECTIONS is True or (FUSED_PROJECTIONS is None and device.type == "cpu")


def joined_weights(owner: Any, name: str) -> tuple[torch.Tensor, torch.Tensor | None] | None:
    """`owner`'s joined `{name}_weight` and `{name}_bias` when they are in use (`FUSED_PROJECTIONS`) and its linear
    layers' weights (and biases) are still their rows; else None (a weight replaced, or the model moved to another
    device or dtype, which copies each tensor apart, falls back to the separate products: correct, only slower).
    This runs in every layer of every forward pass, so it reads the modules' own dictionaries rather than their
    attributes."""
    layout = vars(owner).get("_joined_layouts", {}).get(name)
    buffers = owner._buffers
    weight, bias = buffers.get(name + "_weight"), buffers.get(name + "_bias")
    if FUSED_PROJECTIONS is False or layout is None or weight is None:
        return None
    if torch.compiler.is_compiling():  # addresses cannot be traced; a compiled model is not moved while it runs
        return weight, bias
    if not joins_on(weight.device):
        return None
    modules = owner._modules
    for joined, parameter in ((weight, "weight"), (bias, "bias")):
        if joined is None:
            continue
        address, row_bytes = joined.data_ptr(), joined.stride(0) * joined.element_size()
        for child, rows in layout:
            linear = modules.get(child)
            tensor = None if linear is None else linear._parameters.get(parameter)
            if tensor is None or tensor.data_ptr() != address:
                return None
            address += rows * row_bytes
    return weight, bias


def _gated_mlp_forward(self: Any, hidden_states: torch.Tensor) -> torch.Tensor:
    joined = joined_weights(self, "gate_up")
    if joined is None:
        return type(self).forward(self, hidden_states)
    gate, up = torch.nn.functional.linear(hidden_states, *joined).chunk(2, dim=-1)
    return self.down_proj(self.act_fn(gate) * up)


def use_fused_gate_up(backbone: Any) -> int:
    """Run the language model's MLPs with the gate and up projections as one product. Returns the number of MLPs
    changed; `del mlp.forward` restores one (its weights stay views of the joined one)."""
    changed = 0
    for layer in getattr(getattr(backbone, "language_model", None), "layers", None) or []:
        mlp = getattr(layer, "mlp", None)
        if (mlp is not None and type(mlp).__name__ in _KNOWN_GATED_MLPS
                and all(hasattr(mlp, n) for n in ("gate_proj", "up_proj", "down_proj", "act_fn"))
                and mlp.gate_proj.weight.shape == mlp.up_proj.weight.shape
                and (getattr(mlp, "gate_up_weight", None) is not None
                     or join_linears(mlp, "gate_up", ("gate_proj", "up_proj")))):
            mlp.forward = _gated_mlp_forward.__get__(mlp)
            changed += 1
    return changed
