"""Prompts of the official implementation, verbatim (REFERENCE.md §3, §4.1-4.3, §5.2-5.3)."""
from __future__ import annotations

import json
import unicodedata
from typing import Any

from .caching import BoundedCache
from .inputs import Item

EMBEDDING_DEFAULT_INSTRUCTION = "Represent the user's input."
RERANKER_DEFAULT_INSTRUCTION = "Given a search query, retrieve relevant candidates that answer the query."
RERANKER_SYSTEM_PROMPT = (
    'Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
    'Note that the answer can only be "yes" or "no".'
)
# Query-side instruction used by the framework adapters (REFERENCE.md §4.8, the upstream README's preset).
DEFAULT_QUERY_INSTRUCTION = "Retrieve images or text relevant to the user's query."

INSTRUCTION_PRESETS = {
    "mixed": DEFAULT_QUERY_INSTRUCTION,
    "visual_documents": "Find a document image that matches the given query.",
    "passages": "Retrieve passages that answer this question.",
    "text_to_image": "Find images matching this description.",
    "text_to_video": "Find videos matching this description.",
    "image_qa": "Find the answer to this question about the image.",
}


def embedding_system_text(instruction: str | None, default: str = EMBEDDING_DEFAULT_INSTRUCTION) -> str:
    """The embedder's instruction rule: strip, add a final '.' unless it ends in punctuation, else the default."""
    text = (instruction or "").strip()
    if not text:
        return default
    if not unicodedata.category(text[-1]).startswith("P"):
        text += "."
    return text


def content_list(item: Item) -> list[dict[str, Any]]:
    """User-turn content: videos, then images, then texts; "NULL" for an empty object.

    Media entries are placeholders: the chat template only needs their type.
    """
    content: list[dict[str, Any]] = [{"type": "video"} for _ in item.videos]
    content += [{"type": "image"} for _ in item.images]
    content += [{"type": "text", "text": text} for text in item.texts]
    return content or [{"type": "text", "text": "NULL"}]


def embedding_conversation(item: Item, instruction: str | None,
                           default: str = EMBEDDING_DEFAULT_INSTRUCTION) -> list[dict[str, Any]]:
    return [
        {"role": "system", "content": [{"type": "text", "text": embedding_system_text(instruction, default)}]},
        {"role": "user", "content": content_list(item)},
    ]


def rerank_conversation(query: Item, document: Item, instruction: str | None,
                        default: str = RERANKER_DEFAULT_INSTRUCTION) -> list[dict[str, Any]]:
    """The reranker's layout; the instruction is used verbatim (no punctuation rule)."""
    user = [{"type": "text", "text": "<Instruct>: " + (instruction or default)},
            {"type": "text", "text": "<Query>:"}]
    user += content_list(query)
    user.append({"type": "text", "text": "\n<Document>:"})
    user += content_list(document)
    return [
        {"role": "system", "content": [{"type": "text", "text": RERANKER_SYSTEM_PROMPT}]},
        {"role": "user", "content": user},
    ]


# Rendered prompts kept for conversations of up to this many characters (as JSON): the chat template costs 0.07 ms a
# call at best (a lookup 0.006 ms), and an image corpus, or a query's pairs with image documents, renders one prompt
# again and again.
RENDER_CACHE_CHARS = 4096
RENDER_CACHE_ITEMS = 512  # emptied when full
_rendered = BoundedCache(RENDER_CACHE_ITEMS)


def render(processor: Any, conversation: list[dict[str, Any]]) -> str:
    """The checkpoint's chat template, with the generation prompt, as text."""
    key_text = json.dumps(conversation, ensure_ascii=False)
    if len(key_text) > RENDER_CACHE_CHARS:
        return processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
    # The template may also read the tokenizer's special tokens: the checkpoint's path keeps checkpoints apart.
    key = (str(getattr(getattr(processor, "tokenizer", None), "name_or_path", "")),
           str(getattr(processor, "chat_template", None)), key_text)
    return _rendered.get_or_make(key, lambda: processor.apply_chat_template(conversation, tokenize=False,
                                                                            add_generation_prompt=True))
