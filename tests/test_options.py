"""Constructor and call options: a bad value fails at once and names the option (core/options.py, core/loading.py).

Before, strings were read as truth values (`allow_remote="false"` fetched URLs), floats were cut (`batch_size=2.5`
ran 2), `max_frames=0` escaped `try_embed` as a KeyError, and `fps=0` fell back to the default in silence.
"""
from __future__ import annotations

import numpy as np
import pytest
import torch

from qwen3vl_integrations import Qwen3VLEmbedder, Qwen3VLReranker
from qwen3vl_integrations.core.loading import load_shared, resolve_device


@pytest.mark.parametrize("option, value, error, message", [
    ("allow_remote", "false", TypeError, "allow_remote must be True or False, got 'false'"),
    ("join_concurrent_calls", "no", TypeError, "join_concurrent_calls must be True or False"),
    ("batch_size", 2.5, TypeError, "batch_size must be an integer, got 2.5"),
    ("batch_size", "4", TypeError, "batch_size must be an integer"),
    ("batch_size", True, TypeError, "batch_size must be an integer, got True"),
    ("batch_size", 0, ValueError, "batch_size must be at least 1, got 0"),
    ("max_batch_tokens", 1.5, TypeError, "max_batch_tokens must be an integer"),
    ("max_length", 8, ValueError, "max_length must be at least 16"),
    ("max_frames", 0, ValueError, "max_frames must be at least 2, got 0"),
    ("fps", 0, ValueError, "fps must be a positive finite number, got 0"),
    ("fps", float("nan"), ValueError, "fps must be a positive finite number"),
    ("total_pixels", -1, ValueError, "total_pixels must be at least 1"),
    ("min_pixels", -5, ValueError, "min_pixels must be at least 1"),
    ("remote_timeout", 0, ValueError, "remote_timeout must be a positive finite number"),
    ("max_remote_bytes", -1, ValueError, "max_remote_bytes must be at least 1"),
    ("max_image_pixels", 0, ValueError, "max_image_pixels must be at least 1"),
    ("preprocess_workers", -3, ValueError, "preprocess_workers must be at least 0, got -3"),
    ("allow_local_files", "false", ValueError, "allow_local_files must be True, False or an existing folder, got "
                                               "'false' (no such folder)"),
    ("allow_local_files", 1, TypeError, "allow_local_files must be True, False or a folder, got 1"),
    ("attn_implementation", "flash_attention_2", ValueError, "needs a CUDA device, the flash-attn 2 package and"),
    ("attn_implementation", 2, TypeError, "attn_implementation must be a str or None"),
])
def test_bad_constructor_option_is_refused_by_name(tiny_embedding_path, option, value, error, message):
    with pytest.raises(error, match=message.replace("(", r"\(").replace(")", r"\)")):
        Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu", **{option: value})


def test_good_option_values_of_other_types_are_taken(tiny_embedding_path):
    e = Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu", batch_size=np.int64(4), fps=2,
                        allow_remote=np.bool_(False), preprocess_workers=0)
    assert e.batch_size == 4 and type(e.batch_size) is int and e.limits.fps == 2.0 and e.policy.allow_remote is False


def test_allow_local_files_reaches_every_input(tiny_embedding_path, tiny_reranker_path, media_dir, tmp_path):
    """The adapters pass it in core_options; the reranker's query and documents obey it as the embedder's items."""
    from qwen3vl_integrations.langchain import Qwen3VLEmbeddings

    red = media_dir / "red.png"
    closed = Qwen3VLEmbeddings(model_name=str(tiny_embedding_path), core_options={"allow_local_files": False})
    with pytest.raises(ValueError, match="local files are disabled"):
        closed.embed_image(uris=[str(red)])
    assert len(closed.embed_documents(["text needs no file"])) == 1
    kept = Qwen3VLReranker(str(tiny_reranker_path), device="cpu", allow_local_files=str(tmp_path))
    assert kept.policy.local_files == tmp_path.resolve()
    with pytest.raises(ValueError, match=r"^document 0: .*outside the folder of allow_local_files"):
        kept.score("a red square", [{"image": str(red)}])
    with pytest.raises(ValueError, match=r"^query: .*outside the folder of allow_local_files"):
        kept.score({"image": str(red)}, ["a red square"])


def test_share_query_prefix_takes_a_bool_or_none(tiny_reranker_path):
    with pytest.raises(TypeError, match="share_query_prefix must be True or False, got 'no'"):
        Qwen3VLReranker(str(tiny_reranker_path), device="cpu", share_query_prefix="no")
    assert Qwen3VLReranker(str(tiny_reranker_path), device="cpu", share_query_prefix=None).share_query_prefix is None


@pytest.mark.parametrize("batch_size, error", [(0, ValueError), (-1, ValueError), (2.5, TypeError)])
def test_bad_call_batch_size_is_refused_before_any_model_work(tiny_embedding_path, tiny_reranker_path, batch_size,
                                                              error):
    e = Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu")
    r = Qwen3VLReranker(str(tiny_reranker_path), device="cpu")
    with pytest.raises(error, match="batch_size must be"):
        e.embed(["a"], batch_size=batch_size)
    with pytest.raises(error, match="batch_size must be"):
        r.score("q", ["a"], batch_size=batch_size)
    assert not e.is_loaded and not r.is_loaded


def test_rank_top_n(tiny_reranker_path):
    r = Qwen3VLReranker(str(tiny_reranker_path), device="cpu")
    with pytest.raises(ValueError, match="top_n must be at least 0, got -1"):
        r.rank("q", ["a", "b"], top_n=-1)
    with pytest.raises(TypeError, match="top_n must be an integer, got 2.7"):
        r.rank("q", ["a", "b"], top_n=2.7)
    assert len(r.rank("q", ["a", "b", "c"], top_n=2)) == 2 and r.rank("q", ["a"], top_n=0) == []


def test_official_process_refuses_a_bare_string(tiny_embedding_path, tiny_reranker_path):
    """`process("abc")` embedded three characters; `process({"text": ...})` embedded the word "text"."""
    e = Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu")
    for inputs in ("abc", {"text": "abc"}):
        with pytest.raises(TypeError, match="takes a list of inputs"):
            e.process(inputs)
    r = Qwen3VLReranker(str(tiny_reranker_path), device="cpu")
    with pytest.raises(TypeError, match='"documents" must be a list'):
        r.process({"query": "q", "documents": "abc"})
    with pytest.raises(TypeError, match="process\\(\\) takes a dict"):
        r.process([{"query": "q", "documents": ["a"]}])
    assert not e.is_loaded and not r.is_loaded


def test_cpu_device_names_share_one_model(tiny_embedding_path):
    assert resolve_device("cpu:0") == torch.device("cpu")
    first = Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu").load()
    assert Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu:0").load() is first


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error on a machine without CUDA")
def test_unavailable_device_is_named_when_the_model_loads(tiny_embedding_path):
    e = Qwen3VLEmbedder(str(tiny_embedding_path), device="cuda", dtype="float32")  # constructing touches no device
    with pytest.raises(RuntimeError, match="device 'cuda': CUDA is not available"):
        e.load()
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        load_shared(str(tiny_embedding_path), "embedding", torch.device("cuda", 1), torch.float32, "sdpa")
