"""A LangChain `BaseCrossEncoder` backed by Qwen3-VL-Reranker (for `CrossEncoderReranker` users)."""
from __future__ import annotations

from typing import Any

from langchain_core.cross_encoders import BaseCrossEncoder

from qwen3vl_integrations.core.errors import Qwen3VLInputError

from ._core import RerankerOptions, to_floats

__all__ = ["Qwen3VLCrossEncoder"]


class Qwen3VLCrossEncoder(RerankerOptions, BaseCrossEncoder):
    """Qwen3-VL-Reranker as a LangChain cross encoder: ``score([(query, text), ...]) -> list[float]``.

    A one-line switch for `CrossEncoderReranker` users::

        from langchain_classic.retrievers.document_compressors import CrossEncoderReranker
        from qwen3vl_integrations.langchain import Qwen3VLCrossEncoder

        compressor = CrossEncoderReranker(model=Qwen3VLCrossEncoder(model_name="Qwen/Qwen3-VL-Reranker-2B"), top_n=3)

    `CrossEncoderReranker` passes ``page_content`` only, so this path is text-only (and writes no score into
    metadata); use `Qwen3VLRerank` to rerank image and video documents. Pairs sharing a query are scored in one
    core call; scores are floats in (0, 1) in the order of ``text_pairs``. The model loads lazily on first use.
    """

    def score(self, text_pairs: list[tuple[str, str]]) -> list[float]:
        """Score ``(query, document)`` pairs; pairs with the same query are batched together."""
        pairs = [tuple(pair) for pair in text_pairs]
        for i, pair in enumerate(pairs):
            if len(pair) != 2:
                raise ValueError(f"text_pairs[{i}] must be a (query, document) pair, got {len(pair)} elements")
        if not pairs:
            return []
        groups: dict[str, list[int]] = {}
        for i, (query, _) in enumerate(pairs):
            groups.setdefault(query, []).append(i)
        kwargs: dict[str, Any] = {"instruction": self.instruction}
        if self.batch_size is not None:
            kwargs["batch_size"] = self.batch_size
        scores = [0.0] * len(pairs)
        reranker = self.core_reranker
        for query, indices in groups.items():
            try:
                group_scores = to_floats(reranker.score(query, [pairs[i][1] for i in indices], **kwargs))
            except Qwen3VLInputError as error:  # name the pair in text_pairs, not the position within its group
                where = indices[0] if error.index is None else indices[error.index]
                raise error.located(where, error.role) from None
            for i, s in zip(indices, group_scores, strict=True):
                scores[i] = s
        return scores
