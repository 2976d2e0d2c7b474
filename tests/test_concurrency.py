"""Concurrent calls on one shared model (adapters call the core from threads) give the sequential results."""
from __future__ import annotations

import threading

import numpy as np
import pytest
from PIL import Image

from qwen3vl_integrations import Qwen3VLEmbedder

TINY = dict(device="cpu", min_pixels=4 * 32 * 32, max_pixels=64 * 32 * 32, total_pixels=256 * 32 * 32, max_frames=8)


def run_threads(target, n: int) -> list:
    """Start n threads together (a barrier), join them, and re-raise the first failure."""
    barrier = threading.Barrier(n)
    results: list = [None] * n
    failures: list = []

    def worker(k: int) -> None:
        try:
            barrier.wait(timeout=60)
            results[k] = target(k)
        except BaseException as exc:  # noqa: BLE001 - reported below
            failures.append(exc)

    threads = [threading.Thread(target=worker, args=(k,), name=f"caller-{k}") for k in range(n)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=300)
    assert not any(thread.is_alive() for thread in threads), "a caller thread hung"
    if failures:
        raise failures[0]
    return results


@pytest.fixture(scope="module")
def workloads(media_dir):
    frames = [Image.new("RGB", (64, 48), (60 * i, 90, 30)) for i in range(4)]
    return [
        ["first caller text", {"image": media_dir / "red.png", "text": "red"}, "x" * 300],
        [{"video": media_dir / "clip.mp4"}, "second caller", {"text": ["a", "b"], "instruction": "Find passages"}],
        [{"image": media_dir / "wide.png"}, {"video": frames}, "third caller text " * 10],
        ["fourth", {"image": [media_dir / "gray.png", media_dir / "rgba.png"], "text": "two"}, {}],
    ]


@pytest.fixture(scope="module")
def sequential(tiny_embedder, workloads):
    return [tiny_embedder.embed(items) for items in workloads]


def test_four_threads_one_embedder(tiny_embedder, workloads, sequential):
    for _ in range(3):
        results = run_threads(lambda k: tiny_embedder.embed(workloads[k]), 4)
        for k in range(4):
            assert np.abs(results[k] - sequential[k]).max() <= 1e-5, k


def test_four_threads_four_embedders_sharing_one_model(tiny_embedding_path, tiny_embedder, workloads, sequential):
    embedders = [Qwen3VLEmbedder(str(tiny_embedding_path), batch_size=1 + k, **TINY) for k in range(4)]
    results = run_threads(lambda k: embedders[k].embed(workloads[k]), 4)
    assert all(e.load() is tiny_embedder.load() for e in embedders)
    for k in range(4):
        assert np.abs(results[k] - sequential[k]).max() <= 1e-5, k


def test_concurrent_first_load(tiny_embedding_path, workloads, sequential):
    """Threads racing on the first call of a fresh object load the model once and agree."""
    e = Qwen3VLEmbedder(str(tiny_embedding_path), **TINY)
    results = run_threads(lambda k: (e.load(), e.embed(workloads[k])), 4)
    assert len({id(loaded) for loaded, _ in results}) == 1
    for k, (_, vectors) in enumerate(results):
        assert np.abs(vectors - sequential[k]).max() <= 1e-5, k


def test_concurrent_try_embed_and_errors(tiny_embedder, workloads, sequential):
    def call(k: int):
        if k % 2:
            return tiny_embedder.try_embed([123] + workloads[k])
        return tiny_embedder.embed(workloads[k])

    results = run_threads(call, 4)
    for k in range(4):
        if k % 2:
            assert results[k].indices.tolist() == [1, 2, 3] and results[k].errors[0].index == 0
            assert np.abs(results[k].embeddings - sequential[k]).max() <= 1e-5
        else:
            assert np.abs(results[k] - sequential[k]).max() <= 1e-5


_FIRST_WAVE = """
import sys, threading
from qwen3vl_integrations import Qwen3VLEmbedder
sys.setswitchinterval(1e-6)  # threads take turns often: the race shows up in most runs
embedders = [Qwen3VLEmbedder(sys.argv[1], device="cpu") for _ in range(8)]
barrier, errors = threading.Barrier(8), []
def first_call(embedder):
    barrier.wait()
    try:
        embedder.embedding_dim  # reads the config: the first thing a call does
    except Exception as exc:
        errors.append(f"{type(exc).__name__}: {exc}")
threads = [threading.Thread(target=first_call, args=(e,)) for e in embedders]
[t.start() for t in threads]
[t.join() for t in threads]
print(errors)
"""


def test_a_first_wave_of_concurrent_calls_in_a_fresh_process(tiny_embedding_path):
    """transformers imports its classes on first use, which is not thread-safe: 2-5 of 8 first calls from threads
    failed with `ImportError: cannot import name 'AutoConfig'` (an async service's first requests). Three fresh
    processes, as the race does not hit every time."""
    import subprocess
    import sys

    runs = [subprocess.Popen([sys.executable, "-c", _FIRST_WAVE, str(tiny_embedding_path)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True) for _ in range(3)]
    for run in runs:
        out, err = run.communicate(timeout=300)
        assert run.returncode == 0, err
        assert out.strip() == "[]", out


def test_objects_built_per_request_read_no_config(tiny_embedding_path, tiny_embedder, monkeypatch):
    """A service building an object per request read the model's config each time (from the hub, for a hub id),
    under the lock that model loads hold: a registered model's config is used instead."""
    import transformers

    tiny_embedder.load()
    monkeypatch.setattr(transformers.AutoConfig, "from_pretrained",
                        classmethod(lambda cls, *args, **kwargs: pytest.fail("the config was read again")))
    for _ in range(3):
        fresh = Qwen3VLEmbedder(str(tiny_embedding_path), **TINY)
        assert fresh.embedding_dim == tiny_embedder.embedding_dim
        assert np.allclose(fresh.embed(["a query"]), tiny_embedder.embed(["a query"]), atol=1e-6)


def test_a_failed_call_frees_its_inputs_at_once(tiny_embedding_path, tiny_embedder):
    """The error raised from inside the run was held by a local of the frame its traceback holds: a cycle that kept
    the call's inputs (and fetched files) until the collector ran."""
    import gc
    import io
    import weakref

    from qwen3vl_integrations import Qwen3VLInputError

    buffer = io.BytesIO()
    Image.new("RGB", (64, 64), (200, 10, 10)).save(buffer, "PNG")
    truncated = buffer.getvalue()[: len(buffer.getvalue()) // 2]  # its header reads: found while decoding
    image = Image.new("RGB", (64, 64))
    freed = weakref.ref(image)
    gc.disable()
    try:
        with pytest.raises(Qwen3VLInputError, match="unreadable image"):
            tiny_embedder.embed([{"image": image}, {"image": truncated}], batch_size=1)
        del image
        assert freed() is None
    finally:
        gc.enable()


def test_threads_borrow_processors_instead_of_copying_one_each(tiny_embedder, tiny_reranker, monkeypatch):
    """Each thread that ever prepared inputs kept its own deep copy of the processor: a server with a thread per
    request copied it on every request (about 0.6 s and 20 MB for a real 151k-token vocabulary)."""
    import copy
    import types

    from qwen3vl_integrations.core import loading

    copies: list = []
    monkeypatch.setattr(loading, "copy", types.SimpleNamespace(
        deepcopy=lambda obj, *args: copies.append(obj) or copy.deepcopy(obj, *args)))
    for model, call in ((tiny_embedder, lambda: tiny_embedder.embed(["a query"])),
                        (tiny_reranker, lambda: tiny_reranker.score("q", ["a", "b"]))):
        model.load()
        call()
        copies.clear()
        for _ in range(6):  # one thread per request, one after another
            thread = threading.Thread(target=call)
            thread.start()
            thread.join()
        assert copies == []  # the idle processor was lent each time
        run_threads(lambda k: call(), 4)  # at once: at most one copy per thread preparing at the same moment
        assert len(copies) <= 4


def _result_of_forked_child(target, *args):
    """What `target(*args, results)` puts on `results` in a forked child, or None if it hangs or fails."""
    import multiprocessing
    import queue

    context = multiprocessing.get_context("fork")
    results = context.Queue()
    child = context.Process(target=target, args=(*args, results))
    child.start()
    try:
        result = results.get(timeout=30)  # before join: a child exits only once its queue is read
    except queue.Empty:
        result = None
    child.join(10)
    if child.is_alive():
        child.kill()
    return result


def _embed_in_forked_child(embedder, texts, results) -> None:
    import torch

    torch.set_num_threads(1)  # torch's own OpenMP threads are not fork-safe either
    results.put(embedder.embed(texts, batch_size=8))


@pytest.mark.skipif(not hasattr(__import__("os"), "register_at_fork"), reason="needs fork")
def test_a_forked_worker_embeds_after_its_parent_did(tiny_embedding_path):
    """LlamaIndex's IngestionPipeline(num_workers=2) forks workers that inherit the loaded model. After the parent
    had run a call of several micro-batches, the child's call waited forever for preprocessing threads that fork
    does not copy."""
    embedder = Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu")
    texts = [f"text number {k} " * (1 + k % 5) for k in range(40)]
    expected = embedder.embed(texts, batch_size=8)  # 5 micro-batches: the preprocessing threads start
    vectors = _result_of_forked_child(_embed_in_forked_child, embedder, texts)
    assert vectors is not None, "the forked child's call hung (or failed)"
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_an_async_call_given_up_on_stops_before_its_next_forward_pass(tiny_embedding_path, monkeypatch):
    """`asyncio.wait_for`'s timeout (or a cancelled task) stopped the caller's wait, not the call: its thread ran
    every remaining forward pass, holding the model from later calls."""
    import asyncio
    import time

    from qwen3vl_integrations.core import runner
    from qwen3vl_integrations.langchain import Qwen3VLEmbeddings

    passes: list[int] = []
    forward = runner._last_token_states

    def counted(*args, **kwargs):
        passes.append(1)
        time.sleep(0.02)  # 200 passes: over 4 s
        return forward(*args, **kwargs)

    monkeypatch.setattr(runner, "_last_token_states", counted)
    embeddings = Qwen3VLEmbeddings(model_name=str(tiny_embedding_path), device="cpu", batch_size=1)
    texts = [f"text number {k}" for k in range(200)]

    async def give_up() -> None:
        with pytest.raises(asyncio.TimeoutError):
            await asyncio.wait_for(embeddings.aembed_documents(texts), 0.3)

    asyncio.run(give_up())  # returns once the default executor's threads are done
    assert len(passes) < 60, len(passes)
    assert len(embeddings.embed_documents(texts[:3])) == 3  # the object works on


def test_async_calls_waiting_for_the_model_leave_the_loops_default_pool_free(tiny_embedding_path):
    """The adapters' async calls ran in the loop's default pool, where a call waits for the model behind the others:
    a burst of them filled the pool that `asyncio.to_thread`, LangChain's `run_in_executor` (a vector store's search)
    and the application's own blocking work share."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor

    from qwen3vl_integrations.langchain import Qwen3VLEmbeddings

    embeddings = Qwen3VLEmbeddings(model_name=str(tiny_embedding_path), device="cpu")
    queries = [f"query number {k}" for k in range(8)]
    expected = [embeddings.embed_query(q) for q in queries]
    model = embeddings.core_embedder.load()

    async def burst() -> list[list[float]]:
        asyncio.get_running_loop().set_default_executor(ThreadPoolExecutor(4))
        with model.lock:  # another call's forward pass: these calls wait for the model
            calls = [asyncio.ensure_future(embeddings.aembed_query(q)) for q in queries]
            await asyncio.sleep(0.3)
            # Python's own blocking work is not queued behind them
            assert await asyncio.wait_for(asyncio.to_thread(sum, [1, 2]), 10) == 3
        return await asyncio.wait_for(asyncio.gather(*calls), 60)

    vectors = asyncio.run(burst())
    np.testing.assert_allclose(vectors, expected, atol=1e-6)


def test_a_flood_of_async_embeddings_does_not_hold_up_a_rerank(tiny_embedding_path, tiny_reranker_path):
    """Embedding and reranking calls wait in pools of their own: in one pool, reranks queued behind every embedding
    call beyond its size although the reranker was free."""
    import asyncio

    from langchain_core.documents import Document

    from qwen3vl_integrations.core.async_calls import THREADS_PER_POOL
    from qwen3vl_integrations.langchain import Qwen3VLEmbeddings, Qwen3VLRerank

    embeddings = Qwen3VLEmbeddings(model_name=str(tiny_embedding_path), device="cpu")
    reranker = Qwen3VLRerank(model_name=str(tiny_reranker_path), device="cpu", top_n=2)
    documents = [Document(page_content=f"document {k}") for k in range(3)]
    expected = reranker.compress_documents(documents, "a query")
    embeddings.embed_query("warm")
    model = embeddings.core_embedder.load()

    async def flood() -> list[Document]:
        with model.lock:
            calls = [asyncio.ensure_future(embeddings.aembed_query(f"query {k}"))
                     for k in range(THREADS_PER_POOL + 8)]
            await asyncio.sleep(0.3)
            reranked = await asyncio.wait_for(reranker.acompress_documents(documents, "a query"), 30)
        await asyncio.wait_for(asyncio.gather(*calls), 60)
        return list(reranked)

    reranked = asyncio.run(flood())
    assert [d.page_content for d in reranked] == [d.page_content for d in expected]
    assert [d.metadata["relevance_score"] for d in reranked] == pytest.approx(
        [d.metadata["relevance_score"] for d in expected], abs=1e-6)


def _async_query_in_forked_child(embeddings, results) -> None:
    import asyncio

    import torch

    torch.set_num_threads(1)
    results.put(asyncio.run(embeddings.aembed_query("a query")))


@pytest.mark.skipif(not hasattr(__import__("os"), "register_at_fork"), reason="needs fork")
def test_a_forked_worker_runs_async_calls_after_its_parent_did(tiny_embedding_path):
    """Our async calls' threads are not copied by fork: a child's pool would wait for its parent's idle thread."""
    import asyncio

    from qwen3vl_integrations.langchain import Qwen3VLEmbeddings

    embeddings = Qwen3VLEmbeddings(model_name=str(tiny_embedding_path), device="cpu")
    expected = asyncio.run(embeddings.aembed_query("a query"))  # the pool's thread starts, then idles
    vector = _result_of_forked_child(_async_query_in_forked_child, embeddings)
    assert vector is not None, "the forked child's async call hung (or failed)"
    np.testing.assert_allclose(vector, expected, atol=1e-6)
