"""Tests of qwen3vl_integrations.testing (random checkpoints) and of the shared media fixture."""
from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from qwen3vl_integrations import testing as qt

KINDS = ("embedding", "reranker")
TEMPLATE_EXPECTED = (
    "<|im_start|>system\nX<|im_end|>\n<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>hi<|im_end|>\n"
    "<|im_start|>assistant\n"
)
MESSAGES = [
    {"role": "system", "content": "X"},
    {"role": "user", "content": [{"type": "image", "image": "unused.png"}, {"type": "text", "text": "hi"}]},
]


@pytest.fixture(scope="module")
def paths(tiny_embedding_path, tiny_reranker_path):
    return {"embedding": tiny_embedding_path, "reranker": tiny_reranker_path}


@pytest.fixture(scope="module")
def processors(paths):
    from transformers import AutoProcessor

    return {kind: AutoProcessor.from_pretrained(path) for kind, path in paths.items()}


def _digests(folder: Path) -> dict[str, str]:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(Path(folder).iterdir())}


# --- loading -------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_loads_offline_with_no_missing_or_unexpected_keys(paths, kind):
    from transformers import (
        AutoModel,
        AutoProcessor,
        Qwen2VLImageProcessor,
        Qwen3VLForConditionalGeneration,
        Qwen3VLModel,
        Qwen3VLProcessor,
        Qwen3VLVideoProcessor,
    )

    path = paths[kind]
    assert sorted(p.name for p in path.iterdir()) == [
        "chat_template.jinja",
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "processor_config.json",
        "tokenizer.json",
        "tokenizer_config.json",
    ]
    processor = AutoProcessor.from_pretrained(path)
    assert isinstance(processor, Qwen3VLProcessor)
    assert isinstance(processor.image_processor, Qwen2VLImageProcessor)
    assert isinstance(processor.video_processor, Qwen3VLVideoProcessor)
    for sub in (processor.image_processor, processor.video_processor):
        assert (sub.patch_size, sub.temporal_patch_size, sub.merge_size) == (16, 2, 2)

    model, info = AutoModel.from_pretrained(path, output_loading_info=True)
    assert type(model) is Qwen3VLModel
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert model.dtype == torch.float32

    full, info = Qwen3VLForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"] and not info["mismatched_keys"]
    assert full.config.tie_word_embeddings and full.config.text_config.tie_word_embeddings
    assert full.lm_head.weight.data_ptr() == full.model.language_model.embed_tokens.weight.data_ptr()
    # ENVIRONMENT.md §4.1: 276,704 parameters for a tokenizer of 769..832 entries.
    assert full.num_parameters() == 276_704 == qt.checkpoint_num_parameters(path)


def test_padding_side_is_settable(paths):
    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(paths["reranker"], padding_side="left")
    assert processor.tokenizer.padding_side == "left"


# --- tokenizer -----------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_answer_and_role_words_are_single_tokens(processors, kind):
    tok = processors[kind].tokenizer
    for word in ("yes", "no", "assistant", "system", "user", "\n"):
        ids = tok.encode(word, add_special_tokens=False)
        assert len(ids) == 1, (word, ids)
        assert tok.decode(ids) == word
    assert tok.convert_tokens_to_ids("yes") != tok.convert_tokens_to_ids("no")
    # The reranker suffix <|im_end|> \n <|im_start|> assistant \n is 5 tokens, as in the real model.
    suffix = tok.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    assert len(suffix) == 5
    assert suffix[0] == tok.convert_tokens_to_ids("<|im_end|>")
    assert suffix[2] == tok.convert_tokens_to_ids("<|im_start|>")


def test_embedding_tokenizer_appends_endoftext_and_reranker_does_not(processors):
    emb, rr = processors["embedding"].tokenizer, processors["reranker"].tokenizer
    eot = emb.convert_tokens_to_ids("<|endoftext|>")
    assert eot == rr.convert_tokens_to_ids("<|endoftext|>")
    assert emb("a").input_ids[-1] == eot
    assert len(emb("a").input_ids) == 2
    assert rr("a").input_ids[-1] != eot
    assert rr("a").input_ids == emb("a").input_ids[:-1]

    # Through the processor too, and truncation keeps the final <|endoftext|> (the chat suffix is cut instead).
    text = processors["embedding"].apply_chat_template(
        [{"role": "user", "content": [{"type": "text", "text": "red car " * 20}]}],
        tokenize=False,
        add_generation_prompt=True,
    )
    full = processors["embedding"](text=[text]).input_ids[0]
    assert full[-1] == eot
    cut = processors["embedding"](text=[text], truncation=True, max_length=10).input_ids[0]
    assert len(cut) == 10 and cut[-1] == eot
    newline = rr.encode("\n", add_special_tokens=False)
    assert processors["reranker"](text=[text]).input_ids[0][-1:] == newline


@pytest.mark.parametrize("kind", KINDS)
def test_special_tokens_are_contiguous_in_the_real_order(processors, kind):
    tok = processors[kind].tokenizer
    ids = [tok.convert_tokens_to_ids(t) for t in qt.SPECIAL_TOKENS + qt.NON_SPECIAL_ADDED_TOKENS]
    assert ids == list(range(ids[0], ids[0] + 26))
    assert ids[-1] == len(tok) - 1
    assert set(tok.convert_tokens_to_ids(list(qt.SPECIAL_TOKENS))) <= set(tok.all_special_ids)
    assert not set(ids[14:]) & set(tok.all_special_ids)
    assert tok.pad_token == "<|endoftext|>" and tok.eos_token == "<|im_end|>"
    assert tok.bos_token is None and tok.unk_token is None
    # Added tokens are never split.
    assert tok.encode("<|image_pad|><think>", add_special_tokens=False) == [ids[12], ids[24]]


@pytest.mark.parametrize("kind", KINDS)
def test_config_ids_equal_tokenizer_ids(paths, processors, kind):
    from transformers import AutoConfig

    config = AutoConfig.from_pretrained(paths[kind])
    tok = processors[kind].tokenizer
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>")
    assert config.video_token_id == tok.convert_tokens_to_ids("<|video_pad|>")
    assert config.vision_start_token_id == tok.convert_tokens_to_ids("<|vision_start|>")
    assert config.vision_end_token_id == tok.convert_tokens_to_ids("<|vision_end|>")
    tc = config.text_config
    assert tc.bos_token_id == tc.pad_token_id == tok.pad_token_id == tok.convert_tokens_to_ids("<|endoftext|>")
    assert tc.eos_token_id == tok.eos_token_id == tok.convert_tokens_to_ids("<|im_end|>")
    assert tc.vocab_size >= len(tok) and tc.vocab_size % 64 == 0 and tc.vocab_size - len(tok) < 64
    assert config.vision_config.out_hidden_size == tc.hidden_size
    assert sum(tc.rope_parameters["mrope_section"]) == tc.head_dim // 2


# --- processor and chat template -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_chat_template_renders_the_compact_layout(processors, kind):
    processor = processors[kind]
    assert processor.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == TEMPLATE_EXPECTED
    assert processor.tokenizer.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True) == (
        TEMPLATE_EXPECTED
    )
    video = [{"role": "user", "content": [{"type": "video", "video": "v.mp4"}, {"type": "image", "image": "i.png"}]}]
    assert processor.apply_chat_template(video, tokenize=False, add_vision_id=True) == (
        "<|im_start|>user\nVideo 1: <|vision_start|><|video_pad|><|vision_end|>"
        "Picture 1: <|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
    )


def test_processor_image_grid_for_224_square(processors):
    from PIL import Image

    processor = processors["embedding"]
    image = Image.new("RGB", (224, 224), (200, 10, 10))
    text = processor.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    out = processor(text=[text], images=[image], do_resize=False, return_tensors="pt")
    assert out["image_grid_thw"].tolist() == [[1, 14, 14]]
    assert tuple(out["pixel_values"].shape) == (196, 3 * 2 * 16 * 16)
    image_pad = processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")
    assert int((out["input_ids"] == image_pad).sum()) == 196 // 4
    assert out["input_ids"][0, -1].item() == processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")


# --- model behaviour -----------------------------------------------------------------------------------------------


def test_pooled_hidden_state_matches_between_model_classes(paths, processors, media_dir):
    """ENVIRONMENT.md §4.5: both ways of loading the embedding checkpoint give the same last hidden state."""
    from PIL import Image
    from transformers import Qwen3VLForConditionalGeneration, Qwen3VLModel

    processor = processors["embedding"]
    text = processor.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    # red.png is 160x120; with do_resize=False the sides must be multiples of 32: 160x128 is 10x8 patches, 20 tokens.
    image = Image.open(media_dir / "red.png").convert("RGB").resize((160, 128))
    inputs = processor(text=[text], images=[image], do_resize=False, return_tensors="pt")
    assert inputs["image_grid_thw"].tolist() == [[1, 8, 10]]

    full = Qwen3VLForConditionalGeneration.from_pretrained(paths["embedding"]).eval()
    base = Qwen3VLModel.from_pretrained(paths["embedding"]).eval()
    with torch.no_grad():
        out_full = full(**inputs, output_hidden_states=True)
        out_base = base(**inputs)
    pooled_full = out_full.hidden_states[-1][:, -1]
    pooled_base = out_base.last_hidden_state[:, -1]
    assert pooled_full.shape == (1, 64)
    assert torch.isfinite(pooled_base).all()
    torch.testing.assert_close(pooled_full, pooled_base, atol=1e-5, rtol=0)

    # The yes/no head: sigmoid(h . (W_yes - W_no)) equals sigmoid(logit_yes - logit_no).
    tok = processor.tokenizer
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    w = full.lm_head.weight.detach()
    head = torch.sigmoid(pooled_full @ (w[yes] - w[no]))
    logits = out_full.logits[:, -1]
    torch.testing.assert_close(head, torch.sigmoid(logits[:, yes] - logits[:, no]), atol=1e-6, rtol=0)


# --- determinism ---------------------------------------------------------------------------------------------------


def test_builds_are_byte_identical(tmp_path, tiny_embedding_path, tiny_reranker_path):
    a = qt.build_tiny_checkpoint(tmp_path / "a", kind="embedding")
    b = qt.build_tiny_checkpoint(tmp_path / "b", kind="embedding", seed=0)
    assert a == tmp_path / "a"
    assert _digests(a) == _digests(b) == _digests(tiny_embedding_path)
    # The two kinds differ only in the tokenizer's post-processor.
    emb, rr = _digests(tiny_embedding_path), _digests(tiny_reranker_path)
    assert {k for k in emb if emb[k] != rr[k]} == {"tokenizer.json"}
    # Another seed changes the weights only.
    c = _digests(qt.build_tiny_checkpoint(tmp_path / "c", kind="embedding", seed=1))
    assert {k for k in emb if emb[k] != c[k]} == {"model.safetensors"}


def test_build_leaves_global_rng_untouched(tmp_path):
    torch.manual_seed(1234)
    expected = torch.rand(3)
    torch.manual_seed(1234)
    qt.build_tiny_checkpoint(tmp_path / "x", kind="reranker", seed=5)
    torch.testing.assert_close(torch.rand(3), expected)


def test_invalid_arguments(tmp_path):
    with pytest.raises(ValueError, match="kind"):
        qt.build_tiny_checkpoint(tmp_path / "x", kind="classifier")
    with pytest.raises(ValueError, match="size"):
        qt.build_random_checkpoint(tmp_path / "x", size="7b")
    with pytest.raises(ValueError, match="size"):
        qt.random_checkpoint_config("huge")
    with pytest.raises(ValueError, match="dtype"):
        qt.build_random_checkpoint(tmp_path / "x", size="small", dtype="int8")
    assert not (tmp_path / "x").exists()


# --- larger random checkpoints -------------------------------------------------------------------------------------


def test_small_checkpoint_builds_loads_and_runs(tmp_path, processors, media_dir):
    from PIL import Image
    from transformers import AutoModel, Qwen3VLForConditionalGeneration, Qwen3VLModel

    path = qt.build_random_checkpoint(tmp_path / "small", size="small", kind="reranker")
    full, info = Qwen3VLForConditionalGeneration.from_pretrained(path, output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert full.dtype == torch.bfloat16
    assert full.num_parameters() == 35_605_760 == qt.checkpoint_num_parameters(path)
    tc, vc = full.config.text_config, full.config.vision_config
    assert (tc.hidden_size, tc.num_hidden_layers, tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim) == (
        512, 8, 8, 4, 64,
    )
    assert tc.intermediate_size == 1536 and tc.rope_parameters["mrope_section"] == [12, 10, 10]
    assert (vc.depth, vc.hidden_size, vc.intermediate_size, vc.num_heads, vc.out_hidden_size) == (4, 256, 1024, 4, 512)
    assert list(vc.deepstack_visual_indexes) == [1, 2, 3]
    assert full.config.tie_word_embeddings

    from transformers import AutoProcessor

    processor = AutoProcessor.from_pretrained(path)
    assert processor.tokenizer("a").input_ids == processors["reranker"].tokenizer("a").input_ids
    text = processor.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    inputs = processor(
        text=[text],
        images=[Image.open(media_dir / "blue.jpg").convert("RGB").resize((64, 64))],  # 4x4 patches: fast in bf16
        do_resize=False,
        return_tensors="pt",
    )
    base = AutoModel.from_pretrained(path)
    assert type(base) is Qwen3VLModel
    with torch.no_grad():
        hidden = base(**inputs).last_hidden_state
    assert hidden.shape[-1] == 512 and torch.isfinite(hidden.float()).all()


def test_2b_config_matches_the_real_architecture():
    from transformers import Qwen3VLForConditionalGeneration

    config = qt.random_checkpoint_config("2b")
    tc, vc = config.text_config, config.vision_config
    assert tc.vocab_size == 151_936
    assert (tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers) == (2048, 6144, 28)
    assert (tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim) == (16, 8, 128)
    assert tc.max_position_embeddings == 262_144 and tc.rms_norm_eps == 1e-6 and tc.hidden_act == "silu"
    assert tc.rope_parameters == {
        "rope_type": "default",
        "rope_theta": 5000000.0,
        "mrope_section": [24, 20, 20],
        "mrope_interleaved": True,
    }
    assert config.tie_word_embeddings and tc.tie_word_embeddings
    assert (vc.depth, vc.hidden_size, vc.intermediate_size, vc.num_heads) == (24, 1024, 4096, 16)
    assert (vc.patch_size, vc.spatial_merge_size, vc.temporal_patch_size) == (16, 2, 2)
    assert vc.out_hidden_size == 2048 and vc.num_position_embeddings == 2304
    assert list(vc.deepstack_visual_indexes) == [5, 11, 17] and vc.hidden_act == "gelu_pytorch_tanh"
    tok = qt.build_tokenizer("embedding")
    assert config.image_token_id == tok.convert_tokens_to_ids("<|image_pad|>") < tc.vocab_size
    # Parameter count without allocating any weights: REFERENCE.md §8 gives 2,127,532,032.
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    assert model.num_parameters() == 2_127_532_032
    assert sum(p.numel() for p in model.model.visual.parameters()) == 406_957_056


def test_tiny_config_values():
    config = qt.random_checkpoint_config("tiny")
    tc, vc = config.text_config, config.vision_config
    assert (tc.hidden_size, tc.intermediate_size, tc.num_hidden_layers) == (64, 128, 2)
    assert (tc.num_attention_heads, tc.num_key_value_heads, tc.head_dim) == (4, 2, 16)
    assert tc.rope_parameters["mrope_section"] == [4, 2, 2] and tc.rope_parameters["mrope_interleaved"] is True
    assert tc.vocab_size == 832 and tc.max_position_embeddings == 4096
    assert (vc.depth, vc.hidden_size, vc.intermediate_size, vc.num_heads, vc.out_hidden_size) == (2, 32, 64, 2, 64)
    assert vc.num_position_embeddings == 256 and list(vc.deepstack_visual_indexes) == [0, 1]
    deeper = qt.random_checkpoint_config("tiny", text_layers=3)
    assert deeper.text_config.num_hidden_layers == 3 and deeper.vision_config.to_dict() == vc.to_dict()
    assert qt.random_checkpoint_config("tiny").text_config.num_hidden_layers == 2  # the size itself is unchanged


# --- command line --------------------------------------------------------------------------------------------------


def test_cli_builds_a_byte_identical_tiny_checkpoint(tmp_path, tiny_embedding_path):
    """Runs in a fresh interpreter, so this also checks determinism across processes (fresh BPE training)."""
    out = tmp_path / "cli-tiny"
    env = dict(os.environ, HF_HUB_OFFLINE="1", TRANSFORMERS_OFFLINE="1")
    proc = subprocess.run(
        [sys.executable, "-m", "qwen3vl_integrations.testing", "build", str(out), "--kind", "embedding",
         "--size", "tiny", "--seed", "0"],
        capture_output=True, text=True, timeout=300, env=env,
    )
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.strip().splitlines()
    assert lines == [str(out), "parameters: 276,704"]
    assert _digests(out) == _digests(tiny_embedding_path)


def test_cli_help_explains_every_option(capsys):
    with pytest.raises(SystemExit) as exc:
        qt.main(["build", "--help"])
    assert exc.value.code == 0
    text = capsys.readouterr().out
    for option in ("PATH", "--kind", "--size", "--seed", "--dtype", "embedding", "reranker", "tiny", "small", "2b"):
        assert option in text
    with pytest.raises(SystemExit) as exc:
        qt.main(["build", str("unused"), "--kind", "nope"])
    assert exc.value.code == 2


# --- media fixture -------------------------------------------------------------------------------------------------


def test_media_dir_contents(media_dir):
    import av
    from PIL import Image, UnidentifiedImageError

    expected = {
        "red.png": ((160, 120), "RGB"),
        "blue.jpg": ((224, 224), "RGB"),
        "wide.png": ((300, 100), "RGB"),
        "rgba.png": ((64, 64), "RGBA"),
        "gray.png": ((80, 60), "L"),
    }
    for name, (size, mode) in expected.items():
        with Image.open(media_dir / name) as im:
            assert (im.size, im.mode) == (size, mode), name
    with Image.open(media_dir / "rgba.png") as im:
        alpha = im.getchannel("A")
        assert alpha.getextrema() == (0, 255)
    assert (media_dir / "doc.txt").read_text(encoding="utf-8").strip()
    with pytest.raises(UnidentifiedImageError):
        Image.open(media_dir / "broken.png")

    with av.open(str(media_dir / "clip.mp4")) as container:
        stream = container.streams.video[0]
        frames = [f.to_ndarray(format="rgb24") for f in container.decode(stream)]
        assert stream.codec_context.name == "h264"
        duration = float(container.duration / av.time_base)
    assert len(frames) == 16
    assert frames[0].shape == (64, 96, 3)
    assert abs(duration - 2.0) < 0.2
    assert not (frames[0] == frames[-1]).all()
