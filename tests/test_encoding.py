"""Text-only prompts are tokenised without the processor's wrapper (issue 8): the same tensors, less overhead."""
from __future__ import annotations

import pytest
import torch
from transformers import AutoProcessor

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


def test_placeholders_without_media_still_meet_the_processor_check(processor):
    with pytest.raises(ValueError, match="image"):
        encode(processor, "look: <|image_pad|>", [], [])
