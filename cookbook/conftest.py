"""`make test` runs the notebooks with `pytest --nbmake`: point them at tiny random checkpoints, offline.

nbmake starts each notebook's kernel as a subprocess of pytest, so the kernel inherits these variables. Values
already set in the environment win (e.g. QWEN3VL_EMBEDDING_MODEL=Qwen/Qwen3-VL-Embedding-2B to run the cookbook on
the real models).
"""
from __future__ import annotations

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("QWEN3VL_EMBEDDING_MODEL", "tiny")
os.environ.setdefault("QWEN3VL_RERANKER_MODEL", "tiny")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
if "QWEN3VL_CACHE_DIR" not in os.environ:  # tiny checkpoints are built once per test run, in a temporary folder
    _cache = tempfile.mkdtemp(prefix="qwen3vl-cookbook-cache-")
    os.environ["QWEN3VL_CACHE_DIR"] = _cache
    atexit.register(shutil.rmtree, _cache, ignore_errors=True)
