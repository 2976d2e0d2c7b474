"""Prompts without videos are encoded without the processor's wrapper (issue 8): the same tensors, less overhead."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoProcessor

from qwen3vl_integrations.core import encoding
from qwen3vl_integrations.core.encoding import encode

TEXTS = [
    "<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\nhello world<|im_end|>\n",
    "",
    "NULL",
    "x\n\n  y\t<|vision_end|> «ünïcode» 数字 123",
    "<|im_start|>user\n<Instruct>: a<Query>:q?\n<Document>:\"d<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.fixture(scope="module", params=["embedding", "reranker"])
def processor(request, tiny_embedding_path, tiny_reranker_path):
    return AutoProcessor.from_pretrained(tiny_embedding_path if request.param == "embedding" else tiny_reranker_path)


@pytest.mark.parametrize("text", TEXTS)
def test_text_only_encoding_equals_the_processor(processor, text, monkeypatch):
    expected = processor(text=[text], return_tensors="pt", padding=False, truncation=False)
    calls = []
    monkeypatch.setattr(type(processor), "__call__", lambda *a, **k: calls.append(1))
    item = encode(processor, text, [], [])
    assert calls == []  # the processor wrapper is skipped
    assert torch.equal(item.input_ids, expected["input_ids"][0])
    assert torch.equal(item.mm_token_type_ids, expected["mm_token_type_ids"][0].long())
    assert item.pixel_values is None and item.pixel_values_videos is None


@pytest.mark.parametrize("text", TEXTS + ["  lead and trail  ", "<|endoftext|>", "a" * 3000, "\u200b\ufeff\x00"])
def test_token_ids_equal_the_tokenizers_call(processor, text, monkeypatch):
    """token_ids calls the Rust backend directly, with the ids of the tokenizer's own call (the embedding tokenizer
    appends <|endoftext|> through its post-processor, the reranker's nothing)."""
    from qwen3vl_integrations.core.encoding import token_ids

    tokenizer = processor.tokenizer
    expected = tokenizer([text], return_tensors="pt", padding=False, truncation=False)["input_ids"][0]
    monkeypatch.setattr(type(tokenizer), "_get_padding_truncation_strategies",
                        lambda *a, **k: pytest.fail("the tokenizer's call ran"))
    ids = token_ids(tokenizer, text)
    assert ids.dtype == torch.long and torch.equal(ids, expected)
    monkeypatch.setattr(encoding, "TOKEN_IDS_FROM_BACKEND", False)  # the switch for comparisons: the call again
    with pytest.raises(pytest.fail.Exception, match="the tokenizer's call ran"):
        token_ids(tokenizer, text)


@pytest.mark.parametrize("threads", [1, 3])
def test_token_counts_equal_the_tokenizers_call(processor, threads, monkeypatch):
    """token_counts (the batch planner's lengths) counts what the tokenizer's call without special tokens gives, in
    order, on the backend directly and, for texts long enough, in chunks on several threads."""
    from concurrent.futures import ThreadPoolExecutor

    tokenizer = processor.tokenizer
    texts = (TEXTS + ["  lead and trail  ", "<|endoftext|>", "a" * 3000, "\u200b\ufeff\x00"]) * 7
    expected = [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    monkeypatch.setattr(encoding, "COUNT_THREADS", threads)
    monkeypatch.setattr(encoding, "COUNT_CHARS_PER_THREAD", 100)
    pools = []
    monkeypatch.setattr(encoding, "ThreadPoolExecutor", lambda n: pools.append(n) or ThreadPoolExecutor(n))
    monkeypatch.setattr(type(tokenizer), "_get_padding_truncation_strategies",
                        lambda *a, **k: pytest.fail("the tokenizer's call ran"))
    assert encoding.token_counts(tokenizer, texts) == expected
    assert pools == ([] if threads == 1 else [3])
    assert encoding.token_counts(tokenizer, texts[:1]) == expected[:1] and encoding.token_counts(tokenizer, []) == []
    monkeypatch.setattr(encoding, "TOKEN_IDS_FROM_BACKEND", False)  # the switch for comparisons: the call again
    with pytest.raises(pytest.fail.Exception, match="the tokenizer's call ran"):
        encoding.token_counts(tokenizer, texts)


@pytest.mark.parametrize("setting", ["truncation", "padding", "split special tokens"])
def test_token_ids_leave_a_differently_set_backend_to_the_tokenizers_call(setting, tiny_embedding_path):
    """A backend set otherwise than the call sets it (truncation or padding on, special tokens split) goes through
    the call, which resets it: the ids stay those of the call."""
    from qwen3vl_integrations.core.encoding import token_ids

    tokenizer = AutoProcessor.from_pretrained(tiny_embedding_path).tokenizer  # its own, changed below
    text = TEXTS[0]
    expected = tokenizer([text], return_tensors="pt", padding=False, truncation=False)["input_ids"][0]
    if setting == "truncation":
        tokenizer.backend_tokenizer.enable_truncation(3)
    elif setting == "padding":
        tokenizer.backend_tokenizer.enable_padding(length=200)
    else:
        tokenizer.split_special_tokens = True
        expected = tokenizer([text], return_tensors="pt", padding=False, truncation=False)["input_ids"][0]
        tokenizer.backend_tokenizer.encode_special_tokens = False  # as the last call did not leave it
    assert torch.equal(token_ids(tokenizer, text), expected)


def test_placeholders_without_media_still_meet_the_processor_check(processor):
    with pytest.raises(ValueError, match="image"):
        encode(processor, "look: <|image_pad|>", [], [])


def _images(*sizes):
    from PIL import Image

    rng = torch.Generator().manual_seed(0)
    return [Image.frombytes("RGB", (w, h), torch.randint(0, 256, (h * w * 3,), generator=rng,
                                                          dtype=torch.uint8).numpy().tobytes()) for w, h in sizes]


IMAGE_PROMPTS = [
    ("<|im_start|>user\n<|vision_start|><|image_pad|><|vision_end|>a cat<|im_end|>\n", [(64, 96)]),
    ("sys<|vision_start|><|image_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>x\n<|endoftext|>",
     [(32, 32), (128, 64)]),
    ("<|im_start|>user\n<Query>:<|vision_start|><|image_pad|><|vision_end|>\n<Document>:"
     "<|vision_start|><|image_pad|><|vision_end|>«ü» 数字<|im_end|>\n<|im_start|>assistant\n", [(96, 32), (96, 32)]),
]


@pytest.mark.parametrize("text,sizes", IMAGE_PROMPTS)
def test_image_encoding_equals_the_processor(processor, text, sizes, monkeypatch):
    images = _images(*sizes)
    expected = processor(text=[text], images=images, do_resize=False, return_tensors="pt", padding=False,
                         truncation=False)
    calls = []
    monkeypatch.setattr(type(processor), "__call__", lambda *a, **k: calls.append(1))
    item = encode(processor, text, images, [])
    assert calls == []  # the processor wrapper is skipped
    assert torch.equal(item.input_ids, expected["input_ids"][0])
    assert torch.equal(item.mm_token_type_ids, expected["mm_token_type_ids"][0].long())
    assert int((item.mm_token_type_ids == 1).sum()) == int(expected["image_grid_thw"].prod(-1).sum()) // 4
    assert torch.equal(item.pixel_values, expected["pixel_values"])
    assert torch.equal(item.image_grid_thw, expected["image_grid_thw"])
    assert item.pixel_values_videos is None


def test_image_placeholders_that_do_not_match_the_images_still_meet_the_processor_check(processor):
    with pytest.raises(ValueError, match="image"):
        encode(processor, "<|image_pad|> and <|image_pad|>", _images((32, 32)), [])


@pytest.mark.parametrize("text,sizes", IMAGE_PROMPTS)
def test_8_bit_image_encoding_normalises_to_the_processors(processor, text, sizes):
    """With raw_pixels (the CUDA path) the patches are 8-bit and of one temporal slice, and normalise on the device
    to the processor's float patches; ids, token types and grids are unchanged."""
    from qwen3vl_integrations.core.pixels import normalize_pixels

    images = _images(*sizes)
    expected = encode(processor, text, images, [])
    item = encode(processor, text, images, [], raw_pixels=True)
    assert item.pixel_values.dtype == torch.uint8
    assert item.pixel_values.shape[1] * processor.image_processor.temporal_patch_size == expected.pixel_values.shape[1]
    assert torch.equal(normalize_pixels(processor.image_processor, item.pixel_values), expected.pixel_values)
    for key in ("input_ids", "mm_token_type_ids", "image_grid_thw"):
        assert torch.equal(getattr(item, key), getattr(expected, key))


def test_token_types_follow_the_processors_rule(processor):
    from qwen3vl_integrations.core.encoding import mm_token_types

    tokenizer = processor.tokenizer
    text = ("a<|vision_start|><|image_pad|><|image_pad|><|vision_end|>b<|vision_start|><|video_pad|><|vision_end|>"
            "<|image_pad|>c<|endoftext|>")
    ids = tokenizer([text], return_tensors="pt", add_special_tokens=False)["input_ids"][0]
    expected = torch.tensor(processor.create_mm_token_type_ids([ids.tolist()])[0])
    assert set(expected.tolist()) == {0, 1, 2}
    assert torch.equal(mm_token_types(processor, ids), expected)


def test_a_processor_without_the_vision_token_ids_is_refused():
    """Before transformers 5.10.1 the processor named them `image_ids`/`video_ids`: every token read as text, so the
    rotary positions of images and videos were wrong, silently."""
    from types import SimpleNamespace

    from qwen3vl_integrations.core.encoding import mm_token_types

    older = SimpleNamespace(image_ids=[2], video_ids=[3])
    with pytest.raises(RuntimeError, match="has no image_token_ids"):
        mm_token_types(older, torch.tensor([1, 2, 3]))


def test_patches_that_should_be_8_bit_but_are_not_are_refused(processor):
    """A float image (a tensor the processor keeps as float) asked for as 8-bit patches would reach the model
    unnormalised: encoding refuses it instead."""
    image = torch.rand(3, 32, 32)
    with pytest.raises(RuntimeError, match="8-bit"):
        encode(processor, "<|vision_start|><|image_pad|><|vision_end|>", [image], [], raw_pixels=True)
    assert encode(processor, "<|vision_start|><|image_pad|><|vision_end|>", [image], []).pixel_values is not None
