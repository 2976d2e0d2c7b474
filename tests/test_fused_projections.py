"""Projections that read the same input joined into one matrix product (core/fused_projections.py,
core/text_attention.py): the joined weight is the only copy, the model computes the same vectors and scores with
the switch on and off (bit for bit on CPU), the joined path is the one taken, and it launches fewer kernels."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from benchmarks.operations import OperationCount
from qwen3vl_integrations import Qwen3VLEmbedder, Qwen3VLReranker
from qwen3vl_integrations.core import fused_projections
from qwen3vl_integrations.core.fused_projections import join_linears, use_fused_gate_up
from qwen3vl_integrations.core.rms_norm import use_fused_rms_norm
from qwen3vl_integrations.core.text_attention import _query_key_norm_weight, queries_keys_values, use_text_attention


def _linears(*rows: int, bias: bool = False, width: int = 8) -> list[torch.nn.Linear]:
    torch.manual_seed(sum(rows))
    return [torch.nn.Linear(width, n, bias=bias) for n in rows]


def _owner(*layers: torch.nn.Module) -> tuple[torch.nn.Module, tuple[str, ...]]:
    owner = torch.nn.Module()
    for i, layer in enumerate(layers):
        owner.add_module(f"part{i}", layer)
    return owner, tuple(f"part{i}" for i in range(len(layers)))


@pytest.mark.parametrize("bias", [False, True])
def test_joined_weight_is_the_only_copy_and_computes_the_same(bias):
    layers = _linears(6, 2, 2, bias=bias)
    owner, children = _owner(*layers)
    before = {k: v.clone() for k, v in owner.state_dict().items()}
    x = torch.randn(3, 5, 8)
    expected = torch.cat([layer(x) for layer in layers], dim=-1)
    assert join_linears(owner, "qkv", children)
    assert owner.qkv_weight.shape == (10, 8) and (owner.qkv_bias is None) != bias
    assert fused_projections.joined_rows(owner, "qkv") == (6, 2, 2)
    storage = owner.qkv_weight.untyped_storage().data_ptr()
    for layer in layers:  # views of the joined weight's rows, still parameters
        assert isinstance(layer.weight, torch.nn.Parameter)
        assert layer.weight.untyped_storage().data_ptr() == storage
    # The state dict is unchanged: same keys (the joined buffers are not persistent), same values.
    after = owner.state_dict()
    assert after.keys() == before.keys()
    assert all(torch.equal(after[k], before[k]) for k in before)
    weight, joined_bias = fused_projections.joined_weights(owner, "qkv")
    assert weight is owner.qkv_weight and joined_bias is owner.qkv_bias
    # The same dot products; a BLAS may still run a product of a few rows another way (on an AVX-512 CPU, 2 rows
    # of width 8 differ from 10 in the last bit). The model-level tests below compare bit for bit.
    joined = torch.nn.functional.linear(x, weight, joined_bias)
    torch.testing.assert_close(joined, expected, rtol=1e-6, atol=1e-6)
    assert torch.equal(torch.cat([layer(x) for layer in layers], dim=-1), expected)


@pytest.mark.parametrize("replaced", ["weight", "bias"])
def test_a_replaced_weight_or_bias_is_no_longer_read_joined(replaced):
    layers = _linears(4, 2, bias=True)
    owner, children = _owner(*layers)
    assert join_linears(owner, "joined", children)
    assert fused_projections.joined_weights(owner, "joined") is not None
    setattr(layers[1], replaced, torch.nn.Parameter(getattr(layers[1], replaced).detach().clone()))
    assert fused_projections.joined_weights(owner, "joined") is None
    # Also a layer taken away, and a weight that is no longer a parameter.
    owner, children = _owner(*_linears(4, 2))
    assert join_linears(owner, "joined", children)
    del owner.part1
    assert fused_projections.joined_weights(owner, "joined") is None
    owner, children = _owner(*_linears(4, 2))
    assert join_linears(owner, "joined", children)
    weight = owner.part0.weight.detach()
    del owner.part0.weight
    owner.part0.weight = weight
    assert fused_projections.joined_weights(owner, "joined") is None


def test_layers_that_cannot_be_joined_are_left_alone():
    class QuantizedLinear(torch.nn.Linear):  # as bitsandbytes' layers subclass nn.Linear
        pass

    mixed_bias = [torch.nn.Linear(8, 4, bias=True), torch.nn.Linear(8, 4, bias=False)]
    mixed_dtype = [torch.nn.Linear(8, 4), torch.nn.Linear(8, 4).to(torch.bfloat16)]
    subclass = [QuantizedLinear(8, 4), torch.nn.Linear(8, 4)]
    widths = [torch.nn.Linear(8, 4), torch.nn.Linear(6, 4)]
    with torch.device("meta"):
        meta = [torch.nn.Linear(8, 4), torch.nn.Linear(8, 4)]
    for layers in (mixed_bias, mixed_dtype, subclass, widths, meta, []):
        owner, children = _owner(*layers)
        weights = [layer.weight for layer in layers]
        assert not join_linears(owner, "joined", children)
        assert all(layer.weight is w for layer, w in zip(layers, weights))
        assert not hasattr(owner, "joined_weight") and fused_projections.joined_weights(owner, "joined") is None
    owner, children = _owner(torch.nn.Linear(8, 4))
    assert not join_linears(owner, "joined", (*children, "missing"))


def test_loaded_models_run_joined_projections(tiny_embedder):
    backbone = tiny_embedder.load().backbone
    for layer in backbone.language_model.layers:
        attention, mlp = layer.self_attn, layer.mlp
        assert attention.qkv_weight.untyped_storage().data_ptr() == \
            attention.v_proj.weight.untyped_storage().data_ptr()
        heads = _query_key_norm_weight(attention).shape[0]
        assert heads * attention.head_dim == attention.q_proj.out_features + attention.k_proj.out_features
        assert mlp.gate_up_weight.untyped_storage().data_ptr() == mlp.up_proj.weight.untyped_storage().data_ptr()
        assert "forward" in vars(mlp)
    # Installing twice does not join twice: a second call finds the layers joined.
    joined = [(layer.self_attn.qkv_weight, layer.mlp.gate_up_weight) for layer in backbone.language_model.layers]
    assert use_text_attention(backbone) == len(backbone.language_model.layers)
    assert use_fused_gate_up(backbone) == len(backbone.language_model.layers)
    assert all(layer.self_attn.qkv_weight is qkv and layer.mlp.gate_up_weight is gate_up
               for layer, (qkv, gate_up) in zip(backbone.language_model.layers, joined, strict=True))


def _language_model(path, dtype: torch.dtype, random_norms: bool = True):
    """The tiny checkpoint's model with this package's attention and RMSNorm (norm weights random: the stock ones,
    all ones, would hide a misplaced product)."""
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(path), dtype=dtype, attn_implementation="sdpa").eval()
    model.requires_grad_(False)
    if random_norms:
        torch.manual_seed(0)
        for name, t in model.language_model.named_parameters():
            if "norm" in name:
                t.normal_()
    use_fused_rms_norm(model)
    assert use_text_attention(model) == len(model.language_model.layers)
    return model


def _inputs(attention, dtype):
    torch.manual_seed(1)
    hidden = (torch.randn(2, 9, attention.q_proj.in_features) * 3).to(dtype)
    angles = torch.randn(2, 9, attention.head_dim // 2) * 20
    cos, sin = (f(torch.cat([angles, angles], -1)).to(dtype) for f in (torch.cos, torch.sin))
    return hidden, cos, sin


def _projections(attention, inputs, on: bool, monkeypatch) -> tuple[tuple[torch.Tensor, ...], int]:
    monkeypatch.setattr(fused_projections, "FUSED_PROJECTIONS", on)
    with torch.inference_mode(), OperationCount(scopes=["call"]) as count:
        out = queries_keys_values(attention, *inputs)
    return out, count.total("call")


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_attention_projections_are_the_same_in_fewer_operations(tiny_embedding_path, dtype, monkeypatch):
    """One layer's queries, keys and values, joined and separate: equal bit for bit, and the joined path runs fewer
    tensor operations (each a kernel launch on a GPU)."""
    attention = _language_model(tiny_embedding_path, dtype).language_model.layers[0].self_attn
    inputs = _inputs(attention, dtype)
    (joined, joined_ops), (separate, separate_ops) = (_projections(attention, inputs, on, monkeypatch)
                                                      for on in (True, False))
    for got, expected in zip(joined, separate, strict=True):
        assert got.shape == expected.shape and got.dtype == dtype
        assert torch.equal(got, expected)
    # Separate: 3 products, 2 norms of 2 ops, 2 rotations of 5; joined: 1 product, 1 norm, 1 rotation.
    assert joined_ops <= separate_ops - 8, (joined_ops, separate_ops)


def test_changed_weights_are_read_where_they_are(tiny_embedding_path, monkeypatch):
    """A norm weight changed in place is used at once; a projection weight replaced, or the model moved to another
    dtype (which copies each tensor apart), sends the layer back to the separate products, with their values."""
    model = _language_model(tiny_embedding_path, torch.float32)
    attention = model.language_model.layers[0].self_attn
    inputs = _inputs(attention, torch.float32)

    def check_equal(joined_expected: bool) -> None:
        (joined, joined_ops), (separate, separate_ops) = (_projections(attention, inputs, on, monkeypatch)
                                                          for on in (True, False))
        assert (joined_ops < separate_ops) == joined_expected
        assert all(torch.equal(a, b) for a, b in zip(joined, separate, strict=True))

    check_equal(True)
    with torch.no_grad():
        attention.k_norm.weight.mul_(-2)
        attention.q_proj.weight.add_(1)  # a view: the joined weight changes with it
    check_equal(True)
    attention.v_proj.weight = torch.nn.Parameter(attention.v_proj.weight.detach().clone() * 3, requires_grad=False)
    check_equal(False)
    mlp = model.language_model.layers[1].mlp
    x = torch.randn(3, mlp.gate_proj.in_features)
    with torch.inference_mode():
        joined = mlp(x)
        model.to(torch.float64)
        monkeypatch.setattr(fused_projections, "FUSED_PROJECTIONS", False)
        expected = mlp(x.double())
        monkeypatch.setattr(fused_projections, "FUSED_PROJECTIONS", True)
        assert torch.equal(mlp(x.double()), expected)
    # The separate products, as the weights are no longer rows of the joined one.
    assert fused_projections.joined_weights(mlp, "gate_up") is None
    assert torch.allclose(joined.double(), expected, atol=1e-5)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_embeddings_and_scores_are_the_same_with_the_switch_on_and_off(tiny_embedding_path, tiny_reranker_path,
                                                                      tiny_core_kwargs, lever_outputs, monkeypatch,
                                                                      dtype):
    """Vectors of texts and images, and scores with and without the cached query part (which also runs the pooled
    last layer's joined key/value product), bit for bit; and the separate projections are not called when on."""
    tiny_core_kwargs["dtype"] = dtype
    embedder = Qwen3VLEmbedder(model_name_or_path=str(tiny_embedding_path), batch_size=3, **tiny_core_kwargs)
    reranker = Qwen3VLReranker(model_name_or_path=str(tiny_reranker_path), batch_size=2, **tiny_core_kwargs)
    calls = []
    hooks = [module.register_forward_hook(lambda *args: calls.append(1))
             for model in (embedder, reranker) for layer in model.load().backbone.language_model.layers
             for module in (layer.self_attn.k_proj, layer.self_attn.v_proj, layer.mlp.gate_proj)]
    try:
        monkeypatch.setattr(fused_projections, "FUSED_PROJECTIONS", False)
        expected = lever_outputs(embedder, reranker)
        assert calls
        calls.clear()
        monkeypatch.setattr(fused_projections, "FUSED_PROJECTIONS", True)
        got = lever_outputs(embedder, reranker)
        assert not calls
    finally:
        for hook in hooks:
            hook.remove()
    for a, b in zip(got, expected, strict=True):
        assert np.array_equal(np.asarray(a), np.asarray(b))


def test_under_torch_compile_the_checks_that_read_addresses_are_skipped(tiny_embedder, monkeypatch):
    """Dynamo cannot trace tensor addresses or version counters: while compiling, the joined weights are read
    without them and the norm rows are made in the graph, with the same values."""
    attention = tiny_embedder.load().backbone.language_model.layers[0].self_attn
    cached = _query_key_norm_weight(attention)
    monkeypatch.setattr(torch.compiler, "is_compiling", lambda: True)
    monkeypatch.setattr(torch.Tensor, "data_ptr", lambda self: pytest.fail("an address was read"))
    assert fused_projections.joined_weights(attention, "qkv") is not None
    made = _query_key_norm_weight(attention)
    assert made is not cached and torch.equal(made, cached)


def test_products_are_joined_on_cpus_and_where_asked(tiny_embedding_path, monkeypatch):
    """By default the joined products run on CPUs only (eager on a GPU they measured slower); True and False apply
    everywhere."""
    assert fused_projections.FUSED_PROJECTIONS is None
    cpu, gpu, mps = torch.device("cpu"), torch.device("cuda", 0), torch.device("mps")
    assert fused_projections.joins_on(cpu) and not fused_projections.joins_on(gpu)
    assert not fused_projections.joins_on(mps)
    attention = _language_model(tiny_embedding_path, torch.float32).language_model.layers[0].self_attn
    assert fused_projections.joined_weights(attention, "qkv") is not None  # the default, on this CPU
    for setting in (True, False):
        monkeypatch.setattr(fused_projections, "FUSED_PROJECTIONS", setting)
        assert [fused_projections.joins_on(device) for device in (cpu, gpu, mps)] == [setting] * 3
        assert (fused_projections.joined_weights(attention, "qkv") is not None) is setting
