"""Model-level levers: the loader's patch embedding as one matrix product, grouped per-image attention in the vision
tower and fused RMSNorm in the language model (each must give the stock transformers results, to float rounding; the
RMSNorm bit for bit), and the attention kernels our CUDA forward passes allow."""
from __future__ import annotations

import torch

from qwen3vl_integrations.core.vision_levers import use_grouped_vision_attention, use_linear_patch_embed


def test_linear_patch_embed_matches_conv3d():
    from transformers.models.qwen3_vl.modeling_qwen3_vl import Qwen3VLVisionPatchEmbed

    config = type("C", (), dict(patch_size=16, temporal_patch_size=2, in_channels=3, hidden_size=48))()
    torch.manual_seed(0)
    module = Qwen3VLVisionPatchEmbed(config).eval()
    backbone = torch.nn.Module()
    backbone.visual = torch.nn.Module()
    backbone.visual.patch_embed = module
    pixels = torch.randn(37, 3 * 2 * 16 * 16)
    with torch.no_grad():
        expected = module(pixels)
        assert use_linear_patch_embed(backbone)
        got = module(pixels)
    assert got.shape == expected.shape == (37, 48)
    assert (got - expected).abs().max() <= 1e-5
    assert module.proj.weight.data_ptr() == module.proj.weight.view(48, -1).data_ptr()  # shared, not copied
    del module.forward  # the original Conv3d path comes back
    with torch.no_grad():
        assert torch.equal(module(pixels), expected)


def test_linear_patch_embed_skips_other_models():
    assert not use_linear_patch_embed(torch.nn.Linear(2, 2))


def _stock(model):
    for module in model.modules():
        vars(module).pop("forward", None)


def test_grouped_vision_attention_matches_stock(tiny_embedding_path):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_embedding_path), dtype=torch.float32, attn_implementation="sdpa").eval()
    _stock(model)
    # Runs of equal chunks (three 6x6 images, a 4-group video) between single odd sizes.
    grid = torch.tensor([[1, 6, 6], [1, 6, 6], [1, 6, 6], [1, 4, 8], [4, 4, 6], [1, 6, 6], [1, 2, 2]])
    torch.manual_seed(0)
    pixels = torch.randn(int(grid.prod(1).sum()), 3 * 2 * 16 * 16)
    with torch.no_grad():
        expected = model.visual(pixels, grid_thw=grid)
        assert use_grouped_vision_attention(model) == model.config.vision_config.depth
        got = model.visual(pixels, grid_thw=grid)
    assert (got.pooler_output - expected.pooler_output).abs().max() <= 1e-6
    for a, b in zip(got.deepstack_features, expected.deepstack_features):
        assert (a - b).abs().max() <= 1e-6
    _stock(model)
    with torch.no_grad():
        assert torch.equal(model.visual(pixels, grid_thw=grid).pooler_output, expected.pooler_output)


def test_grouped_vision_attention_leaves_flash_attention_alone(tiny_embedding_path):
    from transformers import AutoModel

    model = AutoModel.from_pretrained(str(tiny_embedding_path), dtype=torch.float32, attn_implementation="sdpa")
    _stock(model)
    for module in model.visual.modules():
        if getattr(module, "config", None) is not None and type(module).__name__.endswith("VisionAttention"):
            module.config._attn_implementation = "flash_attention_2"
    assert use_grouped_vision_attention(model) == 0
    assert use_grouped_vision_attention(torch.nn.Linear(2, 2)) == 0


def test_loaded_models_use_the_levers(tiny_embedder):
    backbone = tiny_embedder.load().backbone
    visual = backbone.visual
    assert "forward" in vars(visual.patch_embed)
    assert all("forward" in vars(block.attn) for block in visual.blocks)
    assert all("forward" in vars(layer.input_layernorm) and "forward" in vars(layer.self_attn.q_norm)
               for layer in backbone.language_model.layers)


def test_fused_rms_norm_is_bit_identical(tiny_embedding_path):
    from transformers import AutoModel

    from qwen3vl_integrations.core.rms_norm import use_fused_rms_norm

    for dtype in (torch.float32, torch.bfloat16):
        model = AutoModel.from_pretrained(str(tiny_embedding_path), dtype=dtype, attn_implementation="sdpa").eval()
        _stock(model)
        norms = [m for m in model.modules() if type(m).__name__ == "Qwen3VLTextRMSNorm"]
        layers = model.config.text_config.num_hidden_layers
        assert len(norms) == 4 * layers + 1  # input, post-attention, q and k norms per layer; the final norm
        torch.manual_seed(0)
        for norm in norms:  # stock weights are all ones, which would hide a misplaced weight product
            norm.weight.data.normal_()
        ids = torch.randint(0, model.config.text_config.vocab_size, (2, 23))
        with torch.inference_mode():
            expected = model.language_model(input_ids=ids).last_hidden_state
            assert use_fused_rms_norm(model) == len(norms)
            got = model.language_model(input_ids=ids).last_hidden_state
            x = torch.randn(3, 5, norms[0].weight.shape[0], dtype=dtype) * 4
            assert torch.equal(norms[0](x), type(norms[0]).forward(norms[0], x))
        assert torch.equal(got, expected), dtype
        _stock(model)
        assert "forward" not in vars(norms[0])


def test_fused_rms_norm_skips_other_norms():
    from qwen3vl_integrations.core.rms_norm import use_fused_rms_norm

    model = torch.nn.Sequential(torch.nn.LayerNorm(4), torch.nn.RMSNorm(4))
    assert use_fused_rms_norm(model) == 0


def test_cuda_forwards_leave_cudnn_attention_out():
    """cuDNN attention builds a plan per new batch shape; our CUDA forward passes run without it, others untouched."""
    from qwen3vl_integrations.core import runner

    before = torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled()
    with runner.attention_backends(torch.device("cuda")):
        assert not torch.backends.cuda.cudnn_sdp_enabled()
        assert torch.backends.cuda.flash_sdp_enabled() and torch.backends.cuda.mem_efficient_sdp_enabled()
        assert torch.backends.cuda.math_sdp_enabled()
    assert (torch.backends.cuda.cudnn_sdp_enabled(), torch.backends.cuda.mem_efficient_sdp_enabled()) == before
    with runner.attention_backends(torch.device("cpu")):
        assert torch.backends.cuda.cudnn_sdp_enabled() == before[0]


def test_indexed_deepstack_matches_stock(tiny_embedding_path):
    """Deep-stacked vision features added at integer positions found once per pass: the stock values, bit for bit."""
    from transformers import AutoModel

    from qwen3vl_integrations.core.vision_levers import use_indexed_deepstack

    model = AutoModel.from_pretrained(str(tiny_embedding_path), dtype=torch.float32).eval()
    language_model = model.language_model
    torch.manual_seed(0)
    hidden = torch.randn(3, 7, 64)
    mask = torch.rand(3, 7) > 0.5
    embeds = [torch.randn(int(mask.sum()), 64) for _ in range(2)]
    expected = [language_model._deepstack_process(hidden, mask, e) for e in embeds]
    assert use_indexed_deepstack(model)
    got = [language_model._deepstack_process(hidden, mask, e) for e in embeds]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    assert language_model.visual_positions(mask) is language_model.visual_positions(mask)  # found once per mask
    del language_model._deepstack_process  # the stock step comes back
    assert not use_indexed_deepstack(torch.nn.Linear(2, 2))
