"""The cookbook notebooks are what cookbook/_build_notebooks.py writes: valid nbformat v4, no committed outputs,
model names from the environment. (`make test` executes them with `pytest cookbook --nbmake`.)"""
from __future__ import annotations

import importlib.util
from pathlib import Path

import nbformat
import pytest

COOKBOOK = Path(__file__).resolve().parents[1] / "cookbook"
NOTEBOOKS = ["01_llama_index_multimodal_rag.ipynb", "02_langchain.ipynb", "03_storage_profiles.ipynb",
             "04_core_api.ipynb"]


def _builder():
    spec = importlib.util.spec_from_file_location("_build_notebooks", COOKBOOK / "_build_notebooks.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_notebooks_are_up_to_date(tmp_path):
    written = _builder().build(tmp_path)
    assert sorted(p.name for p in written) == NOTEBOOKS
    for path in written:
        committed = COOKBOOK / path.name
        assert committed.is_file(), f"{path.name} missing: run cookbook/_build_notebooks.py"
        assert committed.read_text() == path.read_text(), f"{path.name} is stale: run cookbook/_build_notebooks.py"


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_has_no_outputs_and_reads_model_names_from_the_environment(name):
    nb = nbformat.read(COOKBOOK / name, as_version=4)
    nbformat.validate(nb)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code)
    source = "\n".join(c.source for c in code)
    assert 'os.environ.get("QWEN3VL_EMBEDDING_MODEL", "Qwen/Qwen3-VL-Embedding-2B")' in source
    assert "resolve_model_name(" in source


def test_conftest_points_notebooks_at_tiny_models():
    text = (COOKBOOK / "conftest.py").read_text()
    assert 'setdefault("QWEN3VL_EMBEDDING_MODEL", "tiny")' in text
    assert 'setdefault("QWEN3VL_RERANKER_MODEL", "tiny")' in text


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_removes_the_sample_folder_it_made(name):
    nb = nbformat.read(COOKBOOK / name, as_version=4)
    code = [c.source for c in nb.cells if c.cell_type == "code"]
    assert any("tempfile.mkdtemp(" in source for source in code)
    assert "shutil.rmtree(DATA)" in code[-1]
