"""LlamaIndex adapters: ``Qwen3VLEmbedding`` (a ``MultiModalEmbedding``) and ``Qwen3VLRerank`` (a node postprocessor).

Install with ``pip install "qwen3vl-integrations[llama-index]"``.
"""
from __future__ import annotations

try:
    import llama_index.core  # noqa: F401
except ImportError as exc:  # pragma: no cover - depends on the environment
    raise ImportError(
        "qwen3vl_integrations.llama_index needs llama-index-core: pip install 'qwen3vl-integrations[llama-index]'"
    ) from exc

from .embedding import (Qwen3VLEmbedding, aimage_query_bundle, avideo_query_bundle, image_query_bundle,
                        video_query_bundle)
from .nodes import node_modality, node_to_item, query_bundle_to_item
from .readers import Qwen3VLMediaReader, media_file_extractor
from .rerank import Qwen3VLRerank

__all__ = [
    "Qwen3VLEmbedding",
    "Qwen3VLRerank",
    "Qwen3VLMediaReader",
    "media_file_extractor",
    "image_query_bundle",
    "aimage_query_bundle",
    "avideo_query_bundle",
    "video_query_bundle",
    "node_to_item",
    "node_modality",
    "query_bundle_to_item",
]
