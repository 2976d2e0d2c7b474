"""LangChain adapters for Qwen3-VL-Embedding and Qwen3-VL-Reranker.

* `Qwen3VLEmbeddings`: an `Embeddings` with `embed_image(uris=...)` (used by Chroma, LanceDB and other
  image-aware vector stores), `embed_video(uris)` and `embed_multimodal(items)`;
* `Qwen3VLRerank`: a `BaseDocumentCompressor` that reranks text, image and video documents;
* `Qwen3VLCrossEncoder`: a text `BaseCrossEncoder` for `CrossEncoderReranker`.

Needs the ``langchain`` extra: ``pip install "qwen3vl-integrations[langchain]"``.
"""
from __future__ import annotations

try:
    import langchain_core.cross_encoders  # noqa: F401  (langchain-core >= 1.2.19)
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "qwen3vl_integrations.langchain needs langchain-core>=1.2.19: pip install 'qwen3vl-integrations[langchain]'"
    ) from exc

from .cross_encoder import Qwen3VLCrossEncoder
from .documents import document_to_item
from .embeddings import Qwen3VLEmbeddings
from .rerank import Qwen3VLRerank

__all__ = ["Qwen3VLCrossEncoder", "Qwen3VLEmbeddings", "Qwen3VLRerank", "document_to_item"]
