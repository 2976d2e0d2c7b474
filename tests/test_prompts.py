"""Prompts of the official implementation (REFERENCE.md §3, §4.1-4.3, §5.2-5.3), checked as exact strings.

Expected strings are written out by hand from the spec, never produced by the code under test.
"""
from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from qwen3vl_integrations.core.inputs import parse_item
from qwen3vl_integrations.core.media import MediaPolicy
from qwen3vl_integrations.core.prompts import (
    DEFAULT_QUERY_INSTRUCTION,
    EMBEDDING_DEFAULT_INSTRUCTION,
    RERANKER_DEFAULT_INSTRUCTION,
    RERANKER_SYSTEM_PROMPT,
    content_list,
    embedding_conversation,
    embedding_system_text,
    render,
    rerank_conversation,
)

POLICY = MediaPolicy(allow_remote=False)
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"
QUERY = "A woman playing with her dog on a beach at sunset."
JUDGE = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
         'Note that the answer can only be "yes" or "no".')


def expected_embedding_prompt(system: str, user: str) -> str:
    return (f"<|im_start|>system\n{system}<|im_end|>\n"
            f"<|im_start|>user\n{user}<|im_end|>\n"
            f"<|im_start|>assistant\n")


def expected_rerank_prompt(instruction: str, query: str, document: str) -> str:
    return (f"<|im_start|>system\n{JUDGE}<|im_end|>\n"
            f"<|im_start|>user\n<Instruct>: {instruction}<Query>:{query}\n<Document>:{document}<|im_end|>\n"
            f"<|im_start|>assistant\n")


@pytest.fixture(scope="module")
def processor(tiny_embedding_path):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(str(tiny_embedding_path))


@pytest.fixture(scope="module")
def pil_image():
    return Image.new("RGB", (64, 48), (10, 200, 30))


@pytest.fixture(scope="module")
def frames():
    return [Image.new("RGB", (64, 64), (i * 40, 0, 0)) for i in range(4)]


def item(raw):
    return parse_item(raw, POLICY)


# ------------------------------------------------------------------------------------------ §4.1


@pytest.mark.parametrize(
    ("instruction", "expected"),
    [
        ("Classify the news article", "Classify the news article."),
        ("  Retrieve docs  ", "Retrieve docs."),
        ("Find images?", "Find images?"),
        ("Query:", "Query:"),
        ("(see above)", "(see above)"),
        ("检索相关文档。", "检索相关文档。"),
        ("Costs in $", "Costs in $."),
        ("   ", "Represent the user's input."),
        ("", "Represent the user's input."),
        (None, "Represent the user's input."),
        # more rows of the same rule: other punctuation categories (Pd, Pf, Ps...) are kept, symbols are not
        ("Find: a-", "Find: a-"),
        ("Say \u00bbhi\u00bb", "Say \u00bbhi\u00bb"),
        ("Retrieve 42", "Retrieve 42."),
        ("Plus +", "Plus +."),
        ("Emoji \U0001F600", "Emoji \U0001F600."),
        ("\tTabbed\n", "Tabbed."),
    ],
)
def test_embedding_system_text_table(instruction, expected):
    assert embedding_system_text(instruction) == expected


def test_embedding_system_text_default_is_verbatim():
    assert EMBEDDING_DEFAULT_INSTRUCTION == "Represent the user's input."
    # A custom default is used as is (no '.' appended), and only when the instruction is empty.
    assert embedding_system_text(None, default="Embed this") == "Embed this"
    assert embedding_system_text("  ", default="Embed this") == "Embed this"
    assert embedding_system_text("Go", default="Embed this") == "Go."


def test_presets():
    assert DEFAULT_QUERY_INSTRUCTION == "Retrieve images or text relevant to the user's query."
    assert RERANKER_DEFAULT_INSTRUCTION == "Given a search query, retrieve relevant candidates that answer the query."
    assert RERANKER_SYSTEM_PROMPT == JUDGE


# ------------------------------------------------------------------------------------------ §3, §4.2


def test_content_order_videos_images_texts_regardless_of_key_order(pil_image, frames):
    parsed = item({"text": ["A", "B"], "image": pil_image, "video": frames})
    assert [c["type"] for c in content_list(parsed)] == ["video", "image", "text", "text"]
    assert [c.get("text") for c in content_list(parsed)][2:] == ["A", "B"]


def test_empty_object_is_null_but_empty_string_is_not():
    assert content_list(item({})) == [{"type": "text", "text": "NULL"}]
    assert content_list(item({"text": None})) == [{"type": "text", "text": "NULL"}]
    assert content_list(item({"text": ""})) == [{"type": "text", "text": ""}]


def test_embedding_conversation_structure(pil_image):
    conv = embedding_conversation(item({"image": pil_image, "text": "x"}), "Find images")
    assert conv[0] == {"role": "system", "content": [{"type": "text", "text": "Find images."}]}
    assert conv[1]["role"] == "user"
    assert [c["type"] for c in conv[1]["content"]] == ["image", "text"]


# ------------------------------------------------------------------------------------------ §4.3


def test_render_text_with_instruction(processor):
    conv = embedding_conversation(item({"text": QUERY}), "Retrieve images or text relevant to the user's query.")
    expected = (
        "<|im_start|>system\n"
        "Retrieve images or text relevant to the user's query.<|im_end|>\n"
        "<|im_start|>user\n"
        "A woman playing with her dog on a beach at sunset.<|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render(processor, conv) == expected
    assert render(processor, conv).endswith("assistant\n")


def test_render_plain_string_item_uses_default(processor):
    conv = embedding_conversation(item("hello"), None)
    assert render(processor, conv) == expected_embedding_prompt("Represent the user's input.", "hello")


def test_render_image_and_text_default_instruction(processor, pil_image):
    conv = embedding_conversation(item({"image": pil_image, "text": "What is in the picture?"}), None)
    assert render(processor, conv) == (
        "<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>What is in the picture?<|im_end|>\n<|im_start|>assistant\n"
    )


def test_render_video_image_two_texts(processor, pil_image, frames):
    conv = embedding_conversation(item({"text": ["A", "B"], "image": pil_image, "video": frames}), None)
    assert render(processor, conv) == (
        "<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|video_pad|><|vision_end|><|vision_start|><|image_pad|><|vision_end|>AB<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_render_empty_object_null(processor):
    conv = embedding_conversation(item({}), None)
    assert render(processor, conv) == (
        "<|im_start|>system\nRepresent the user's input.<|im_end|>\n<|im_start|>user\nNULL<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def test_render_text_list_has_no_separator(processor):
    a = render(processor, embedding_conversation(item({"text": ["a", "b"]}), None))
    b = render(processor, embedding_conversation(item({"text": "ab"}), None))
    assert a == b == expected_embedding_prompt("Represent the user's input.", "ab")


def test_render_multiple_images_and_videos(processor, pil_image, frames):
    arr = np.zeros((2, 32, 32, 3), np.uint8)
    parsed = item({"image": [pil_image, pil_image], "video": [frames, arr], "text": "t"})
    assert render(processor, embedding_conversation(parsed, None)) == expected_embedding_prompt(
        "Represent the user's input.", VID + VID + IMG + IMG + "t")


def test_render_custom_default_instruction(processor):
    conv = embedding_conversation(item("x"), None, default="My default.")
    assert render(processor, conv) == expected_embedding_prompt("My default.", "x")
    conv = embedding_conversation(item("x"), "Task", default="My default.")
    assert render(processor, conv) == expected_embedding_prompt("Task.", "x")


# ------------------------------------------------------------------------------------------ §5.2-5.3


def test_render_reranker_readme_example(processor, pil_image):
    conv = rerank_conversation(item({"text": QUERY}), item({"image": pil_image}),
                               "Retrieve images or text relevant to the user's query.")
    expected = (
        "<|im_start|>system\n"
        'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
        'Note that the answer can only be "yes" or "no".<|im_end|>\n'
        "<|im_start|>user\n"
        "<Instruct>: Retrieve images or text relevant to the user's query.<Query>:"
        "A woman playing with her dog on a beach at sunset.\n"
        "<Document>:<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert render(processor, conv) == expected


def test_render_reranker_default_instruction_empty_document(processor):
    conv = rerank_conversation(item({"text": "What is the capital of France?"}), item({}), None)
    assert render(processor, conv) == (
        '<|im_start|>system\nJudge whether the Document meets the requirements based on the Query and the Instruct '
        'provided. Note that the answer can only be "yes" or "no".<|im_end|>\n<|im_start|>user\n'
        "<Instruct>: Given a search query, retrieve relevant candidates that answer the query.<Query>:"
        "What is the capital of France?\n<Document>:NULL<|im_end|>\n<|im_start|>assistant\n"
    )


def test_render_reranker_instruction_is_verbatim(processor, pil_image, frames):
    # No punctuation rule for the reranker, no stripping; query and document keep video, image, text order.
    query = item({"text": ["q1", "q2"], "image": pil_image})
    document = item({"text": "d", "video": frames, "image": pil_image})
    conv = rerank_conversation(query, document, "  find things ")
    assert render(processor, conv) == expected_rerank_prompt("  find things ", IMG + "q1q2", VID + IMG + "d")
    conv = rerank_conversation(item({}), item("doc"), "", default="Custom default")
    assert render(processor, conv) == expected_rerank_prompt("Custom default", "NULL", "doc")


def test_rendered_prompts_are_reused_and_equal_the_template(processor, monkeypatch):
    """Short conversations (an image item, a query's pairs with image documents) are rendered once: the same text as
    the chat template, per template; long ones are rendered every time."""
    from qwen3vl_integrations.core import prompts

    monkeypatch.setattr(prompts, "_rendered", prompts.BoundedCache(prompts.RENDER_CACHE_ITEMS))
    calls = []
    template = type(processor).apply_chat_template
    monkeypatch.setattr(type(processor), "apply_chat_template",
                        lambda self, *a, **k: calls.append(1) or template(self, *a, **k))
    image_only = embedding_conversation(parse_item({"image": Image.new("RGB", (8, 8))}, MediaPolicy()), None)
    expected = template(processor, image_only, tokenize=False, add_generation_prompt=True)
    assert [render(processor, image_only) for _ in range(3)] == [expected] * 3 and len(calls) == 1
    other = embedding_conversation(parse_item({"image": Image.new("RGB", (8, 8))}, MediaPolicy()), "Find cats")
    assert render(processor, other) != expected and len(calls) == 2
    long_text = embedding_conversation(parse_item("word " * 1000, MediaPolicy()), None)
    assert render(processor, long_text) == render(processor, long_text) and len(calls) == 4


def test_rendered_prompts_are_kept_per_template(processor, monkeypatch):
    import copy

    from qwen3vl_integrations.core import prompts

    monkeypatch.setattr(prompts, "_rendered", prompts.BoundedCache(prompts.RENDER_CACHE_ITEMS))
    other = copy.deepcopy(processor)
    other.chat_template = processor.chat_template.replace("<|im_start|>", "<|im_start|> ")
    conversation = embedding_conversation(parse_item("hello", MediaPolicy()), None)
    first, second = render(processor, conversation), render(other, conversation)
    assert second == first.replace("<|im_start|>", "<|im_start|> ") != first
    assert render(processor, conversation) == first
