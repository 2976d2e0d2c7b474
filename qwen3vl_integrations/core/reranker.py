"""Qwen3-VL-Reranker: the official yes/no relevance score, batched."""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np
import torch

from .encoding import EncodedItem, encode, truncate_text_tokens
from .errors import Qwen3VLInputError, position_of
from .inputs import Item, input_list, official_item, raise_bad_inputs
from .media import _Invalid
from .options import flag, whole_number
from .prefix import VISION_END, QueryPrefix, inputs_after_prefix
from .prompts import RERANKER_DEFAULT_INSTRUCTION, render, rerank_conversation
from .runner import ModelInputs, Qwen3VLRunner, model_inputs

RERANK_SUFFIX = 5  # <|im_end|> \n <|im_start|> assistant \n (the reranker tokenizer appends nothing)
PROMPT_OVERHEAD = 64  # system prompt and markers, for length estimates
DOCUMENT_OVERHEAD = 8  # what a pair adds besides the query part and the document's content: "NULL", chat suffix
_DOCUMENT_MARK = "\ue000document\ue000"  # stands in for a document's content, to find where the query part ends


class Qwen3VLReranker(Qwen3VLRunner):
    """Scores (query, document) pairs with Qwen3-VL-Reranker: sigmoid(h_last · (W_yes − W_no)), in float32.

    Queries and documents take every input form the embedder takes. Pairs are scored in length-sorted
    micro-batches (the reference runs one pair per forward pass); the query's media are decoded and processed once
    per call. With `share_query_prefix`, the tokens that all pairs of one query begin with (system prompt, instruction,
    query) run once per call and the documents attend to their cached keys and values: the same scores up to float
    rounding, for less compute. `None` (the default) shares on CPU, and on GPUs for queries with images or videos:
    there a short text query's part saves less than its extra pass costs (benchmarks/README.md).
    """

    _role = "reranker"
    _default_batch_size = 16

    def __init__(
        self,
        model_name_or_path: str = "Qwen/Qwen3-VL-Reranker-2B",
        *,
        max_length: int = 10240,
        default_instruction: str = RERANKER_DEFAULT_INSTRUCTION,
        batch_size: int = 16,
        share_query_prefix: bool | None = None,
        **options: Any,
    ) -> None:
        super().__init__(model_name_or_path, max_length=max_length, default_instruction=default_instruction,
                         batch_size=batch_size, **options)
        self.share_query_prefix = None if share_query_prefix is None else flag("share_query_prefix", share_query_prefix)

    # ------------------------------------------------------------------------------- public API
    def score(self, query: Any, documents: Sequence[Any], *, instruction: str | None = None,
              batch_size: int | None = None, show_progress: bool = False) -> np.ndarray:
        """Relevance of each document to the query: float32 [N] in (0, 1), in the documents' order."""
        documents = input_list(documents, "score() takes a list of documents; wrap a single document in a list")
        return self.score_pairs([(query, document) for document in documents], instruction=instruction,
                                batch_size=batch_size, show_progress=show_progress, _one_query=True)

    def rank(self, query: Any, documents: Sequence[Any], *, top_n: int | None = None,
             instruction: str | None = None, batch_size: int | None = None) -> list[tuple[int, float]]:
        """(document index, score) pairs, best first, cut to `top_n`. Ties keep the input order."""
        top_n = None if top_n is None else whole_number("top_n", top_n, 0)
        scores = self.score(query, documents, instruction=instruction, batch_size=batch_size)
        order = sorted(range(len(scores)), key=lambda i: (-float(scores[i]), i))
        if top_n is not None:
            order = order[:top_n]
        return [(i, float(scores[i])) for i in order]

    def process(self, inputs: dict[str, Any]) -> list[float]:
        """The official API: {"instruction", "query", "documents", "fps", "max_frames"} -> list of scores.

        As upstream: only the top-level "instruction" counts (a query written for the embedder may carry its own,
        which the official reranker ignores), and other unknown keys are ignored."""
        if not isinstance(inputs, dict):
            raise TypeError('process() takes a dict: {"query": ..., "documents": [...], "instruction": ...}')
        query = inputs.get("query")
        documents = input_list(inputs.get("documents") or [],
                               'process(): "documents" must be a list; wrap a single document in a list')
        if not query or not documents:
            return []
        query = official_item(query, instruction=False)
        documents = [official_item(document, instruction=False) for document in documents]
        fps, max_frames = inputs.get("fps"), inputs.get("max_frames")
        if fps is not None or max_frames is not None:  # apply to every video in the query and documents
            def with_video_options(obj: Any) -> Any:
                if not isinstance(obj, dict):
                    return obj
                return {**obj, **({"fps": fps} if fps is not None else {}),
                        **({"max_frames": max_frames} if max_frames is not None else {})}
            query, documents = with_video_options(query), [with_video_options(d) for d in documents]
        return [float(s) for s in self.score(query, documents, instruction=inputs.get("instruction"))]

    def score_pairs(self, pairs: Sequence[tuple[Any, Any] | list[Any]], *, instruction: str | None = None,
                    batch_size: int | None = None, show_progress: bool = False,
                    _one_query: bool = False) -> np.ndarray:
        """Scores of arbitrary (query, document) pairs. Each query object (by identity) is validated and decoded once."""
        pairs = input_list(pairs, "score_pairs() takes a list of (query, document) pairs; wrap a single pair in a list")
        for position, pair in enumerate(pairs):
            # A bare pair or a string is iterable too: ("q1", "d1") read as the pairs ("q", "1") and ("d", "1").
            if not isinstance(pair, (tuple, list)) or len(pair) != 2:
                raise TypeError(f"score_pairs(): pair {position} must be a (query, document) tuple, got {pair!r:.80}")
        batch_size = self._items_per_pass(self._check_call(instruction, batch_size), texts_only=False)
        if not pairs:
            return np.zeros(0, np.float32)
        query_keys: dict[int, int] = {}
        raw_queries: list[Any] = []
        pair_query: list[int] = []
        first_pair: list[int] = []  # a query error names the first pair that uses the query
        for position, (query, _) in enumerate(pairs):
            key = 0 if _one_query else id(query)
            if key not in query_keys:
                query_keys[key] = len(raw_queries)
                raw_queries.append(query)
                first_pair.append(position)
            pair_query.append(query_keys[key])

        def query_index(q: int) -> int | None:
            return None if _one_query else first_pair[q]

        # One error reports every bad query and every bad document, the queries first. A document whose query is bad
        # is judged alone; one whose query is good shares max_length with it.
        checked_queries = self._checked_items(raw_queries, "query", self.max_length)
        checked_documents = self._checked_items(
            [document for _, document in pairs], "document", self.max_length,
            taken=lambda position: checked_queries.specials.get(pair_query[position], 0))
        raise_bad_inputs([error.located(query_index(position_of(error)), "query") for error in checked_queries.errors]
                         + checked_documents.errors)
        # All of them, in order: none failed. Long texts are cut together (one pool of threads for all).
        cut = self._cut_long_texts([*checked_queries.items.values(), *checked_documents.items.values()])
        queries, documents = cut[:len(checked_queries.items)], cut[len(checked_queries.items):]
        query_costs = list(checked_queries.costs.values())
        document_costs = list(checked_documents.costs.values())

        loaded = self.load()
        score_weight = loaded.score_weight
        if score_weight is None:  # (only an embedding model lacks it)
            raise RuntimeError(f"{self.model_name_or_path} was loaded without the reranker's score head")
        query_parts = [c + t + PROMPT_OVERHEAD for c, t in
                       zip(query_costs, self._text_cost([" ".join(query.texts) for query in queries]))]
        document_parts = [c + t + DOCUMENT_OVERHEAD for c, t in
                          zip(document_costs, self._text_cost([" ".join(doc.texts) for doc in documents]))]
        # Whole pairs, even where the query part runs once: while a batch runs, each of its rows holds its own copy
        # of that part's keys and values in every layer, so the token budget must count it.
        # At most a truncated pair's length: truncation's bound, not a long text's whole length, decides its batch.
        costs = [min(document_parts[p] + query_parts[q], self.max_length + RERANK_SUFFIX)
                 for p, q in enumerate(pair_query)]
        prepared_queries = [self._prepare_or_raise(query, query_index(q), "query")
                            for q, query in enumerate(queries)]
        # The query part of a query with several documents is encoded once: its media go through the processor
        # once, not once per pair. Its key/value cache is shared where `_shares_query_part` says so. A query with one
        # document has nothing to share: its pair runs whole.
        pairs_per_query = np.bincount(pair_query, minlength=len(queries))
        prefixes = {q: self._query_prefix(loaded, queries[q], prepared_queries[q], instruction, query_index(q))
                    for q in range(len(queries)) if pairs_per_query[q] > 1}
        sharing = {q: prefix for q, prefix in prefixes.items() if self._shares_query_part(loaded, queries[q])}

        def build(position: int) -> EncodedItem:
            q = pair_query[position]
            return self._encode_pair(loaded, queries[q], prepared_queries[q], documents[position], instruction,
                                     prefixes.get(q))

        def prepare(positions: list[int], sequences: list[EncodedItem]) -> ModelInputs:
            prefix = sharing.get(pair_query[positions[0]])  # a micro-batch holds the pairs of one query
            if prefix is not None:
                length = prefix.shared_length(sequences)
                if length:
                    return inputs_after_prefix(loaded, prefix, sequences, length)
            return model_inputs(loaded, sequences)

        holding: list[QueryPrefix] = []  # the prefix whose key/value cache is held

        def forward(positions: list[int], inputs: ModelInputs) -> torch.Tensor:
            prefix = sharing.get(pair_query[positions[0]])
            if holding and holding[0] is not prefix:  # queries run one after another: the last one is done
                holding.pop().release()
            if prefix is not None and not holding:
                holding.append(prefix)
            return self._forward_last_hidden(loaded, inputs, batch_size)

        scores = np.zeros(len(pairs), np.float32)
        try:
            for positions, batch_scores, _ in self._run(
                    costs, build, "document", batch_size, show_progress, groups=pair_query, prepare=prepare,
                    forward=forward, head=lambda hidden: torch.sigmoid(hidden @ score_weight)):
                if batch_scores is not None:  # None only for a micro-batch whose every pair failed, which raised
                    scores[positions] = batch_scores.numpy()
        finally:
            for prefix in prefixes.values():
                prefix.release()
        return scores

    # ----------------------------------------------------------------------------- internals
    def _prepare_or_raise(self, item: Item, index: int | None, role: str) -> tuple[list[Any], list[Any]]:
        try:
            return self._prepare_media(item)
        except _Invalid as exc:
            raise Qwen3VLInputError(str(exc), index=index, role=role) from None

    def _shares_query_part(self, loaded: Any, query: Item) -> bool:
        """Whether the part of the prompt before the document runs once for all of `query`'s pairs."""
        if self.share_query_prefix is not None:
            return self.share_query_prefix
        # Measured on an H100 (2B, bf16): 1 short text query x 64 texts, 242 pairs/s whole against 190 shared
        # (x 64 images: 87 against 67); 1 image query x 64 texts, 168 shared against 92 whole (its image then runs
        # through the tower once).
        return loaded.device.type == "cpu" or bool(query.images or query.videos)

    def _query_prefix(self, loaded: Any, query: Item, query_media: tuple[list[Any], list[Any]],
                      instruction: str | None, index: int | None) -> QueryPrefix:
        """The part of the prompt that all of a query's pairs begin with: everything before the document."""
        with loaded.lent_processor() as processor:
            text = render(processor, rerank_conversation(query, Item(texts=[_DOCUMENT_MARK]),
                                                         query.instruction or instruction, self.default_instruction))
            text = text[: text.rindex(_DOCUMENT_MARK)]
            try:
                item = encode(processor, text, query_media[0], query_media[1], loaded.raw_pixels)
            except Exception as exc:
                raise Qwen3VLInputError(f"could not encode input: {exc}", index=index, role="query") from None
        return QueryPrefix.from_encoding(item, text, loaded.tokenizer.convert_tokens_to_ids(VISION_END),
                                         self.max_length)

    def _encode_pair(self, loaded: Any, query: Item, query_media: tuple[list[Any], list[Any]], document: Item,
                     instruction: str | None, prefix: QueryPrefix | None = None) -> EncodedItem:
        doc_images, doc_videos = self._prepare_media(document)  # decoding first: a processor is lent for the prompt
        with loaded.lent_processor() as processor:
            # The query's own "instruction" key wins over the call's (CONTRACT: item > call > default).
            text = render(processor, rerank_conversation(query, document, query.instruction or instruction,
                                                         self.default_instruction))
            try:
                if prefix is not None and prefix.head_text and text.startswith(prefix.head_text):
                    # The query's media were encoded with the prefix: only the rest of the prompt is processed.
                    sequence = prefix.join(encode(processor, text[len(prefix.head_text):], doc_images, doc_videos,
                                                  loaded.raw_pixels))
                else:
                    # Media follow prompt order: the query's videos and images come before the document's.
                    sequence = encode(processor, text, query_media[0] + doc_images, query_media[1] + doc_videos,
                                      loaded.raw_pixels)
            except Exception as exc:
                raise _Invalid(f"could not encode input: {exc}") from None
        return truncate_text_tokens(sequence, self.max_length, RERANK_SUFFIX, loaded.special_ids)
