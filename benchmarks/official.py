"""A faithful re-enactment of the official procedure (REFERENCE.md §4.5-§4.7, §5.4-§5.5), for the baseline.

Built from the core's pieces (prompts, vision preprocessing, truncation rule, the shared loaded model), but not
from its batched `embed`/`score` loops:

* embedder: the caller cuts the corpus into chunks of 8; each chunk is one `process()` call: the processor runs on
  the whole chunk at once (`padding=True, truncation=True, max_length`, right padding, `do_resize=False`), one
  padded forward under `torch.no_grad()`, last-real-token pooling, L2 normalisation in the model dtype. No sorting,
  no overlap of preprocessing with compute.
* reranker: one pair per forward pass, in input order; each pair's media (the query's too) are prepared again for
  every pair, as upstream's `tokenize([pair])` does. The score head is ours (W_yes - W_no in float32; upstream
  applies the LM head in the model dtype): the comparison is about batching, not about the head.

While the baseline runs, the shared model's vision tower is switched back to transformers' stock code (Conv3d
patch embedding, one attention call per image).
"""
from __future__ import annotations

import copy
from typing import Any, Sequence

import numpy as np
import torch

from qwen3vl_integrations.core.encoding import collate, encode, truncate_text_tokens
from qwen3vl_integrations.core.inputs import Item, parse_item
from qwen3vl_integrations.core.lower_right_attention import LOWER_RIGHT_SDPA
from qwen3vl_integrations.core.prompts import embedding_conversation, render, rerank_conversation
from qwen3vl_integrations.core.reranker import RERANK_SUFFIX

OFFICIAL_CHUNK = 8


class Counter:
    """Real (unpadded) tokens, padded tokens, vision patch rows and forward passes seen by the model."""

    def __init__(self) -> None:
        self.tokens = 0
        self.patches = 0
        self.padded_tokens = 0
        self.passes = 0

    def add(self, batch: dict[str, torch.Tensor]) -> None:
        self.add_pass(int(batch["attention_mask"].sum()), int(batch["attention_mask"].numel()))
        for key in ("pixel_values", "pixel_values_videos"):
            if batch.get(key) is not None:
                self.patches += int(batch[key].shape[0])

    def add_pass(self, tokens: int, padded_tokens: int) -> None:
        """One forward pass of `tokens` real tokens in `padded_tokens` positions."""
        self.passes += 1
        self.tokens += tokens
        self.padded_tokens += padded_tokens


def _media(runner: Any, item: Item) -> tuple[list[Any], list[Any]]:
    images, videos = runner._prepare_media(item)
    return images, videos


def official_embed(embedder: Any, raw_items: Sequence[Any], counter: Counter | None = None,
                   chunk: int = OFFICIAL_CHUNK) -> np.ndarray:
    """Embeddings [N, D] (float32) the way upstream's `process()` computes them, `chunk` items per call."""
    loaded = embedder.load()
    processor = copy.copy(loaded.processor)
    processor.tokenizer = copy.deepcopy(loaded.processor.tokenizer)
    processor.tokenizer.padding_side = "right"  # upstream loads the processor with padding_side="right"
    out = []
    for start in range(0, len(raw_items), chunk):
        items = [parse_item(raw, embedder.policy) for raw in raw_items[start:start + chunk]]
        texts, images, videos = [], [], []
        for item in items:
            texts.append(render(processor, embedding_conversation(item, item.instruction,
                                                                  embedder.default_instruction)))
            item_images, item_videos = _media(embedder, item)
            images += item_images
            videos += item_videos
        kwargs: dict[str, Any] = {"text": texts, "padding": True, "truncation": True,
                                  "max_length": embedder.max_length, "return_tensors": "pt"}
        if images:
            kwargs.update(images=images, do_resize=False)
        if videos:
            kwargs.update(videos=[v.frames for v in videos], video_metadata=[v.metadata for v in videos],
                          do_resize=False, do_sample_frames=False, cap_pixels_per_frame=False)
        batch = {k: v for k, v in processor(**kwargs).items() if isinstance(v, torch.Tensor)}
        if counter is not None:
            counter.add(batch)
        batch = {k: v.to(loaded.device) for k, v in batch.items()}
        with torch.no_grad(), stock_forwards(loaded.backbone):
            hidden = loaded.backbone(**batch).last_hidden_state
            mask = batch["attention_mask"]
            last = mask.shape[1] - 1 - torch.argmax(torch.flip(mask, dims=[1]), dim=1)
            pooled = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]
            pooled = torch.nn.functional.normalize(pooled, p=2, dim=-1)  # in the model dtype, as upstream
        out.append(pooled.float().cpu().numpy())
    return np.concatenate(out) if out else np.zeros((0, embedder.embedding_dim), np.float32)


def official_score(reranker: Any, query: Any, documents: Sequence[Any], instruction: str | None = None,
                   counter: Counter | None = None) -> np.ndarray:
    """Scores [N] the way upstream's reranker `process()` computes them: one pair per forward pass."""
    loaded = reranker.load()
    scores = []
    for raw_document in documents:
        query_item = parse_item(query, reranker.policy)
        document = parse_item(raw_document, reranker.policy)
        text = render(loaded.processor, rerank_conversation(query_item, document, instruction,
                                                            reranker.default_instruction))
        query_images, query_videos = _media(reranker, query_item)
        doc_images, doc_videos = _media(reranker, document)
        sequence = encode(loaded.processor, text, query_images + doc_images, query_videos + doc_videos)
        sequence = truncate_text_tokens(sequence, reranker.max_length, RERANK_SUFFIX, loaded.special_ids)
        batch, _ = collate([sequence], loaded.pad_token_id)
        if counter is not None:
            counter.add(batch)
        batch = {k: v.to(loaded.device) for k, v in batch.items()}
        with torch.no_grad(), stock_forwards(loaded.backbone):
            hidden = loaded.backbone(**batch).last_hidden_state[:, -1]
            scores.append(torch.sigmoid(hidden.float() @ loaded.score_weight).cpu().numpy())
    return np.concatenate(scores) if scores else np.zeros(0, np.float32)


class stock_forwards:
    """Within this block the shared model runs transformers' stock code, as upstream does: the per-instance
    overrides our loader installs (`forward` of some modules: patch embedding as a matrix product, grouped vision
    attention, ...; the language model's `_deepstack_process`; its attention function, `sdpa_lower_right`) are taken
    off and put back afterwards."""

    def __init__(self, backbone: Any) -> None:
        self.backbone = backbone
        self.saved: list[tuple[Any, Any]] = []
        self.text_config = getattr(getattr(backbone, "language_model", None), "config", None)
        self.attention = getattr(self.text_config, "_attn_implementation", None)

    def __enter__(self) -> "stock_forwards":
        for module in self.backbone.modules():
            for name in ("forward", "_deepstack_process"):
                if name in vars(module):
                    self.saved.append((module, name, vars(module).pop(name)))
        if self.attention == LOWER_RIGHT_SDPA:
            self.text_config._attn_implementation = "sdpa"
        return self

    def __exit__(self, *exc: Any) -> None:
        for module, name, method in self.saved:
            setattr(module, name, method)
        self.saved.clear()
        if self.attention == LOWER_RIGHT_SDPA:
            self.text_config._attn_implementation = self.attention
