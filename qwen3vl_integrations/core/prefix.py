"""One query, many documents: run the query's part of the reranker prompt once and reuse its key/value cache.

Every pair of one query starts with the same tokens: system prompt, instruction, the query (its media and text)
and the `<Document>:` marker (REFERENCE.md §5.2). Attention is causal, so their keys and values do not depend on
the document. The reranker runs them once per call and each micro-batch of documents attends to that cache.
Scores equal scoring each pair whole, up to float rounding.

Which tokens are shared is decided on token ids, never on text: the end of the query text may merge with the
following "\\n" into one token, and truncation may drop query text, so each batch shares the longest run of
tokens that its sequences have in common with the query part.
"""
from __future__ import annotations

import dataclasses
import functools
import inspect
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import torch

from .encoding import VISION_KEYS, EncodedItem
from .runner import ModelInputs, model_inputs

VISION_END = "<|vision_end|>"


def common_prefix_length(a: torch.Tensor, b: torch.Tensor) -> int:
    """Number of leading positions where two 1-D id tensors agree."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differs = (a[:n] != b[:n]).nonzero()
    return int(differs[0]) if len(differs) else n


def _rows(grid_thw: torch.Tensor | None) -> tuple[int, int]:
    """(number of images or videos, number of pixel-value rows) of a grid tensor."""
    if grid_thw is None:
        return 0, 0
    return int(grid_thw.shape[0]), int(grid_thw.prod(-1).sum())


@dataclass
class QueryPrefix:
    """The query's part of every pair's prompt, encoded once; its key/value cache is computed on first use.

    `head_text` is the prompt through the query's last `<|vision_end|>` ("" for a query without media) and
    `head_length` its number of tokens. A special token always ends a tokenizer segment, so a pair's tokens are
    these plus the encoding of the rest of its prompt: the query's media are processed once, not once per pair.
    """

    item: EncodedItem
    head_text: str = ""
    head_length: int = 0
    _keys_values: list[tuple[torch.Tensor, torch.Tensor]] | None = field(default=None, repr=False)

    @classmethod
    def from_encoding(cls, item: EncodedItem, text: str, vision_end_id: int, longest: int) -> "QueryPrefix":
        """`item` is the encoding of `text`, the prompt up to the document's content. Of a query part longer than
        `longest` (max_length), only the first `longest` tokens are kept: a pair truncated to max_length shares no
        more (the rest of a long query's text is dropped from every pair), and its keys and values would be computed
        for nothing. The query's vision tokens come before its text and fit max_length (checked before)."""
        vision = (item.mm_token_type_ids != 0).nonzero()
        if len(item) > longest and (not len(vision) or int(vision[-1]) < longest):
            item = dataclasses.replace(item, input_ids=item.input_ids[:longest],
                                       mm_token_type_ids=item.mm_token_type_ids[:longest])
        # The processor expands each media placeholder within its own span, so the text's last <|vision_end|> is
        # the encoding's last one.
        ends = (item.input_ids == vision_end_id).nonzero()
        if len(ends) == 0 or VISION_END not in text:
            return cls(item)
        return cls(item, text[: text.rindex(VISION_END) + len(VISION_END)], int(ends[-1]) + 1)

    def join(self, tail: EncodedItem) -> EncodedItem:
        """A pair's sequence from the head and the encoding of the prompt after `head_text`. The query's vision
        inputs are referenced (`leading`), not copied into every pair."""
        n = self.head_length
        return EncodedItem(
            input_ids=torch.cat([self.item.input_ids[:n], tail.input_ids]),
            mm_token_type_ids=torch.cat([self.item.mm_token_type_ids[:n], tail.mm_token_type_ids]),
            **{key: getattr(tail, key) for key in VISION_KEYS}, leading=self.item,
        )

    def shared_length(self, sequences: Sequence[EncodedItem]) -> int:
        """Tokens that every sequence shares with the query part; 0 when sharing would be wrong or pointless."""
        length = min(common_prefix_length(self.item.input_ids, s.input_ids) for s in sequences)
        # The cache brings the query's vision inputs, the rows only their own: no query vision token may be left.
        vision = (self.item.mm_token_type_ids != 0).nonzero()
        return length if length >= max(int(vision[-1]) + 1 if len(vision) else 0, 1) else 0

    def release(self) -> None:
        """Drop the key/value cache (the query's pairs are all scored)."""
        self._keys_values = None

    def keys_values(self, loaded: Any) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per-layer (keys, values) of the whole query part, [1, kv_heads, length, head_dim], computed on first
        use. Call under the model lock, in inference mode."""
        if self._keys_values is None:
            cache = _new_cache(loaded)
            loaded.backbone(**model_inputs(loaded, [self.item]).on_device(loaded.device),
                            **{cache_argument(loaded.backbone): cache}, use_cache=True)
            self._keys_values = [(layer.keys, layer.values) for layer in cache.layers]
        return self._keys_values

    def cache(self, loaded: Any, rows: int, length: int) -> Any:
        """A fresh key/value cache holding the first `length` tokens of the query part for each of `rows` rows
        (views of the query part's keys and values where the cache allows). Call under the model lock, in inference
        mode."""
        cache = _new_cache(loaded)
        shape = (rows, -1, -1, -1)
        per_layer = [(keys[:, :, :length].expand(shape), values[:, :, :length].expand(shape))
                     for keys, values in self.keys_values(loaded)]
        if len(cache.layers) == len(per_layer) and all(hasattr(layer, "lazy_initialization") for layer in cache.layers):
            # Set, not appended with `update`: that would copy the views into a [rows, ...] tensor per layer, and
            # the rows' own `update` copies them again next to the rows' keys and values.
            for layer, (keys, values) in zip(cache.layers, per_layer):
                layer.lazy_initialization(keys, values)
                layer.keys, layer.values = keys, values
        else:  # a cache that adds its layers as they come
            for index, (keys, values) in enumerate(per_layer):
                cache.update(keys, values, index)
        return cache


def _without_prefix(item: EncodedItem, start: int, prefix: EncodedItem) -> EncodedItem:
    """The tokens of `item` from `start` on, with only its own vision inputs: the query's come with the cache."""
    if item.leading is prefix:  # built from the query part: its own inputs are the document's
        own = {key: getattr(item, key) for key in VISION_KEYS}
    else:  # a whole-prompt encoding: the query's inputs come first and are dropped
        images, image_rows = _rows(prefix.image_grid_thw)
        videos, video_rows = _rows(prefix.video_grid_thw)

        def rest(values: torch.Tensor | None, rows: int) -> torch.Tensor | None:
            return values[rows:] if values is not None and values.shape[0] > rows else None

        own = {"pixel_values": rest(item.pixel_values, image_rows), "image_grid_thw": rest(item.image_grid_thw, images),
               "pixel_values_videos": rest(item.pixel_values_videos, video_rows),
               "video_grid_thw": rest(item.video_grid_thw, videos)}
    return EncodedItem(input_ids=item.input_ids[start:], mm_token_type_ids=item.mm_token_type_ids[start:], **own)


def inputs_after_prefix(loaded: Any, prefix: QueryPrefix, sequences: list[EncodedItem], shared: int) -> ModelInputs:
    """Model inputs of only the tokens after the first `shared`, whose keys and values come from the query's cache.
    Runs in a worker thread; the cache itself is taken under the model lock."""
    rest = [_without_prefix(item, shared, prefix.item) for item in sequences]
    inputs = model_inputs(loaded, sequences, shared, rest)
    inputs.cache_inputs = lambda: {
        cache_argument(loaded.backbone): prefix.cache(loaded, len(rest), shared), "use_cache": True}
    return inputs


def _new_cache(loaded: Any) -> Any:
    from transformers import DynamicCache

    return DynamicCache(config=getattr(loaded.config, "text_config", loaded.config))


def cache_argument(backbone: Any) -> str:
    """The backbone's name for the key/value cache: `cache` in recent transformers 5.x, `past_key_values` before."""
    return _cache_argument(type(backbone).forward)


@functools.lru_cache(maxsize=None)
def _cache_argument(forward: Callable[..., Any]) -> str:  # inspect.signature costs about 0.3 ms, once per micro-batch
    return "cache" if "cache" in inspect.signature(forward).parameters else "past_key_values"
