"""A LangChain `BaseCrossEncoder` backed by Qwen3-VL-Reranker (for `CrossEncoderReranker` users)."""
from __future__ import annotations

from typing import Any

from langchain_core.cross_encoders import BaseCrossEncoder

from ._core import RerankerOptions, to_floats

__all__ = ["Qwen3VLCrossEncoder"]


class Qwen3VLCrossEncoder(RerankerOptions, BaseCrossEncoder):
    """Qwen3-VL-Reranker as a LangChain cross encoder: ``score([(query, text), ...]) -> list[float]``.

    A one-line switch for `CrossEncoderReranker` users::

        from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
        from qwen3vl_integrations.langchain import Qwen3VLCrossEncoder

        compressor = CrossEncoderReranker(model=Qwen3VLCrossEncoder(model_name="Qwen/Qwen3-VL-Reranker-2B"), top_n=3)

    `CrossEncoderReranker` passes ``page_content`` only, so this path is text-only (and writes no score into
    metadata); use `Qwen3VLRerank` to rerank image and video documents. All pairs go to the core's `score_pairs` in
    one call; scores are floats in (0, 1) in the order of ``text_pairs``. The model loads lazily on first use.
    """

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """Score ``(query, document)`` pairs in one core call; pairs with the same query share its encoding."""
        given = [tuple(pair) for pair in text_pairs]
        for i, pair in enumerate(given):
            if len(pair) != 2:
                raise ValueError(f"text_pairs[{i}] must be a (query, document) pair, got {len(pair)} elements")
        if not given:
            return []
        # The core groups pairs by the query object; equal query strings become one object, so a query that
        # LangChain repeats per pair is processed (and its prompt part run) once.
        same_query: dict[str, str] = {}
        pairs = [(same_query.setdefault(query, query) if isinstance(query, str) else query, document)
                 for query, document in given]
        kwargs: dict[str, Any] = {"instruction": self.instruction}
        if self.batch_size is not None:
            kwargs["batch_size"] = self.batch_size
        return to_floats(self.core_reranker.score_pairs(pairs, **kwargs))
