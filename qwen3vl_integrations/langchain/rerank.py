"""A multimodal reranking document compressor backed by Qwen3-VL-Reranker."""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from langchain_core.callbacks import Callbacks
from langchain_core.documents import BaseDocumentCompressor, Document
from pydantic import model_validator

from qwen3vl_integrations.core.async_calls import reranking_threads

from ._core import RerankerOptions, to_floats
from .documents import document_to_item

__all__ = ["Qwen3VLRerank"]

class Qwen3VLRerank(RerankerOptions, BaseDocumentCompressor):
    """Rerank LangChain documents, including image and video documents, with Qwen3-VL-Reranker.

    Each document becomes a core item (see `qwen3vl_integrations.langchain.documents`):

    * text: ``page_content``;
    * image: ``metadata["image_path"]`` or ``metadata["image_url"]``;
    * video: ``metadata["video_path"]`` or ``metadata["video_url"]``;
    * otherwise ``metadata["source"]`` when it names an image or video file (by extension or ``mime_type``);
    * a base64 image in ``page_content`` (what ``Chroma.add_images`` stores) is scored as that image.

    The returned documents are deep copies with ``metadata["relevance_score"]`` (a float in (0, 1)), best first,
    cut to `top_n` (``None``: all). The query is a string; a core item dict (e.g. ``{"image": "q.png"}``) is also
    accepted for image queries. The model loads lazily on first use and is shared through the core registry.

    Example:
        ```python
        from langchain_classic.retrievers import ContextualCompressionRetriever
        from qwen3vl_integrations.langchain import Qwen3VLRerank

        retriever = ContextualCompressionRetriever(
            base_compressor=Qwen3VLRerank(model_name="Qwen/Qwen3-VL-Reranker-2B", top_n=3),
            base_retriever=vector_store.as_retriever(search_kwargs={"k": 20}),
        )
        ```
    """

    top_n: int | None = 3
    """How many documents to return (``None``: all of them, sorted)."""

    @model_validator(mode="after")
    def _check_top_n(self) -> "Qwen3VLRerank":
        if self.top_n is not None and self.top_n < 0:
            raise ValueError("top_n must be >= 0 or None")
        return self

    def score_documents(self, documents: Sequence[Document], query: Any) -> list[float]:
        """Scores for ``documents`` against ``query``, in input order (no sorting, no cut)."""
        documents = list(documents)
        if not documents:
            return []
        kwargs: dict[str, Any] = {"instruction": self.instruction}
        if self.batch_size is not None:
            kwargs["batch_size"] = self.batch_size
        items = [document_to_item(doc) for doc in documents]
        return to_floats(self.core_reranker.score(query, items, **kwargs))

    def compress_documents(
        self,
        documents: Sequence[Document],
        query: str | dict[str, Any],
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Score, sort (best first) and keep the `top_n` documents; scores go to ``metadata["relevance_score"]``."""
        documents = list(documents)
        if not documents or self.top_n == 0:
            return []
        scores = self.score_documents(documents, query)
        order = sorted(range(len(documents)), key=lambda i: -scores[i])  # stable: ties keep input order
        if self.top_n is not None:
            order = order[: self.top_n]
        results = []
        for i in order:
            doc = documents[i].model_copy(deep=True)
            doc.metadata["relevance_score"] = scores[i]
            results.append(doc)
        return results

    async def acompress_documents(
        self,
        documents: Sequence[Document],
        query: str | dict[str, Any],
        callbacks: Callbacks | None = None,
    ) -> Sequence[Document]:
        """Async `compress_documents`: the model runs in a worker thread, the event loop stays free."""
        return await reranking_threads.run(self.compress_documents, documents, query, callbacks)
