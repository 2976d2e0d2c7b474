"""LlamaIndex adapters: Qwen3VLEmbedding (MultiModalEmbedding) and Qwen3VLRerank (BaseNodePostprocessor).

Two layers:
- fake-core tests (no model): fields, serialisation, laziness, instructions, node routing, events;
- tiny-checkpoint tests: real LlamaIndex indexes, pipelines and query engines on the tiny random checkpoints, with
  results compared to what the core itself computes.
"""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import pickle
import shutil
import threading
import time
import warnings
from pathlib import Path
from typing import Any, List

import numpy as np
import pytest

pytest.importorskip("llama_index.core")

from llama_index.core import QueryBundle, SimpleDirectoryReader, VectorStoreIndex  # noqa: E402
from llama_index.core.callbacks import CallbackManager, CBEventType, LlamaDebugHandler  # noqa: E402
from llama_index.core.embeddings import MultiModalEmbedding  # noqa: E402
from llama_index.core.indices import MultiModalVectorStoreIndex  # noqa: E402
from llama_index.core.ingestion import IngestionPipeline  # noqa: E402
from llama_index.core.instrumentation import get_dispatcher  # noqa: E402
from llama_index.core.instrumentation.event_handlers import BaseEventHandler  # noqa: E402
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent  # noqa: E402
from llama_index.core.llms import MockLLM  # noqa: E402
from llama_index.core.node_parser import SentenceSplitter  # noqa: E402
from llama_index.core.postprocessor.types import BaseNodePostprocessor  # noqa: E402
from llama_index.core.query_engine import RetrieverQueryEngine  # noqa: E402
from llama_index.core.schema import (  # noqa: E402
    ImageDocument,
    ImageNode,
    MediaResource,
    MetadataMode,
    Node,
    NodeWithScore,
    TextNode,
)

from qwen3vl_integrations.core.async_calls import CallGivenUp, stop_if_given_up  # noqa: E402
from qwen3vl_integrations.core.errors import Qwen3VLInputError  # noqa: E402
from qwen3vl_integrations.core.prompts import DEFAULT_QUERY_INSTRUCTION  # noqa: E402
from qwen3vl_integrations.llama_index import (  # noqa: E402
    Qwen3VLEmbedding,
    Qwen3VLRerank,
    image_query_bundle,
    media_file_extractor,
    node_modality,
    node_to_item,
    query_bundle_to_item,
    video_query_bundle,
)
from qwen3vl_integrations.llama_index.embedding import DEFAULT_EMBED_BATCH_SIZE  # noqa: E402

TOL = 1e-5


# ============================================================================ fakes


def _key(value: Any) -> bytes:
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, (bytes, bytearray)):
        return bytes(value)
    if isinstance(value, io.BytesIO):
        return value.getvalue()
    if isinstance(value, Path):
        return str(value).encode()
    if isinstance(value, dict):
        return b"|".join(k.encode() + b"=" + _key(v) for k, v in sorted(value.items()))
    if isinstance(value, (list, tuple)):
        return b"[" + b",".join(_key(v) for v in value) + b"]"
    if hasattr(value, "tobytes"):
        return value.tobytes()
    return repr(value).encode()


class FakeEmbedder:
    """Duck-typed core embedder: deterministic unit vectors from the item's content; records every call."""

    model_name_or_path = "fake/embedder"
    embedding_dim = 8

    def __init__(self, batch_size: int = 4, **kwargs: Any) -> None:
        self.batch_size = batch_size
        self.kwargs = kwargs
        self.calls: List[dict] = []
        self.checked: List[list] = []  # the inputs of each check_inputs call
        self.fail_at: int | None = None

    def vector(self, item: Any, instruction: Any = None) -> np.ndarray:
        digest = hashlib.sha256(_key(item) + b"#" + _key(instruction)).digest()
        v = np.frombuffer(digest[: self.embedding_dim], dtype=np.uint8).astype(np.float32) - 127.5
        return v / np.linalg.norm(v)

    def check_inputs(self, items):
        self.checked.append(list(items))
        return []

    def embed(self, items, *, instruction=None, dimensions=None, batch_size=None, show_progress=False, **kw):
        items = list(items)
        self.calls.append(dict(items=items, instruction=instruction, dimensions=dimensions, batch_size=batch_size))
        if self.fail_at is not None and self.fail_at < len(items):
            raise Qwen3VLInputError("image file not found: 'x.png'", index=self.fail_at)
        out = np.stack([self.vector(item, instruction) for item in items]).astype(np.float32)
        return out[:, :dimensions] if dimensions else out


class FakeReranker:
    """Duck-typed core reranker: scores from a hash of (query, document); records every call."""

    model_name_or_path = "fake/reranker"

    def __init__(self, **kwargs: Any) -> None:
        self.kwargs = kwargs
        self.calls: List[dict] = []

    def one(self, query: Any, document: Any) -> float:
        digest = hashlib.sha256(_key(query) + b"#" + _key(document)).digest()
        return (int.from_bytes(digest[:4], "little") + 1) / (2**32 + 2)

    def score(self, query, documents, *, instruction=None, batch_size=None):
        documents = list(documents)
        self.calls.append(dict(query=query, documents=documents, instruction=instruction, batch_size=batch_size))
        return np.array([self.one(query, d) for d in documents], dtype=np.float32)


class EventCollector(BaseEventHandler):
    """Instrumentation event handler that keeps every event it sees."""

    events: List[Any] = []

    @classmethod
    def class_name(cls) -> str:
        return "EventCollector"

    def handle(self, event: Any, **kwargs: Any) -> None:
        self.events.append(event)


@pytest.fixture
def events():
    """Collects instrumentation events from the root dispatcher for one test."""
    root = get_dispatcher()
    handler = EventCollector(events=[])
    root.add_event_handler(handler)
    try:
        yield handler.events
    finally:
        root.event_handlers.remove(handler)


@pytest.fixture
def png_bytes() -> bytes:
    from PIL import Image

    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (10, 200, 30)).save(buffer, format="PNG")
    return buffer.getvalue()


# ============================================================================ fake-core tests: embedding


def test_embedding_fields_and_serialisation():
    emb = Qwen3VLEmbedding(dtype="bfloat16", dimensions=64, core_options={"attn_implementation": "sdpa"})
    assert isinstance(emb, MultiModalEmbedding)
    assert Qwen3VLEmbedding.class_name() == "Qwen3VLEmbedding"
    assert emb.model_name == "Qwen/Qwen3-VL-Embedding-2B"
    assert emb.query_instruction == DEFAULT_QUERY_INSTRUCTION
    assert emb.text_instruction is None and emb.max_pixels is None and emb.device is None
    assert emb._embedder is None  # lazy: no core object yet

    data = emb.to_dict()
    assert data["class_name"] == "Qwen3VLEmbedding"
    assert data["dimensions"] == 64 and data["dtype"] == "bfloat16"
    assert data["core_options"] == {"attn_implementation": "sdpa"}
    assert not any("embedder" in key for key in data)
    emb.to_json()  # JSON-serialisable
    again = Qwen3VLEmbedding.from_dict(data)
    assert again.to_dict() == data
    assert emb.to_payload()["class_name"] == "Qwen3VLEmbedding"


def test_embedding_dtype_accepts_torch_dtype():
    torch = pytest.importorskip("torch")
    assert Qwen3VLEmbedding(dtype=torch.bfloat16).dtype == "bfloat16"


def test_embedding_builds_core_lazily_with_options(monkeypatch):
    import qwen3vl_integrations

    built = []

    class Recording(FakeEmbedder):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            built.append(kwargs)

    monkeypatch.setattr(qwen3vl_integrations, "Qwen3VLEmbedder", Recording, raising=False)
    emb = Qwen3VLEmbedding(
        model_name="some/model", device="cpu", dtype="float32", max_pixels=4096, embed_batch_size=3,
        core_options={"fps": 2.0},
    )
    assert built == []
    vector = emb.get_text_embedding("hello")
    assert len(built) == 1
    assert built[0] == dict(model_name_or_path="some/model", device="cpu", dtype="float32", max_pixels=4096, fps=2.0)
    emb.get_query_embedding("again")
    assert len(built) == 1  # built once
    assert isinstance(vector, list) and all(type(x) is float for x in vector)

    # pickling drops a core object the adapter built itself, and rebuilds it on use
    clone = pickle.loads(pickle.dumps(emb))
    assert clone._embedder is None and clone.to_dict() == emb.to_dict()


def test_embedding_with_existing_core():
    fake = FakeEmbedder(batch_size=6)
    emb = Qwen3VLEmbedding(embedder=fake)
    assert emb.embedder is fake
    assert emb.model_name == "fake/embedder"
    assert emb.embed_batch_size == DEFAULT_EMBED_BATCH_SIZE  # LlamaIndex's chunks; the core keeps its own cap
    assert emb.embedding_dim == 8
    # embedding_dim is what a vector store sizes itself by: a size the model cannot give fails here
    for dimensions, problem in [(4, "below 64"), (128, "larger than the embedding size 8")]:
        with pytest.raises(ValueError, match=f"dimensions={dimensions} is {problem}"):
            Qwen3VLEmbedding(embedder=fake, dimensions=dimensions).embedding_dim
    wide = FakeEmbedder()
    wide.embedding_dim = 128
    assert Qwen3VLEmbedding(embedder=wide, dimensions=64).embedding_dim == 64
    clone = pickle.loads(pickle.dumps(emb))  # a user-given core object is kept
    assert isinstance(clone.embedder, FakeEmbedder)
    owned = Qwen3VLEmbedding()
    owned._embedder = FakeEmbedder()  # as if built lazily: dropped by pickle, rebuilt on use
    assert pickle.loads(pickle.dumps(owned))._embedder is None and owned._embedder is not None
    owned_rr = Qwen3VLRerank()
    owned_rr._reranker = FakeReranker()
    assert pickle.loads(pickle.dumps(owned_rr))._reranker is None
    assert isinstance(pickle.loads(pickle.dumps(Qwen3VLRerank(reranker=FakeReranker())))._reranker, FakeReranker)


def test_batch_methods_hand_the_core_calls_of_embed_batch_size(png_bytes):
    """LlamaIndex's get_*_batch methods chunk by embed_batch_size: by default 256 items per core call (which the
    core sorts and micro-batches itself); a forward pass holds at most embed_batch_size items and the core's own
    batch_size."""
    fake = FakeEmbedder(batch_size=32)
    emb = Qwen3VLEmbedding(embedder=fake)
    texts = [f"text {k}" for k in range(300)]
    vectors = emb.get_text_embedding_batch(texts)
    assert [len(call["items"]) for call in fake.calls] == [256, 44]
    assert [call["batch_size"] for call in fake.calls] == [32, 32]
    assert vectors == [fake.vector(text, None).tolist() for text in texts]  # order kept across the calls

    fake.calls.clear()
    emb.get_image_embedding_batch([io.BytesIO(png_bytes) for _ in range(300)])
    assert [len(call["items"]) for call in fake.calls] == [256, 44]

    small = Qwen3VLEmbedding(embedder=fake, embed_batch_size=8)  # a smaller chunk also caps the forward pass
    fake.calls.clear()
    small.get_text_embedding_batch(texts[:20])
    assert [(len(call["items"]), call["batch_size"]) for call in fake.calls] == [(8, 8), (8, 8), (4, 8)]


def test_embedding_instructions_and_floats(png_bytes):
    fake = FakeEmbedder()
    emb = Qwen3VLEmbedding(embedder=fake, text_instruction="Represent this document.", dimensions=4)

    q = emb.get_query_embedding("a red car")
    assert fake.calls[-1]["instruction"] == DEFAULT_QUERY_INSTRUCTION
    assert fake.calls[-1]["items"] == ["a red car"] and fake.calls[-1]["dimensions"] == 4
    assert len(q) == 4 and all(type(x) is float for x in q)

    t = emb.get_text_embedding_batch(["a", "b", "c"])
    assert len(t) == 3 and fake.calls[-1]["instruction"] == "Represent this document."
    assert fake.calls[-1]["items"] == ["a", "b", "c"]  # one batched call

    from PIL import Image

    pil = Image.open(io.BytesIO(png_bytes))
    images = emb.get_image_embedding_batch(["x.png", "https://h/y.jpg", io.BytesIO(png_bytes), pil])
    assert len(images) == 4 and all(type(x) is float for v in images for x in v)
    call = fake.calls[-1]
    assert [list(item) for item in call["items"]] == [["image"]] * 4
    assert call["items"][0] == {"image": "x.png"} and call["items"][3]["image"] is pil
    assert call["instruction"] == "Represent this document."

    emb.get_image_query_embedding("q.png")
    assert fake.calls[-1] == dict(items=[{"image": "q.png"}], instruction=DEFAULT_QUERY_INSTRUCTION, dimensions=4,
                                  batch_size=fake.batch_size)
    emb.get_video_query_embedding("q.mp4")
    assert fake.calls[-1]["items"] == [{"video": "q.mp4"}]
    assert fake.calls[-1]["instruction"] == DEFAULT_QUERY_INSTRUCTION

    videos = emb.get_video_embeddings(["a.mp4", "b.mp4"])
    assert len(videos) == 2 and fake.calls[-1]["items"] == [{"video": "a.mp4"}, {"video": "b.mp4"}]
    assert fake.calls[-1]["instruction"] == "Represent this document."
    assert emb.get_video_embedding("a.mp4") == videos[0]

    mixed = emb.get_multimodal_embedding(text="caption", image="x.png", video="a.mp4")
    assert fake.calls[-1]["items"] == [{"text": "caption", "image": "x.png", "video": "a.mp4"}]
    assert fake.calls[-1]["instruction"] == "Represent this document."
    assert len(mixed) == 4
    emb.get_multimodal_embedding(text="q", image="x.png", instruction=emb.query_instruction)
    assert fake.calls[-1]["instruction"] == DEFAULT_QUERY_INSTRUCTION
    with pytest.raises(ValueError):
        emb.get_multimodal_embedding()

    # text-to-image search in MultiModalVectorStoreIndex goes through the query path
    assert emb.get_agg_embedding_from_queries(["a red car"]) == pytest.approx(q)


async def test_embedding_async_paths():
    fake = FakeEmbedder()
    emb = Qwen3VLEmbedding(embedder=fake)
    assert await emb.aget_query_embedding("q") == emb.get_query_embedding("q")
    assert await emb.aget_text_embedding("t") == emb.get_text_embedding("t")
    assert await emb.aget_text_embedding_batch(["a", "b"]) == emb.get_text_embedding_batch(["a", "b"])
    assert await emb.aget_image_embedding("x.png") == emb.get_image_embedding("x.png")
    assert await emb.aget_image_embedding_batch(["x.png", "y.png"]) == emb.get_image_embedding_batch(
        ["x.png", "y.png"]
    )
    assert await emb.aget_video_embedding("a.mp4") == emb.get_video_embedding("a.mp4")
    assert await emb.aget_video_embeddings(["a.mp4"]) == emb.get_video_embeddings(["a.mp4"])
    assert await emb.aget_image_query_embedding("q.png") == emb.get_image_query_embedding("q.png")
    assert await emb.aget_video_query_embedding("q.mp4") == emb.get_video_query_embedding("q.mp4")
    assert await emb.aget_multimodal_embedding(text="t", image="x.png") == emb.get_multimodal_embedding(
        text="t", image="x.png"
    )


def test_media_callback_events():
    handler = LlamaDebugHandler()
    emb = Qwen3VLEmbedding(embedder=FakeEmbedder(), callback_manager=CallbackManager([handler]))
    emb.get_video_embeddings(["a.mp4", "b.mp4"])
    emb.get_image_embedding_batch(["x.png"])
    pairs = handler.get_event_pairs(CBEventType.EMBEDDING)
    assert len(pairs) == 2
    assert pairs[0][1].payload["chunks"] == ["a.mp4", "b.mp4"]


# ============================================================================ fake-core tests: nodes


def _mixed_nodes(png_bytes: bytes) -> List[Any]:
    b64 = base64.b64encode(png_bytes).decode()
    return [
        TextNode(text="plain text", id_="text"),
        ImageNode(image_path="/data/a.png", text="a caption", metadata={"file_path": "/data/a.png"}, id_="img-path"),
        ImageNode(image=b64, id_="img-b64"),
        ImageNode(image_url="https://example.com/b.jpg", id_="img-url"),
        Node(image_resource=MediaResource(path=Path("/data/c.png")), id_="node-img"),
        Node(video_resource=MediaResource(url="https://example.com/v.mp4"), id_="node-video"),
        Node(image_resource=MediaResource(data=png_bytes), id_="node-img-data"),
        TextNode(text="", metadata={"video_path": "/data/clip.mp4"}, id_="meta-video"),
        TextNode(text="", metadata={"image_url": "https://example.com/d.png"}, id_="meta-image"),
        TextNode(text="", metadata={"file_path": "/data/clip.MOV"}, id_="file-video"),
        TextNode(text="", metadata={"file_path": "/data/scan.jpeg"}, id_="file-image"),
        TextNode(text="", metadata={"file_path": "/data/blob", "file_type": "video/mp4"}, id_="file-type-video"),
        TextNode(text="transcript chunk", metadata={"file_path": "/data/clip.mp4"}, id_="transcript"),
        TextNode(text="notes", metadata={"file_path": "/data/notes.txt"}, id_="notes"),
    ]


def test_node_to_item(png_bytes):
    nodes = {node.node_id: node for node in _mixed_nodes(png_bytes)}
    expect = {
        "text": ("text", "plain text"),
        "img-path": ("image", {"image": "/data/a.png"}),  # image only: not the caption
        "img-url": ("image", {"image": "https://example.com/b.jpg"}),
        "node-img": ("image", {"image": "/data/c.png"}),
        "node-video": ("video", {"video": "https://example.com/v.mp4"}),
        "node-img-data": ("image", {"image": png_bytes}),
        "meta-video": ("video", {"video": "/data/clip.mp4"}),
        "meta-image": ("image", {"image": "https://example.com/d.png"}),
        "file-video": ("video", {"video": "/data/clip.MOV"}),
        "file-image": ("image", {"image": "/data/scan.jpeg"}),
        "file-type-video": ("video", {"video": "/data/blob"}),
    }
    for node_id, expected in expect.items():
        assert node_to_item(nodes[node_id]) == expected, node_id
    kind, item = node_to_item(nodes["img-b64"])
    assert kind == "image" and item["image"].getvalue() == png_bytes
    # a text chunk whose file is a video keeps its text (with metadata, as LlamaIndex embeds text)
    assert node_to_item(nodes["transcript"]) == (
        "text", nodes["transcript"].get_content(metadata_mode=MetadataMode.EMBED)
    )
    assert "transcript chunk" in node_to_item(nodes["transcript"])[1]
    assert node_modality(nodes["notes"]) == "text"
    both = Node(image_resource=MediaResource(path=Path("/p.png")), video_resource=MediaResource(path=Path("/v.mp4")))
    assert node_to_item(both) == ("video", {"image": "/p.png", "video": "/v.mp4"})


def test_query_bundle_to_item():
    assert query_bundle_to_item(QueryBundle("red car")) == "red car"
    assert query_bundle_to_item(QueryBundle("", image_path="/q.png")) == {"image": "/q.png"}
    assert query_bundle_to_item(QueryBundle("like this", image_path="/q.png")) == {
        "image": "/q.png", "text": "like this"
    }
    assert query_bundle_to_item(QueryBundle("", image_path="https://h/q.mp4?x=1")) == {"video": "https://h/q.mp4?x=1"}
    with pytest.raises(ValueError):
        query_bundle_to_item(QueryBundle("  "))


@pytest.mark.filterwarnings("ignore:.*no embed content:UserWarning")  # nodes built to route, not to index
def test_transformation_routes_nodes_by_modality(png_bytes):
    fake = FakeEmbedder(batch_size=64)
    emb = Qwen3VLEmbedding(embedder=fake, text_instruction="Doc.")
    nodes = _mixed_nodes(png_bytes)
    out = emb(nodes)
    assert out is nodes
    # one core call per modality: text, image, video
    assert len(fake.calls) == 3
    text_call, image_call, video_call = fake.calls
    assert all(isinstance(item, str) for item in text_call["items"]) and len(text_call["items"]) == 3
    assert all(set(item) == {"image"} for item in image_call["items"]) and len(image_call["items"]) == 7
    assert all("video" in item for item in video_call["items"]) and len(video_call["items"]) == 4
    assert {call["instruction"] for call in fake.calls} == {"Doc."}
    for node in nodes:
        kind, item = node_to_item(node)
        assert node.embedding is not None and all(type(x) is float for x in node.embedding)
        assert np.allclose(node.embedding, fake.vector(item, "Doc."), atol=1e-6), node.node_id


@pytest.mark.filterwarnings("ignore:.*no embed content:UserWarning")  # nodes built to route, not to index
async def test_transformation_async_and_pipeline(png_bytes):
    fake = FakeEmbedder()
    emb = Qwen3VLEmbedding(embedder=fake)
    nodes = _mixed_nodes(png_bytes)
    await emb.acall(nodes)
    expected = {node.node_id: node.embedding for node in nodes}
    fresh = _mixed_nodes(png_bytes)
    pipeline = IngestionPipeline(transformations=[emb])
    result = await pipeline.arun(nodes=fresh)
    assert {node.node_id: node.embedding for node in result} == expected
    result = IngestionPipeline(transformations=[emb]).run(nodes=_mixed_nodes(png_bytes))
    assert {node.node_id: node.embedding for node in result} == expected


class ChunkedFakeEmbedder(FakeEmbedder):
    """A fake core whose texts starting with "bad" are bad inputs, refused (all of a call's at once) before any model
    work, as the core does; a call of good texts runs `passes` forward passes of 10 ms, stopping between them once it
    is given up. `ended` says how each call ended: "done", "stopped" or "bad"."""

    def __init__(self, passes: int = 0, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.passes = passes
        self.ended: List[str] = []
        self.running = 0
        self.lock = threading.Lock()

    @staticmethod
    def _bad(items: List[Any]) -> List[Qwen3VLInputError]:
        return [Qwen3VLInputError(f"bad text {item!r}", index=k) for k, item in enumerate(items)
                if str(item).startswith("bad")]

    def check_inputs(self, items):
        self.checked.append(list(items))
        return self._bad(list(items))

    def embed(self, items, **kwargs):
        items = list(items)
        with self.lock:
            self.running += 1
        try:
            bad = self._bad(items)
            if bad:
                self.ended.append("bad")
                raise Qwen3VLInputError(bad[0].cause, index=bad[0].index, others=bad[1:])
            for _ in range(self.passes):
                try:
                    stop_if_given_up()
                except CallGivenUp:
                    self.ended.append("stopped")
                    raise
                time.sleep(0.01)
            self.ended.append("done")
            return super().embed(items, **kwargs)
        finally:
            with self.lock:
                self.running -= 1


CHUNKED_TEXTS = ["a", "b", "bad c", "d", "e", "bad f", "g", "bad h", "i"]  # chunks of 2: 3 of 5 have a bad text


def test_batch_errors_report_the_chunks_after_the_failed_one_without_embedding_them():
    """LlamaIndex embeds the chunks in turn and stops at the first that raises: the bad inputs of the chunks after it
    are reported too, by their positions in the caller's list, found by the core's checks (nothing embedded)."""
    fake = ChunkedFakeEmbedder()
    emb = Qwen3VLEmbedding(embedder=fake, embed_batch_size=2)
    with pytest.raises(Qwen3VLInputError,
                       match=r"^item 2: bad text 'bad c' \(and 2 more bad inputs: items 5, 7;") as info:
        emb.get_text_embedding_batch(CHUNKED_TEXTS)
    assert [(each.index, each.cause) for each in info.value.errors] == [
        (2, "bad text 'bad c'"), (5, "bad text 'bad f'"), (7, "bad text 'bad h'")]
    assert fake.ended == ["done", "bad"]  # the first chunk embedded; the failed one; the others only checked
    assert fake.checked == [CHUNKED_TEXTS[4:]]


def test_async_batch_errors_stop_the_other_chunks_and_report_every_bad_input():
    """LlamaIndex runs an async batch's chunks at once: after an input error the others stop before their next
    forward pass (they ran to the end for nothing), and the error reports the bad inputs of every chunk."""
    fake = ChunkedFakeEmbedder(passes=300)  # 3 s for a good chunk that runs to the end
    emb = Qwen3VLEmbedding(embedder=fake, embed_batch_size=2)

    async def caller() -> None:  # the loop runs on after the error, as a server's does (asyncio.run's end cancels)
        with pytest.raises(Qwen3VLInputError,
                           match=r"^item 2: bad text 'bad c' \(and 2 more bad inputs: items 5, 7;") as info:
            await emb.aget_text_embedding_batch(CHUNKED_TEXTS)
        assert [each.index for each in info.value.errors] == [2, 5, 7]
        deadline = time.monotonic() + 2.5
        while fake.running and time.monotonic() < deadline:
            await asyncio.sleep(0.02)

    asyncio.run(caller())
    assert fake.running == 0 and "done" not in fake.ended and fake.ended.count("bad") >= 1


@pytest.mark.filterwarnings("ignore:.*no embed content:UserWarning")  # nodes built to route, not to index
def test_transformation_error_names_the_node(png_bytes):
    fake = FakeEmbedder()
    fake.fail_at = 1
    emb = Qwen3VLEmbedding(embedder=fake)
    nodes = [TextNode(text="t"), ImageNode(image_path="/a.png", id_="first"), ImageNode(image_path="/b.png", id_="bad")]
    with pytest.raises(Qwen3VLInputError) as info:
        emb(nodes)
    assert any("'bad'" in note for note in getattr(info.value, "__notes__", []))


@pytest.mark.filterwarnings("ignore:.*no embed content:UserWarning")  # nodes built to route, not to index
def test_transformation_error_leaves_no_node_half_embedded(png_bytes):
    """The text group embeds fine, then an image fails: no node is written until every group has its vectors."""
    fake = FakeEmbedder()
    fake.fail_at = 1
    emb = Qwen3VLEmbedding(embedder=fake)
    nodes = [TextNode(text="t", id_="text"), ImageNode(image_path="/a.png"), ImageNode(image_path="/b.png")]
    with pytest.raises(Qwen3VLInputError):
        emb(nodes)
    assert [node.embedding for node in nodes] == [None, None, None]
    fake.fail_at = 0  # now the text group fails: its error names the text node too
    with pytest.raises(Qwen3VLInputError) as info:
        emb(nodes)
    assert any("'text'" in note for note in getattr(info.value, "__notes__", []))


def test_query_bundle_helpers():
    fake = FakeEmbedder()
    emb = Qwen3VLEmbedding(embedder=fake)
    bundle = image_query_bundle(emb, "/q.png")
    assert bundle.query_str == "" and bundle.image_path == "/q.png"
    assert bundle.embedding == emb.get_image_query_embedding("/q.png")
    bundle = video_query_bundle(emb, Path("/q.mp4"), query_str="the goal")
    assert bundle.image_path == "/q.mp4" and bundle.query_str == "the goal"
    assert fake.calls[-1]["items"] == [{"text": "the goal", "video": Path("/q.mp4")}]
    assert fake.calls[-1]["instruction"] == DEFAULT_QUERY_INSTRUCTION


# ============================================================================ fake-core tests: reranker


def test_rerank_fields_and_serialisation(monkeypatch):
    import qwen3vl_integrations

    rr = Qwen3VLRerank()
    assert isinstance(rr, BaseNodePostprocessor)
    assert Qwen3VLRerank.class_name() == "Qwen3VLRerank"
    assert rr.model == "Qwen/Qwen3-VL-Reranker-2B" and rr.top_n == 5 and rr.instruction is None
    assert rr.keep_retrieval_score is False
    data = rr.to_dict()
    assert data["class_name"] == "Qwen3VLRerank" and not any("reranker" in key for key in data)
    assert Qwen3VLRerank.from_dict(data).to_dict() == data

    built = []

    class Recording(FakeReranker):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            built.append(kwargs)

    monkeypatch.setattr(qwen3vl_integrations, "Qwen3VLReranker", Recording, raising=False)
    rr = Qwen3VLRerank(model="m", device="cpu", dtype="float32", batch_size=2, core_options={"max_frames": 4})
    assert built == []
    rr.postprocess_nodes([NodeWithScore(node=TextNode(text="x"))], query_str="q")
    assert built == [dict(model_name_or_path="m", batch_size=2, device="cpu", dtype="float32", max_frames=4)]
    assert pickle.loads(pickle.dumps(rr))._reranker is None

    fake = FakeReranker()
    assert Qwen3VLRerank(reranker=fake).model == "fake/reranker"


def test_rerank_scores_sorts_and_events(png_bytes, events):
    fake = FakeReranker()
    handler = LlamaDebugHandler()
    rr = Qwen3VLRerank(reranker=fake, top_n=3, instruction="Find it.", keep_retrieval_score=True,
                       callback_manager=CallbackManager([handler]))
    nodes = [NodeWithScore(node=node, score=0.5 + i) for i, node in enumerate(_mixed_nodes(png_bytes))]
    items = [node_to_item(n.node)[1] for n in nodes]
    out = rr.postprocess_nodes(nodes, query_bundle=QueryBundle("a red car"))
    call = fake.calls[-1]
    assert call["query"] == "a red car" and call["instruction"] == "Find it."
    assert len(call["documents"]) == len(nodes)
    expected = sorted((fake.one("a red car", item) for item in items), reverse=True)[:3]
    assert [n.score for n in out] == pytest.approx(expected, abs=1e-6)
    assert all(type(n.score) is float for n in out)
    assert all("retrieval_score" in n.node.metadata for n in out)

    start = [e for e in events if isinstance(e, ReRankStartEvent)]
    end = [e for e in events if isinstance(e, ReRankEndEvent)]
    assert len(start) == 1 and len(end) == 1
    assert start[0].top_n == 3 and start[0].model_name == "fake/reranker"
    assert [n.node.node_id for n in end[0].nodes] == [n.node.node_id for n in out]
    pairs = handler.get_event_pairs(CBEventType.RERANKING)
    assert len(pairs) == 1 and pairs[0][0].payload["query_str"] == "a red car"


async def test_rerank_queries_edge_cases_and_async():
    fake = FakeReranker()
    rr = Qwen3VLRerank(reranker=fake, top_n=None)
    nodes = [NodeWithScore(node=TextNode(text=f"doc {i}")) for i in range(4)]
    with pytest.raises(ValueError, match="Missing query bundle"):
        rr.postprocess_nodes(nodes)
    assert rr.postprocess_nodes([], query_str="q") == []
    out = rr.postprocess_nodes(nodes, query_bundle=QueryBundle("", image_path="/q.png"))
    assert len(out) == 4 and fake.calls[-1]["query"] == {"image": "/q.png"}
    assert [n.score for n in out] == sorted((n.score for n in out), reverse=True)
    rr.postprocess_nodes(nodes, query_bundle=QueryBundle("what happens", image_path="/q.webm"))
    assert fake.calls[-1]["query"] == {"video": "/q.webm", "text": "what happens"}
    async_out = await rr.apostprocess_nodes(
        [NodeWithScore(node=TextNode(text=f"doc {i}")) for i in range(4)], query_str="q"
    )
    sync_out = rr.postprocess_nodes([NodeWithScore(node=TextNode(text=f"doc {i}")) for i in range(4)], query_str="q")
    assert [(n.node.text, n.score) for n in async_out] == [(n.node.text, n.score) for n in sync_out]


async def test_a_rerank_given_up_on_leaves_the_nodes_as_they_were():
    """A timed-out (or cancelled) async rerank runs on in its worker thread; it used to write its scores into the
    caller's nodes afterwards (a service falling back to the unreranked nodes saw them change under it)."""
    import threading
    import time

    scored = threading.Event()

    class SlowReranker(FakeReranker):
        def score(self, *args: Any, **kwargs: Any) -> Any:
            time.sleep(0.3)
            try:
                return super().score(*args, **kwargs)
            finally:
                scored.set()

    rr = Qwen3VLRerank(reranker=SlowReranker(), top_n=None, keep_retrieval_score=True)
    nodes = [NodeWithScore(node=TextNode(text=f"doc {i}"), score=0.9) for i in range(4)]
    with pytest.raises(asyncio.TimeoutError):
        await asyncio.wait_for(rr.apostprocess_nodes(nodes, query_str="q"), 0.05)
    assert await asyncio.to_thread(scored.wait, 5)
    await asyncio.sleep(0.2)  # the old code wrote the scores right after scoring
    assert [n.score for n in nodes] == [0.9] * 4
    assert not any("retrieval_score" in n.node.metadata for n in nodes)
    out = await rr.apostprocess_nodes(nodes, query_str="q")  # a call that is awaited to the end scores them
    assert len(out) == 4 and all(n.node.metadata["retrieval_score"] == 0.9 for n in nodes)


@pytest.mark.filterwarnings("ignore:.*no embed content:UserWarning")  # nodes built to route, not to index
async def test_acall_reads_the_nodes_off_the_event_loop(png_bytes, monkeypatch):
    """Reading nodes decodes base64 images (14-19 ms per 3 MB picture): acall blocked the loop for it."""
    import threading

    threads: List[int] = []
    route = Qwen3VLEmbedding._route

    def spy(self: Any, nodes: Any) -> Any:
        threads.append(threading.get_ident())
        return route(self, nodes)

    monkeypatch.setattr(Qwen3VLEmbedding, "_route", spy)
    await Qwen3VLEmbedding(embedder=FakeEmbedder()).acall(_mixed_nodes(png_bytes))
    assert threads and threading.get_ident() not in threads


async def test_query_bundles_for_media_have_async_forms_off_the_event_loop(monkeypatch):
    """`image_query_bundle` runs the model on the calling thread; an async service blocked its loop for the whole
    embedding. The async forms give the same bundles from a worker thread."""
    import threading

    from qwen3vl_integrations.llama_index import aimage_query_bundle, avideo_query_bundle

    fake = FakeEmbedder()
    threads: List[int] = []
    embed = fake.embed

    def spy(*args: Any, **kwargs: Any) -> Any:
        threads.append(threading.get_ident())
        return embed(*args, **kwargs)

    monkeypatch.setattr(fake, "embed", spy)
    emb = Qwen3VLEmbedding(embedder=fake)
    for sync, run_async, media in ((image_query_bundle, aimage_query_bundle, "q.png"),
                                   (video_query_bundle, avideo_query_bundle, "q.mp4")):
        for text in ("", "what is this"):
            threads.clear()
            bundle = await run_async(emb, media, text)
            assert threads and threading.get_ident() not in threads
            expected = sync(emb, media, text)
            assert (bundle.embedding, bundle.image_path, bundle.query_str) == (expected.embedding, media, text)


# ============================================================================ tiny checkpoints: real LlamaIndex flows


def _cos_scores(query_vec: np.ndarray, doc_vecs: np.ndarray) -> np.ndarray:
    q = query_vec / np.linalg.norm(query_vec)
    d = doc_vecs / np.linalg.norm(doc_vecs, axis=1, keepdims=True)
    return d @ q


def _ranking(query_vec: np.ndarray, keys: List[str], doc_vecs: np.ndarray) -> List[tuple]:
    scores = _cos_scores(query_vec, doc_vecs)
    order = np.argsort(-scores, kind="stable")
    return [(keys[i], float(scores[i])) for i in order]


@pytest.fixture(scope="module")
def tiny_emb(tiny_embedder) -> Qwen3VLEmbedding:
    return Qwen3VLEmbedding(embedder=tiny_embedder)


@pytest.fixture(scope="module")
def library(media_dir, tmp_path_factory) -> Path:
    """A folder for SimpleDirectoryReader: three images and three text files."""
    folder = tmp_path_factory.mktemp("llama-library")
    for name in ("red.png", "blue.jpg", "wide.png"):
        shutil.copy(media_dir / name, folder / name)
    (folder / "cars.txt").write_text("A red car is parked in front of a white house.", encoding="utf-8")
    (folder / "sea.txt").write_text("Blue waves roll onto a sandy beach under the sun.", encoding="utf-8")
    (folder / "forest.txt").write_text("Tall green trees fill a quiet forest.", encoding="utf-8")
    return folder


def test_embedding_from_path_shares_the_core_model(tiny_embedding_path, tiny_embedder, tiny_core_kwargs):
    """An adapter built from fields gives what the core gives for the same options (and loads the same model)."""
    options = tiny_core_kwargs
    emb = Qwen3VLEmbedding(
        model_name=str(tiny_embedding_path),
        device=options.pop("device"),
        max_pixels=options.pop("max_pixels"),
        core_options=options,
        embed_batch_size=4,
    )
    assert emb.embedding_dim == tiny_embedder.embedding_dim
    got = np.array(emb.get_text_embedding_batch(["a red car", "a blue sea"]))
    want = tiny_embedder.embed(["a red car", "a blue sea"])
    assert np.allclose(got, want, atol=TOL)
    got = np.array(emb.get_query_embedding("a red car"))
    want = tiny_embedder.embed(["a red car"], instruction=DEFAULT_QUERY_INSTRUCTION)[0]
    assert np.allclose(got, want, atol=TOL)
    assert emb.get_image_embedding_batch([]) == []
    assert emb.embedder is not tiny_embedder and emb.embedder.load() is tiny_embedder.load()  # one shared model


def _owned_tiny(tiny_embedding_path, tiny_core_kwargs, **fields) -> Qwen3VLEmbedding:
    options = dict(tiny_core_kwargs)
    fields.setdefault("max_pixels", options.pop("max_pixels"))
    return Qwen3VLEmbedding(model_name=str(tiny_embedding_path), device=options.pop("device"), core_options=options,
                            **fields)


def test_copies_after_use_carry_options_not_models(tiny_embedding_path, tiny_reranker, tiny_embedder,
                                                   tiny_core_kwargs, media_dir):
    """Core objects held a lock: deepcopy and model_copy(deep=True) failed once a model was loaded, and pickling an
    adapter built around the user's core object dropped it and rebuilt one with default options (another pixel
    budget: other image vectors)."""
    import copy

    image = str(media_dir / "wide.png")
    owned = _owned_tiny(tiny_embedding_path, tiny_core_kwargs)
    given = Qwen3VLEmbedding(embedder=tiny_embedder)
    rerank = Qwen3VLRerank(reranker=tiny_reranker, top_n=None)
    want = [owned.get_image_embedding(image), given.get_image_embedding(image)]
    nodes = [NodeWithScore(node=TextNode(text=t), score=0.0) for t in ("a red car", "blue sea")]
    scores = [n.score for n in rerank.postprocess_nodes(nodes, query_str="a car")]
    for clone in (pickle.loads, copy.deepcopy, lambda x: x.model_copy(deep=True)):
        copies = [clone(pickle.dumps(x)) if clone is pickle.loads else clone(x) for x in (owned, given, rerank)]
        assert copies[1].embedder.limits == tiny_embedder.limits  # the user's core object, options and all
        assert [c.get_image_embedding(image) for c in copies[:2]] == want
        assert [n.score for n in copies[2].postprocess_nodes(nodes, query_str="a car")] == scores
        assert copies[0].embedder.load() is tiny_embedder.load()  # the registry's model, not a copy of it
    assert len(pickle.dumps(given)) < 10_000  # options only


def test_a_changed_option_rebuilds_the_core_object(tiny_embedding_path, tiny_core_kwargs, media_dir):
    """After the first call the core object was kept: a copy with other options returned the original's vectors."""
    image = str(media_dir / "wide.png")
    emb = _owned_tiny(tiny_embedding_path, tiny_core_kwargs)
    first = emb.get_image_embedding(image)
    smaller = emb.model_copy(update={"max_pixels": 4 * 32 * 32})
    assert smaller.embedder is not emb.embedder and smaller.embedder.limits.max_pixels == 4 * 32 * 32
    assert smaller.get_image_embedding(image) != first
    core = emb.embedder
    assert emb.embedder is core  # unchanged options: the same object
    emb.max_pixels = 4 * 32 * 32
    assert emb.embedder is not core and emb.get_image_embedding(image) == smaller.get_image_embedding(image)


def test_unknown_keywords_are_refused_and_dtypes_serialise():
    """LlamaIndex ignores unknown keywords: Qwen3VLRerank(model_name=...) used the default model in silence."""
    import torch
    from pydantic import ValidationError

    assert Qwen3VLRerank(model_name="org/local-reranker").model == "org/local-reranker"  # LangChain's spelling
    for build in (lambda: Qwen3VLEmbedding(model="x"), lambda: Qwen3VLEmbedding(document_instruction="x"),
                  lambda: Qwen3VLRerank(modle="x")):
        with pytest.raises(ValidationError, match="Extra inputs are not permitted"):
            build()
    emb = Qwen3VLEmbedding(dtype=torch.bfloat16, core_options={"dtype": torch.float32, "max_frames": 8})
    assert emb.core_options == {"dtype": "float32", "max_frames": 8}
    assert Qwen3VLEmbedding.from_json(emb.to_json()).to_dict() == emb.to_dict()
    rerank = Qwen3VLRerank(core_options={"torch_dtype": torch.float16})
    assert Qwen3VLRerank.from_dict(rerank.to_dict()).core_options == {"torch_dtype": "float16"}


def test_embeddings_cache_keeps_queries_documents_and_configurations_apart(tiny_embedding_path, tiny_core_kwargs):
    """LlamaIndex keys cached vectors by their raw text: a query got the vector its text had got as a document."""
    from llama_index.core.storage.kvstore import SimpleKVStore

    plain = _owned_tiny(tiny_embedding_path, tiny_core_kwargs)
    as_query, as_document = plain.get_query_embedding("a red car"), plain.get_text_embedding("a red car")
    assert not np.allclose(as_query, as_document, atol=1e-3)

    def same(a, b):
        return np.allclose(a, b, atol=TOL)

    store = SimpleKVStore()
    cached = _owned_tiny(tiny_embedding_path, tiny_core_kwargs, embeddings_cache=store)
    assert same(cached.get_text_embedding_batch(["a red car", "a blue sky"])[0], as_document)
    assert same(cached.get_query_embedding("a red car"), as_query)
    assert same(asyncio.run(cached.aget_query_embedding("a red car")), as_query)
    assert same(cached.get_text_embedding("a red car"), as_document)
    # the vectors are in the user's store, and come from it: a second adapter on the same store does not embed
    from_store = _owned_tiny(tiny_embedding_path, tiny_core_kwargs, embeddings_cache=store)
    from_store._embed = None  # any model work would fail
    assert same(from_store.get_query_embedding("a red car"), as_query)
    assert same(asyncio.run(from_store.aget_text_embedding("a blue sky")), plain.get_text_embedding("a blue sky"))
    assert len(store.get_all(collection="embeddings")) == 0  # nothing where a plain adapter would read it
    # another instruction or size is another configuration
    other = _owned_tiny(tiny_embedding_path, tiny_core_kwargs, embeddings_cache=store, query_instruction="Find it.")
    assert not same(other.get_query_embedding("a red car"), as_query)
    _owned_tiny(tiny_embedding_path, tiny_core_kwargs, embeddings_cache=store, dimensions=64).get_query_embedding("x")
    # embeddings/qwen3vl/<role>/<fingerprint>
    collections = sorted(c.split("/")[2] for c, held in store.to_dict().items() if held and c != "embeddings")
    assert collections == ["document", "query", "query", "query"]


def test_media_nodes_that_indexes_would_skip_are_named(media_dir):
    """An ImageDocument with metadata but no text_resource has empty embed content: LlamaIndex indexes dropped it
    after it was embedded, with no name."""
    image = str(media_dir / "red.png")
    kept = [ImageNode(image_path=image, metadata={"file_name": "red.png"}),
            ImageDocument(image_path=image, metadata={"file_name": "red.png"}, text_resource=MediaResource(text=""))]
    skipped = ImageDocument(image_path=image, metadata={"file_name": "red.png"}, id_="no-text-resource")
    emb = Qwen3VLEmbedding(embedder=FakeEmbedder())
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        emb(kept)
    with pytest.warns(UserWarning, match=r"1 media node\(s\) have no embed content .* no-text-resource \(image\)"):
        emb([*kept, skipped])
    assert skipped.embedding is not None
    index = VectorStoreIndex([*kept, skipped], embed_model=emb)
    assert len(index.docstore.docs) == 2  # what the warning announced


def test_batch_errors_name_the_position_in_the_callers_list(tiny_embedder, media_dir):
    """LlamaIndex hands the core chunks of embed_batch_size: the error still counts in the list the caller gave."""
    emb = Qwen3VLEmbedding(embedder=tiny_embedder, embed_batch_size=2)
    texts = ["a", "b", "c", "d\ud800", "e"]
    for call in (lambda: emb.get_text_embedding_batch(texts), lambda: asyncio.run(emb.aget_text_embedding_batch(texts))):
        with pytest.raises(Qwen3VLInputError, match=r"^item 3: text is not valid Unicode") as info:
            call()
        assert info.value.index == 3
    image = str(media_dir / "red.png")
    images = [image, image, str(media_dir / "blue.jpg"), "/no/such/file.png"]
    with pytest.raises(Qwen3VLInputError, match=r"^item 3: .*file not found") as info:
        emb.get_image_embedding_batch(images)
    with pytest.raises(Qwen3VLInputError, match=r"^item 3: .*file not found"):
        asyncio.run(emb.aget_image_embedding_batch(images))


def test_batch_errors_report_every_bad_input_of_the_chunk_by_its_position(tiny_embedder, media_dir):
    """The other bad inputs an error reports count in the caller's list too, not in LlamaIndex's chunk."""
    emb = Qwen3VLEmbedding(embedder=tiny_embedder, embed_batch_size=4)
    red, missing = str(media_dir / "red.png"), str(media_dir / "nope.png")
    images = [red, red, red, red, red, missing, red, str(media_dir / "broken.png")]  # 2nd chunk: items 4-7
    with pytest.raises(Qwen3VLInputError, match=r"^item 5: .*file not found.*\(and 1 more bad input: item 7;") as info:
        emb.get_image_embedding_batch(images)
    assert [each.index for each in info.value.errors] == [5, 7]
    assert "broken.png" in info.value.errors[1].cause
    with pytest.raises(Qwen3VLInputError) as info:  # one object twice (an interned string): both places
        emb.get_image_embedding_batch([red, missing, red, missing])
    assert [each.index for each in info.value.errors] == [1, 3]


def test_batch_errors_report_every_bad_input_of_every_chunk(tiny_embedder, media_dir):
    """A bad input in a later chunk than the first bad one is reported in the same error (it was found only on the
    next run, after fixing the first), by its position in the caller's list; with a cache, sync and async alike."""
    from llama_index.core.storage.kvstore import SimpleKVStore

    emb = Qwen3VLEmbedding(embedder=tiny_embedder, embed_batch_size=2)
    cached = Qwen3VLEmbedding(embedder=tiny_embedder, embed_batch_size=2, embeddings_cache=SimpleKVStore())
    texts = ["a", "b\ud800", "c", "d", "e", "f<|image_pad|>", "g"]
    cached.get_text_embedding_batch(["a", "c"])  # the cache leaves the core only a chunk's other texts
    for call in (lambda: emb.get_text_embedding_batch(texts),
                 lambda: asyncio.run(emb.aget_text_embedding_batch(texts)),
                 lambda: cached.get_text_embedding_batch(texts),
                 lambda: asyncio.run(cached.aget_text_embedding_batch(texts))):
        with pytest.raises(Qwen3VLInputError,
                           match=r"^item 1: text is not valid Unicode.*\(and 1 more bad input: item 5;") as info:
            call()
        assert [each.index for each in info.value.errors] == [1, 5]
        assert "reserved vision placeholder" in info.value.errors[1].cause
        assert any("try_embed" in note for note in info.value.__notes__)
    red, missing, broken = (str(media_dir / name) for name in ("red.png", "nope.png", "broken.png"))
    images = [red, missing, red, red, red, broken, red, missing]  # chunks of 2: the 1st, 3rd and 4th have one
    for call in (lambda: emb.get_image_embedding_batch(images),
                 lambda: asyncio.run(emb.aget_image_embedding_batch(images))):
        with pytest.raises(Qwen3VLInputError, match=r"^item 1: .*file not found.*\(and 2 more bad inputs: items 5, 7;"):
            call()


@pytest.mark.filterwarnings("ignore:.*no embed content:UserWarning")  # nodes built to fail, not to index
def test_node_errors_report_every_bad_node_of_every_modality(tiny_embedder, media_dir):
    """As a transformation, a bad text node no longer hides the bad image and video nodes (embedded after the text
    nodes, they were never looked at): one error names them all, by position in the nodes given and by id."""
    nodes = [TextNode(text="fine", id_="good-text"), ImageNode(image_path="/no/a.png", id_="bad-image"),
             TextNode(text="caf\udce9", id_="bad-text"), ImageNode(image_path=str(media_dir / "red.png"), id_="good"),
             TextNode(text="", metadata={"video_path": "/no/v.mp4"}, id_="bad-video")]
    emb = Qwen3VLEmbedding(embedder=tiny_embedder)
    for call in (lambda: emb(nodes), lambda: asyncio.run(emb.acall(nodes))):
        with pytest.raises(Qwen3VLInputError, match=r"^item 1: image 0: .*not found.*items 2, 4;") as info:
            call()
        assert [each.index for each in info.value.errors] == [1, 2, 4]
        assert "not valid Unicode" in info.value.errors[1].cause
        assert info.value.__notes__[-2:] == ["while embedding node 'bad-image'",
                                             "the other bad nodes: 'bad-text', 'bad-video'"]
        assert [node.embedding for node in nodes] == [None] * 5


@pytest.mark.filterwarnings("ignore:.*no embed content:UserWarning")  # nodes built to route, not to index
def test_errors_name_every_bad_node(tiny_embedder, tiny_reranker, media_dir):
    red = str(media_dir / "red.png")
    nodes = [ImageNode(image_path=red, id_="good"), ImageNode(image_path="/no/a.png", id_="bad-a"),
             ImageNode(image_path="/no/b.png", id_="bad-b"), ImageNode(image_path="/no/c.png", id_="bad-c")]
    with pytest.raises(Qwen3VLInputError) as info:
        Qwen3VLEmbedding(embedder=tiny_embedder)(nodes)
    assert info.value.__notes__[-2:] == ["while embedding node 'bad-a'", "the other bad nodes: 'bad-b', 'bad-c'"]
    assert [node.embedding for node in nodes] == [None] * 4
    with pytest.raises(Qwen3VLInputError) as info:
        Qwen3VLRerank(reranker=tiny_reranker).postprocess_nodes([NodeWithScore(node=n) for n in nodes],
                                                                 query_str="a red square")
    assert info.value.__notes__[-2:] == ["while reranking node 'bad-a'", "the other bad nodes: 'bad-b', 'bad-c'"]
    # a bad query comes first, with the bad nodes reported beside it
    with pytest.raises(Qwen3VLInputError) as info:
        Qwen3VLRerank(reranker=tiny_reranker).postprocess_nodes(
            [NodeWithScore(node=n) for n in nodes], query_bundle=QueryBundle("a red square", image_path="/no/q.png"))
    assert [(each.role, each.index) for each in info.value.errors] == [
        ("query", None), ("document", 1), ("document", 2), ("document", 3)]
    assert info.value.__notes__[-1] == "the bad nodes: 'bad-a', 'bad-b', 'bad-c'"


def test_multimodal_vector_store_index_on_a_folder(tiny_emb, tiny_embedder, library):
    # without llama-index-readers-file, SimpleDirectoryReader would read the images as text
    documents = SimpleDirectoryReader(str(library), file_extractor=media_file_extractor()).load_data()
    assert sum(isinstance(d, ImageDocument) for d in documents) == 3 and len(documents) == 6
    index = MultiModalVectorStoreIndex.from_documents(
        documents, embed_model=tiny_emb, image_embed_model=tiny_emb, show_progress=False
    )
    retriever = index.as_retriever(similarity_top_k=3, image_similarity_top_k=3)

    stored = index.docstore.docs.values()
    text_nodes = [n for n in stored if not isinstance(n, ImageNode)]
    image_nodes = [n for n in stored if isinstance(n, ImageNode)]
    assert len(text_nodes) == 3 and len(image_nodes) == 3
    text_keys = [n.node_id for n in text_nodes]
    text_vecs = tiny_embedder.embed([n.get_content(metadata_mode=MetadataMode.EMBED) for n in text_nodes])
    image_keys = [n.node_id for n in image_nodes]
    image_vecs = tiny_embedder.embed([{"image": n.image_path} for n in image_nodes])

    query = "a red car in front of a house"
    query_vec = tiny_embedder.embed([query], instruction=DEFAULT_QUERY_INSTRUCTION)[0]

    # text -> text
    got = retriever.text_retrieve(query)
    want = _ranking(query_vec, text_keys, text_vecs)
    assert [n.node.node_id for n in got] == [key for key, _ in want]
    assert [n.score for n in got] == pytest.approx([s for _, s in want], abs=TOL)

    # text -> image (the image model's query embedding carries the query instruction)
    got = retriever.text_to_image_retrieve(query)
    want = _ranking(query_vec, image_keys, image_vecs)
    assert [n.node.node_id for n in got] == [key for key, _ in want]
    assert [n.score for n in got] == pytest.approx([s for _, s in want], abs=TOL)

    # image -> image (a query image that is not in the folder)
    from PIL import Image

    query_image = str(library.parent / "llama-query.png")
    Image.open(image_nodes[0].image_path).convert("RGB").rotate(90, expand=True).save(query_image)
    got = retriever.image_to_image_retrieve(query_image)
    query_image_vec = tiny_embedder.embed([{"image": query_image}])[0]
    want = _ranking(query_image_vec, image_keys, image_vecs)
    assert [n.node.node_id for n in got] == [key for key, _ in want]
    assert [n.score for n in got] == pytest.approx([s for _, s in want], abs=TOL)


def _one_store_nodes(media_dir: Path) -> List[Any]:
    return [
        TextNode(text="A red car is parked in front of a white house.", id_="t-car"),
        TextNode(text="Blue waves roll onto a sandy beach.", id_="t-sea"),
        ImageNode(image_path=str(media_dir / "red.png"), metadata={"file_name": "red.png"}, id_="i-red"),
        ImageNode(image_path=str(media_dir / "blue.jpg"), metadata={"file_name": "blue.jpg"}, id_="i-blue"),
        # a Node needs a text_resource (its text, or "" plus metadata), or VectorStoreIndex drops it
        Node(image_resource=MediaResource(path=media_dir / "wide.png"), text_resource=MediaResource(text=""),
             metadata={"file_name": "wide.png"}, id_="n-wide"),
        TextNode(text="", metadata={"video_path": str(media_dir / "clip.mp4")}, id_="v-clip"),
    ]


def test_one_store_for_text_images_and_video(tiny_emb, tiny_embedder, media_dir):
    nodes = IngestionPipeline(transformations=[tiny_emb]).run(nodes=_one_store_nodes(media_dir))
    assert all(n.embedding is not None for n in nodes)
    index = VectorStoreIndex(nodes, embed_model=tiny_emb)

    keys = [n.node_id for n in nodes]
    items = [node_to_item(n)[1] for n in nodes]
    doc_vecs = tiny_embedder.embed(items)
    assert np.allclose(np.array([n.embedding for n in nodes]), doc_vecs, atol=TOL)
    assert [node_modality(n) for n in nodes] == ["text", "text", "image", "image", "image", "video"]

    retriever = index.as_retriever(similarity_top_k=len(nodes))

    # by text
    query = "a red car"
    got = retriever.retrieve(query)
    want = _ranking(tiny_embedder.embed([query], instruction=DEFAULT_QUERY_INSTRUCTION)[0], keys, doc_vecs)
    assert [n.node.node_id for n in got] == [key for key, _ in want]
    assert [n.score for n in got] == pytest.approx([s for _, s in want], abs=TOL)

    # by image: the documented one-liner
    query_image = str(media_dir / "rgba.png")
    got = retriever.retrieve(image_query_bundle(tiny_emb, query_image))
    query_vec = tiny_embedder.embed([{"image": query_image}], instruction=DEFAULT_QUERY_INSTRUCTION)[0]
    want = _ranking(query_vec, keys, doc_vecs)
    assert [n.node.node_id for n in got] == [key for key, _ in want]
    assert [n.score for n in got] == pytest.approx([s for _, s in want], abs=TOL)

    # by video
    query_video = str(media_dir / "clip.mp4")
    got = retriever.retrieve(video_query_bundle(tiny_emb, query_video))
    query_vec = tiny_embedder.embed([{"video": query_video}], instruction=DEFAULT_QUERY_INSTRUCTION)[0]
    want = _ranking(query_vec, keys, doc_vecs)
    assert [n.node.node_id for n in got] == [key for key, _ in want]


def test_directory_of_text_images_and_video_in_one_store(tiny_emb, tiny_embedder, library, media_dir, tmp_path):
    folder = tmp_path / "data"
    shutil.copytree(library, folder)
    shutil.copy(media_dir / "clip.mp4", folder / "clip.mp4")
    documents = SimpleDirectoryReader(str(folder), file_extractor=media_file_extractor()).load_data()
    index = VectorStoreIndex.from_documents(
        documents, embed_model=tiny_emb, transformations=[SentenceSplitter(chunk_size=256), tiny_emb]
    )
    nodes = list(index.docstore.docs.values())
    kinds = sorted(node_modality(n) for n in nodes)
    assert kinds == ["image"] * 3 + ["text"] * 3 + ["video"]
    by_id = {n.node_id: n for n in nodes}
    keys = list(by_id)
    doc_vecs = tiny_embedder.embed([node_to_item(by_id[k])[1] for k in keys])
    got = index.as_retriever(similarity_top_k=len(keys)).retrieve("a moving white square")
    query_vec = tiny_embedder.embed(["a moving white square"], instruction=DEFAULT_QUERY_INSTRUCTION)[0]
    want = _ranking(query_vec, keys, doc_vecs)
    assert [n.node.node_id for n in got] == [key for key, _ in want]
    assert [n.score for n in got] == pytest.approx([s for _, s in want], abs=TOL)


def test_media_on_a_non_local_filesystem_travel_as_bytes(tiny_emb, tiny_embedder, media_dir):
    """On S3 or GCS (here fsspec's memory filesystem) a path means nothing to the model later: a video document had
    only its path and failed with "file not found"."""
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    for name in ("red.png", "clip.mp4"):
        fs.pipe(f"/bucket-{id(fs)}/{name}", (media_dir / name).read_bytes())
    documents = SimpleDirectoryReader(f"/bucket-{id(fs)}", fs=fs, file_extractor=media_file_extractor()).load_data()
    nodes = IngestionPipeline(transformations=[tiny_emb]).run(documents=documents)
    by_name = {n.metadata["file_name"]: n for n in nodes}
    assert [node_modality(by_name[name]) for name in ("red.png", "clip.mp4")] == ["image", "video"]
    want = tiny_embedder.embed([{"image": str(media_dir / "red.png")}, {"video": str(media_dir / "clip.mp4")}])
    assert np.allclose([by_name["red.png"].embedding, by_name["clip.mp4"].embedding], want, atol=TOL)


async def test_one_store_async_pipeline(tiny_emb, tiny_embedder, media_dir):
    sync_nodes = IngestionPipeline(transformations=[tiny_emb]).run(nodes=_one_store_nodes(media_dir))
    async_nodes = await IngestionPipeline(transformations=[tiny_emb]).arun(nodes=_one_store_nodes(media_dir))
    assert np.allclose([n.embedding for n in async_nodes], [n.embedding for n in sync_nodes], atol=TOL)


@pytest.fixture(scope="module")
def reranked_engine_parts(tiny_emb, media_dir):
    nodes = IngestionPipeline(transformations=[tiny_emb]).run(nodes=_one_store_nodes(media_dir))
    return VectorStoreIndex(nodes, embed_model=tiny_emb)


def test_query_engine_with_reranker(reranked_engine_parts, tiny_reranker, events):
    handler = LlamaDebugHandler()
    rr = Qwen3VLRerank(reranker=tiny_reranker, top_n=2)
    engine = RetrieverQueryEngine.from_args(
        reranked_engine_parts.as_retriever(similarity_top_k=5), llm=MockLLM(), node_postprocessors=[rr],
        callback_manager=CallbackManager([handler]),
    )
    query = "a red car"
    response = engine.query(query)
    assert len(response.source_nodes) == 2

    start = [e for e in events if isinstance(e, ReRankStartEvent)]
    end = [e for e in events if isinstance(e, ReRankEndEvent)]
    assert len(start) == 1 and len(end) == 1 and start[0].top_n == 2
    candidates = [n.node for n in start[0].nodes]
    assert len(candidates) == 5
    scores = tiny_reranker.score(query, [node_to_item(n)[1] for n in candidates])
    want = sorted(zip((n.node_id for n in candidates), scores.tolist()), key=lambda p: -p[1])[:2]
    assert [n.node.node_id for n in response.source_nodes] == [k for k, _ in want]
    assert [n.score for n in response.source_nodes] == pytest.approx([s for _, s in want], abs=TOL)
    assert [n.node.node_id for n in end[0].nodes] == [k for k, _ in want]
    assert len(handler.get_event_pairs(CBEventType.RERANKING)) == 1


async def test_query_engine_with_reranker_async(reranked_engine_parts, tiny_emb, tiny_reranker, media_dir, events):
    rr = Qwen3VLRerank(reranker=tiny_reranker, top_n=3)
    engine = reranked_engine_parts.as_query_engine(llm=MockLLM(), similarity_top_k=4, node_postprocessors=[rr])
    response = await engine.aquery("blue waves")
    assert len(response.source_nodes) == 3
    assert any(isinstance(e, ReRankEndEvent) for e in events)

    # an image query straight through apostprocess_nodes, with every kind of node
    retriever = reranked_engine_parts.as_retriever(similarity_top_k=6)
    query_image = str(media_dir / "red.png")
    bundle = image_query_bundle(tiny_emb, query_image)
    candidates = retriever.retrieve(bundle)
    documents = [node_to_item(n.node)[1] for n in candidates]
    out = await rr.apostprocess_nodes(candidates, query_bundle=bundle)
    scores = tiny_reranker.score({"image": query_image}, documents)
    assert [n.score for n in out] == pytest.approx(sorted(scores.tolist(), reverse=True)[:3], abs=TOL)

