"""Qwen3-VL-Embedding and Qwen3-VL-Reranker for LlamaIndex and LangChain.

The core classes are imported lazily so that `import qwen3vl_integrations.quantization` stays light.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"
__all__ = ["Qwen3VLEmbedder", "Qwen3VLReranker", "Qwen3VLInputError", "EmbeddingResult", "__version__"]

if TYPE_CHECKING:
    from .core.embedder import EmbeddingResult, Qwen3VLEmbedder
    from .core.errors import Qwen3VLInputError
    from .core.reranker import Qwen3VLReranker

_LAZY = {
    "Qwen3VLEmbedder": ".core.embedder",
    "EmbeddingResult": ".core.embedder",
    "Qwen3VLReranker": ".core.reranker",
    "Qwen3VLInputError": ".core.errors",
}


if not TYPE_CHECKING:  # type checkers see the imports above, and flag a misspelt name

    def __getattr__(name: str) -> Any:
        if name in _LAZY:
            import importlib

            return getattr(importlib.import_module(_LAZY[name], __name__), name)
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
