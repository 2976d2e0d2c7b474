"""The `torch_compile` option: the decoder layers of a call's forward passes under torch.compile
(core/compiled_layers.py). A counting backend shows which passes ran compiled; the numbers must not change."""
from __future__ import annotations

import collections
import contextlib
from typing import Any, Iterator

import numpy as np
import pytest
import torch

from qwen3vl_integrations import Qwen3VLEmbedder, Qwen3VLReranker
from qwen3vl_integrations.core.compiled_layers import compile_options, compiled_decoder_layers

RUNS: collections.Counter[str] = collections.Counter()


def counting_backend(graph: torch.fx.GraphModule, example_inputs: list[Any]) -> Any:
    """A torch.compile backend that runs the captured graph as it is and counts its runs."""
    RUNS["graphs"] += 1

    def run(*args: Any) -> Any:
        RUNS["runs"] += 1
        return graph(*args)

    return run


COUNTED = {"backend": counting_backend}


@pytest.fixture(autouse=True)
def fresh_dynamo():
    """Each test starts with no compiled code and no counts (the layers' code is shared by every module)."""
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    RUNS.clear()
    yield
    torch._dynamo.reset()


def close(got: np.ndarray, expected: np.ndarray, tolerance: float = 1e-5) -> bool:
    return got.shape == expected.shape and bool(np.abs(got - expected).max() <= tolerance)


@contextlib.contextmanager
def forward_passes(backbone: torch.nn.Module) -> Iterator[list[int]]:
    """A list that grows by one entry per forward pass of `backbone` within this block."""
    passes: list[int] = []
    hook = backbone.register_forward_hook(lambda *args: passes.append(1))
    try:
        yield passes
    finally:
        hook.remove()


def test_compiled_passes_give_the_eager_numbers(tiny_embedding_path, tiny_core_kwargs, media_dir):
    from torch._dynamo.utils import counters

    eager = Qwen3VLEmbedder(str(tiny_embedding_path), **tiny_core_kwargs)
    compiled = Qwen3VLEmbedder(str(tiny_embedding_path), torch_compile=COUNTED, **tiny_core_kwargs)
    backbone = eager.load().backbone
    assert compiled.load() is eager.load()  # one model: the option is the call's, not the model's
    items = ["a red circle", "a much longer text about a dog on a beach at sunset " * 6, "b",
             {"image": str(media_dir / "red.png")}, {"text": "a picture", "image": str(media_dir / "gray.png")}]
    expected = eager.embed(items)
    layers = len(backbone.language_model.layers)
    assert RUNS["runs"] == 0
    with forward_passes(backbone) as passes:
        got = compiled.embed(items)
    assert RUNS["runs"] == layers * len(passes) > 0  # every layer of every pass ran compiled, in one graph
    assert close(got, expected)
    assert not counters["graph_break"]
    assert all(layer._compiled_call_impl is None for layer in backbone.language_model.layers)
    runs = RUNS["runs"]
    assert close(eager.embed(items), expected) and RUNS["runs"] == runs  # other objects' passes run eagerly
    assert close(compiled.embed(items[:1]), expected[:1])


@pytest.mark.parametrize("share_query_prefix", [True, False])
def test_reranker_passes_compile_once_for_all_layers(deep_paths, tiny_core_kwargs, share_query_prefix):
    """Whole pairs, and rows after a cached query part (the cache's update and their attention run outside the
    graph), compile code that every layer shares: a second layer compiling anew would pass torch's recompile limit,
    set here to the two specialisations dynamic shapes make (batches of one row, and of more)."""
    documents = ["a red car", "the sky is blue and the sun is out " * 4, "x", "a dog on a beach"]
    eager = Qwen3VLReranker(str(deep_paths["reranker"]), share_query_prefix=share_query_prefix, **tiny_core_kwargs)
    compiled = Qwen3VLReranker(str(deep_paths["reranker"]), torch_compile=COUNTED,
                               share_query_prefix=share_query_prefix, **tiny_core_kwargs)
    backbone = compiled.load().backbone
    layers = len(backbone.language_model.layers)
    assert layers == 4
    with torch._dynamo.config.patch(recompile_limit=2, fail_on_recompile_limit_hit=True):
        with forward_passes(backbone) as passes:
            got = compiled.score("which car is red?", documents)
        assert close(np.asarray(got), np.asarray(eager.score("which car is red?", documents)))
        assert RUNS["runs"] >= layers * len(passes) > 0  # every layer of every pass ran compiled
        graphs = RUNS["graphs"]
        other = ["a blue bicycle " * 3, "y", "red, the car is red", "a car"]
        assert close(np.asarray(compiled.score("what is red?", other)), np.asarray(eager.score("what is red?", other)))
        assert RUNS["graphs"] == graphs  # new lengths and a new query part: the same compiled code


class _Backbone(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.language_model = torch.nn.Module()
        self.language_model.layers = torch.nn.ModuleList([torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)])


def test_layers_come_back_as_they_were():
    """Inside the block the layers run compiled; after it, eager again, or the user's own compiled call."""
    backbone = _Backbone()
    first, second = backbone.language_model.layers
    mine = torch.compile(second._call_impl, backend="eager")
    second._compiled_call_impl = mine
    x = torch.randn(3, 4)
    with compiled_decoder_layers(backbone, compile_options(COUNTED)):
        assert torch.equal(first(x), torch.nn.functional.linear(x, first.weight, first.bias))
        second(x)
        assert RUNS["runs"] == 2
    assert first._compiled_call_impl is None and second._compiled_call_impl is mine
    first(x)
    assert RUNS["runs"] == 2
    with compiled_decoder_layers(backbone, None):  # off: nothing changes
        first(x)
    assert RUNS["runs"] == 2


def test_option_values():
    assert compile_options(False) is None and compile_options(None) is None
    assert compile_options(True) == {"dynamic": True}
    assert compile_options({"mode": "max-autotune-no-cudagraphs"}) == {"dynamic": True,
                                                                       "mode": "max-autotune-no-cudagraphs"}
    assert compile_options({"dynamic": False}) == {"dynamic": False}
    with pytest.raises(TypeError, match="'bogus'"):
        compile_options({"bogus": 1})
    with pytest.raises(TypeError, match="'yes'"):
        compile_options("yes")


def test_constructors_and_adapters_take_the_option(tiny_embedding_path, tiny_core_kwargs):
    from qwen3vl_integrations.langchain import Qwen3VLEmbeddings
    from qwen3vl_integrations.llama_index import Qwen3VLEmbedding

    with pytest.raises(TypeError, match="bogus"):
        Qwen3VLEmbedder(str(tiny_embedding_path), torch_compile={"bogus": 1}, **tiny_core_kwargs)
    assert Qwen3VLEmbedder(str(tiny_embedding_path), **tiny_core_kwargs).torch_compile is None
    options = {"torch_compile": True, **tiny_core_kwargs}
    assert Qwen3VLEmbeddings(model_name=str(tiny_embedding_path), core_options=options).core_embedder.torch_compile \
        == {"dynamic": True}
    assert Qwen3VLEmbedding(model_name=str(tiny_embedding_path), core_options=options).embedder.torch_compile \
        == {"dynamic": True}


@pytest.mark.parametrize("share_query_prefix", [True, False])
def test_compiled_calls_from_several_threads(tiny_embedding_path, tiny_reranker_path, tiny_core_kwargs,
                                             share_query_prefix):
    """An embedder and a reranker compiling and running their layers from four threads at once (torch compiles
    one frame at a time; each model's passes take turns under its lock) give the sequential numbers."""
    import threading

    texts = ["a red car", "the sky is blue and the sun is out " * 3, "x", "a dog on a beach"]
    embedder = Qwen3VLEmbedder(str(tiny_embedding_path), torch_compile=COUNTED, **tiny_core_kwargs)
    reranker = Qwen3VLReranker(str(tiny_reranker_path), torch_compile=COUNTED, share_query_prefix=share_query_prefix,
                               **tiny_core_kwargs)
    expected = (Qwen3VLEmbedder(str(tiny_embedding_path), **tiny_core_kwargs).embed(texts),
                Qwen3VLReranker(str(tiny_reranker_path), share_query_prefix=share_query_prefix, **tiny_core_kwargs)
                .score("which car is red?", texts))
    results: list[tuple[int, np.ndarray]] = []
    failures: list[BaseException] = []

    def work(k: int) -> None:
        try:
            for _ in range(3):
                results.append((k % 2, embedder.embed(texts) if k % 2 == 0
                                else reranker.score("which car is red?", texts)))
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(k,)) for k in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not failures, failures
    assert len(results) == 12 and all(close(got, expected[kind]) for kind, got in results)
    assert RUNS["runs"] > 0
