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


@pytest.mark.parametrize(("package", "blocked", "extra"), [("langchain", "langchain_core", "langchain"),
                                                         ("llama_index", "llama_index", "llama-index")])
def test_a_missing_framework_names_its_extra(package: str, blocked: str, extra: str) -> None:
    """Without the extra, the adapter package says what to install (LangChain's raised a bare ModuleNotFoundError)."""
    import subprocess
    import sys

    code = (f"import sys; sys.modules[{blocked!r}] = None\n"
            f"try:\n    import qwen3vl_integrations.{package}\nexcept ImportError as exc:\n    print(exc)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert f"pip install 'qwen3vl-integrations[{extra}]'" in out.stdout
