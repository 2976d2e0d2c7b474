"""Every ```python block of README.md runs, in order, on the tiny checkpoints (real model names substituted)."""
from __future__ import annotations

import re
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"
BLOCK = re.compile(r"```python\n(.*?)```", re.DOTALL)


def python_blocks() -> list[str]:
    return BLOCK.findall(README.read_text(encoding="utf-8"))


def test_readme_has_python_examples():
    assert len(python_blocks()) >= 5


def test_readme_python_blocks_run(tmp_path, monkeypatch, tiny_embedding_path, tiny_reranker_path):
    from qwen3vl_integrations.sample_data import generate_sample_data

    generate_sample_data(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    names = {
        "Qwen/Qwen3-VL-Embedding-2B": str(tiny_embedding_path),
        "Qwen/Qwen3-VL-Embedding-8B": str(tiny_embedding_path),
        "Qwen/Qwen3-VL-Reranker-2B": str(tiny_reranker_path),
        "Qwen/Qwen3-VL-Reranker-8B": str(tiny_reranker_path),
    }
    # Other tests may have created an in-process Chroma client with other settings; the README's is a fresh one.
    from chromadb.api.client import SharedSystemClient

    SharedSystemClient.clear_system_cache()
    namespace: dict = {"__name__": "__readme__"}
    for number, block in enumerate(python_blocks(), start=1):
        for real, tiny in names.items():
            block = block.replace(real, tiny)
        try:
            exec(compile(block, f"README.md python block {number}", "exec"), namespace)
        except Exception as exc:  # name the failing block
            pytest.fail(f"README python block {number} failed: {type(exc).__name__}: {exc}\n{block}")
