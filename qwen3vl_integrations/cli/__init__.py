"""``qwen3vl-search``: multimodal search over a folder of pictures, text files and videos.

Two commands::

    qwen3vl-search index FOLDER [--index-dir DIR] [--model NAME|PATH|tiny] [--dimensions K] ...
    qwen3vl-search query INDEX_DIR ["text"] [--image P] [--video P] [--top-k K] [--rerank] ...

``index`` embeds every image, text file and video of FOLDER with Qwen3-VL-Embedding into one vector space and
persists a LlamaIndex ``VectorStoreIndex`` (plus a small ``qwen3vl-manifest.json``) in the index directory.
``query`` embeds a text and/or image/video query with the query instruction, retrieves the nearest files,
optionally reranks them with Qwen3-VL-Reranker, prints a ranked table and writes a picture of the results.

The model name ``tiny`` builds tiny random checkpoints in a cache folder (no downloads): the pipeline runs offline,
but its rankings are meaningless. The Python functions :func:`build_index`, :func:`search`,
:func:`render_results_picture` and :func:`resolve_model_name` are what the commands use, for scripts and notebooks.
"""
from .constants import (
    DEFAULT_INDEX_DIR,
    MANIFEST_FORMAT,
    MANIFEST_NAME,
    PROG,
    REAL_EMBEDDING_MODEL,
    REAL_RERANKER_MODEL,
    TINY,
    TINY_WARNING,
)
from .errors import CLIError
from .models import resolve_model_name, tiny_checkpoint
from .scanning import ScanResult, scan_folder
from .indexing import build_index
from .searching import Hit, format_table, read_manifest, search
from .pictures import default_picture_path, picture_subtitle, render_results_picture
from .command_line import build_parser, main

__all__ = [
    "REAL_EMBEDDING_MODEL",
    "REAL_RERANKER_MODEL",
    "TINY",
    "MANIFEST_NAME",
    "CLIError",
    "Hit",
    "resolve_model_name",
    "tiny_checkpoint",
    "scan_folder",
    "build_index",
    "search",
    "format_table",
    "render_results_picture",
    "main",
]
