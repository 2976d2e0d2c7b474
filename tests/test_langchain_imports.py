"""The public surface of `qwen3vl_integrations.langchain` (as LangChain partner packages test it)."""
import pytest

pytest.importorskip("langchain_core")

EXPECTED_ALL = ["Qwen3VLCrossEncoder", "Qwen3VLEmbeddings", "Qwen3VLRerank", "document_to_item"]


def test_all_imports() -> None:
    from qwen3vl_integrations import langchain

    assert sorted(langchain.__all__) == sorted(EXPECTED_ALL)
    for name in EXPECTED_ALL:
        assert getattr(langchain, name) is not None


def test_import_loads_no_model() -> None:
    import subprocess
    import sys

    code = (
        "import sys; import qwen3vl_integrations.langchain as m; "
        "m.Qwen3VLEmbeddings(); m.Qwen3VLRerank(); m.Qwen3VLCrossEncoder(); "
        "print('transformers' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
