"""The names and defaults of ``qwen3vl-search``: its name, the default models, the index's files, the tiny warning."""
from __future__ import annotations

PROG = "qwen3vl-search"
REAL_EMBEDDING_MODEL = "Qwen/Qwen3-VL-Embedding-2B"
REAL_RERANKER_MODEL = "Qwen/Qwen3-VL-Reranker-2B"
TINY = "tiny"
MANIFEST_NAME = "qwen3vl-manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_INDEX_DIR = "qwen3vl-index"
TINY_WARNING = (
    "warning: using tiny random checkpoints (--model tiny): the pipeline runs, but rankings and scores are "
    "meaningless. Use the real models for real results."
)
