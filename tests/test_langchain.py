"""LangChain adapters: fake-backend unit tests, then real LangChain code on the tiny checkpoints."""
from __future__ import annotations

import asyncio
import base64
import hashlib
import io
import uuid
from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("langchain_core")

from langchain_core.documents import BaseDocumentCompressor, Document  # noqa: E402
from langchain_core.cross_encoders import BaseCrossEncoder  # noqa: E402
from langchain_core.embeddings import Embeddings  # noqa: E402

from qwen3vl_integrations.core.prompts import DEFAULT_QUERY_INSTRUCTION  # noqa: E402
from qwen3vl_integrations.langchain import (  # noqa: E402
    Qwen3VLCrossEncoder,
    Qwen3VLEmbeddings,
    Qwen3VLRerank,
    document_to_item,
)
from qwen3vl_integrations.langchain.documents import decode_base64_image, media_kind  # noqa: E402

# the tiny_embedder / tiny_reranker fixtures' preprocessing budgets (tests/conftest.py)
TINY_OPTIONS = dict(min_pixels=4 * 32 * 32, max_pixels=64 * 32 * 32, total_pixels=256 * 32 * 32, max_frames=8)


# ----------------------------------------------------------------------------------------------------------------
# fake core objects: record calls, return deterministic values


def _vector(item, instruction, dim=8):
    digest = hashlib.sha256(repr((item, instruction)).encode()).digest()
    v = np.frombuffer(digest[: dim * 2], dtype=np.uint8).astype(np.float32).reshape(dim, 2).sum(axis=1) + 1.0
    return v / np.linalg.norm(v)


class FakeEmbedder:
    model_name_or_path = "fake/embedder"

    def __init__(self):
        self.calls = []

    def embed(self, items, *, instruction=None, dimensions=None, batch_size=None, **kwargs):
        items = list(items)
        self.calls.append(dict(items=items, instruction=instruction, dimensions=dimensions, batch_size=batch_size))
        out = np.stack([_vector(repr(it), instruction) for it in items])
        if dimensions is not None:
            out = out[:, :dimensions]
        return out.astype(np.float32)


class FakeReranker:
    model_name_or_path = "fake/reranker"

    def __init__(self):
        self.calls = []

    def score(self, query, documents, *, instruction=None, batch_size=None):
        documents = list(documents)
        self.calls.append(dict(query=query, documents=documents, instruction=instruction, batch_size=batch_size))
        return np.array([_vector(repr(d), repr(query))[0] for d in documents], dtype=np.float32)

    def score_pairs(self, pairs, *, instruction=None, batch_size=None):
        pairs = list(pairs)
        self.calls.append(dict(pairs=pairs, instruction=instruction, batch_size=batch_size))
        return np.array([_vector(repr(d), repr(q))[0] for q, d in pairs], dtype=np.float32)


def _png_bytes(color=(255, 0, 0), size=(8, 8)) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, format="PNG")
    return buf.getvalue()


# ----------------------------------------------------------------------------------------------------------------
# construction


def test_construction_is_lazy_and_offline(socket_disabled):
    emb = Qwen3VLEmbeddings()
    rr = Qwen3VLRerank()
    ce = Qwen3VLCrossEncoder()
    assert emb.model_name == "Qwen/Qwen3-VL-Embedding-2B"
    assert rr.model_name == ce.model_name == "Qwen/Qwen3-VL-Reranker-2B"
    assert emb.query_instruction == DEFAULT_QUERY_INSTRUCTION and emb.document_instruction is None
    assert rr.top_n == 3
    assert emb._core is None and rr._core is None and ce._core is None
    assert isinstance(emb, Embeddings)
    assert isinstance(rr, BaseDocumentCompressor)
    assert isinstance(ce, BaseCrossEncoder)
    # empty inputs never build or load anything
    assert emb.embed_documents([]) == [] and emb.embed_image(uris=[]) == []
    assert rr.compress_documents([], "q") == [] and ce.score([]) == []
    assert emb._core is None and rr._core is None and ce._core is None


def test_fields_aliases_and_validation():
    emb = Qwen3VLEmbeddings(model="org/other", device="cpu", dimensions=64, core_options={"max_pixels": 1024})
    assert emb.model_name == "org/other" and emb.dimensions == 64 and emb.core_options == {"max_pixels": 1024}
    with pytest.raises(ValueError):
        Qwen3VLEmbeddings(not_a_field=1)
    with pytest.raises(ValueError, match="either embedder="):
        Qwen3VLEmbeddings(embedder=FakeEmbedder(), device="cpu")
    with pytest.raises(ValueError, match="either reranker="):
        Qwen3VLRerank(reranker=FakeReranker(), core_options={"fps": 2})
    with pytest.raises(TypeError):
        Qwen3VLCrossEncoder(reranker=object())


@pytest.mark.parametrize("cls", [Qwen3VLEmbeddings, Qwen3VLRerank, Qwen3VLCrossEncoder])
def test_model_name_is_the_keyword_signatures_show(cls):
    """The README's `model_name=` is what type checkers and IDEs see (with `alias="model"` they saw only `model=`,
    and mypy and pyright flagged the README's own code); `model=` still works."""
    import inspect

    assert "model_name" in inspect.signature(cls).parameters
    assert "model" not in inspect.signature(cls).parameters
    assert cls(model_name="org/a").model_name == "org/a" and cls(model="org/b").model_name == "org/b"
    with pytest.raises(ValueError):
        Qwen3VLRerank(top_n=-1)
    # the model name follows a given core object unless set explicitly
    assert Qwen3VLEmbeddings(embedder=FakeEmbedder()).model_name == "fake/embedder"
    assert Qwen3VLRerank(reranker=FakeReranker()).model_name == "fake/reranker"
    assert Qwen3VLCrossEncoder(reranker=FakeReranker(), model_name="x").model_name == "x"


def test_core_objects_are_built_from_fields(monkeypatch):
    import qwen3vl_integrations.langchain.embeddings as emb_mod

    built = []

    def fake_build(model_name, device, dtype, batch_size, core_options):
        built.append((model_name, device, dtype, batch_size, core_options))
        return FakeEmbedder()

    monkeypatch.setattr(emb_mod, "build_embedder", fake_build)
    emb = Qwen3VLEmbeddings(model_name="m", device="cpu", dtype="float32", batch_size=4, core_options={"fps": 2.0})
    assert built == []
    emb.embed_query("x")
    emb.embed_documents(["y"])
    assert built == [("m", "cpu", "float32", 4, {"fps": 2.0})]  # built once, reused
    assert emb.core_embedder is emb._core


def test_build_kwargs():
    from qwen3vl_integrations.langchain._core import _kwargs

    assert _kwargs("m", None, None, None, {}) == {"model_name_or_path": "m"}
    assert _kwargs("m", "cpu", "bfloat16", 8, {"fps": 2.0}) == {
        "model_name_or_path": "m",
        "device": "cpu",
        "dtype": "bfloat16",
        "batch_size": 8,
        "fps": 2.0,
    }


# ----------------------------------------------------------------------------------------------------------------
# embeddings with a fake core


def test_embeddings_routing_and_float_output():
    fake = FakeEmbedder()
    emb = Qwen3VLEmbeddings(embedder=fake, query_instruction="Q!", document_instruction="D!", batch_size=3)
    docs = emb.embed_documents(["a", "b"])
    query = emb.embed_query("c")
    images = emb.embed_image(uris=["x.png", "y.jpg"])
    alias = emb.embed_images(["x.png"])
    videos = emb.embed_video(["v.mp4"])
    mixed = emb.embed_multimodal(["t", {"text": "t", "image": "x.png"}])
    mixed_q = emb.embed_multimodal([{"image": "x.png"}], instruction=emb.query_instruction)

    assert [c["instruction"] for c in fake.calls] == ["D!", "Q!", "D!", "D!", "D!", "D!", "Q!"]
    assert [c["items"] for c in fake.calls] == [
        ["a", "b"],
        ["c"],
        [{"image": "x.png"}, {"image": "y.jpg"}],
        [{"image": "x.png"}],
        [{"video": "v.mp4"}],
        ["t", {"text": "t", "image": "x.png"}],
        [{"image": "x.png"}],
    ]
    assert all(c["batch_size"] == 3 and c["dimensions"] is None for c in fake.calls)
    for vectors in (docs, images, alias, videos, mixed, mixed_q, [query]):
        assert isinstance(vectors, list)
        assert all(isinstance(v, list) and all(type(x) is float for x in v) for v in vectors)
    assert alias == images[:1]
    assert len(query) == 8


def test_embeddings_default_instructions_and_dimensions():
    fake = FakeEmbedder()
    emb = Qwen3VLEmbeddings(embedder=fake, dimensions=4)
    v = emb.embed_query("q")
    emb.embed_documents(["d"])
    assert len(v) == 4
    assert fake.calls[0]["instruction"] == DEFAULT_QUERY_INSTRUCTION
    assert fake.calls[1]["instruction"] is None  # the model's default instruction for documents
    assert all(c["dimensions"] == 4 for c in fake.calls)
    assert "batch_size" in fake.calls[0] and fake.calls[0]["batch_size"] is None


async def test_embeddings_async_with_fake():
    fake = FakeEmbedder()
    emb = Qwen3VLEmbeddings(embedder=fake)
    assert await emb.aembed_documents(["a"]) == emb.embed_documents(["a"])
    assert await emb.aembed_query("a") == emb.embed_query("a")
    assert await emb.aembed_image(["x.png"]) == emb.embed_image(uris=["x.png"])
    assert await emb.aembed_video(["v.mp4"]) == emb.embed_video(uris=["v.mp4"])
    assert await emb.aembed_multimodal([{"text": "t"}]) == emb.embed_multimodal([{"text": "t"}])


# ----------------------------------------------------------------------------------------------------------------
# Document -> core item


def test_document_to_item_metadata_keys():
    assert document_to_item(Document(page_content="hello")) == "hello"
    assert document_to_item(Document(page_content="cap", metadata={"image_path": "a.png"})) == {
        "text": "cap",
        "image": "a.png",
    }
    assert document_to_item(Document(page_content="", metadata={"image_url": "https://x/a.jpg"})) == {
        "image": "https://x/a.jpg"
    }
    # image_path wins over image_url; image and video together
    doc = Document(page_content="t", metadata={"image_path": "a.png", "image_url": "u.png", "video_url": "v.mp4"})
    assert document_to_item(doc) == {"text": "t", "image": "a.png", "video": "v.mp4"}
    assert document_to_item(Document(page_content="  ", metadata={"video_path": "v.webm"})) == {"video": "v.webm"}
    # source only when it names media
    assert document_to_item(Document(page_content="t", metadata={"source": "notes.txt"})) == "t"
    assert document_to_item(Document(page_content="t", metadata={"source": "/d/pic.JPEG"})) == {
        "text": "t",
        "image": "/d/pic.JPEG",
    }
    assert document_to_item(Document(page_content="t", metadata={"source": "https://h/c.mp4?sig=1#x"})) == {
        "text": "t",
        "video": "https://h/c.mp4?sig=1#x",
    }
    assert document_to_item(Document(page_content="t", metadata={"source": "blob-17", "mime_type": "image/png"})) == {
        "text": "t",
        "image": "blob-17",
    }
    # source is ignored when explicit keys exist
    doc = Document(page_content="t", metadata={"source": "x.mp4", "image_path": "a.png"})
    assert document_to_item(doc) == {"text": "t", "image": "a.png"}
    # empty values are skipped
    assert document_to_item(Document(page_content="t", metadata={"image_path": None, "image_url": ""})) == "t"


def test_document_to_item_base64_page_content():
    png = _png_bytes()
    b64 = base64.b64encode(png).decode()
    # what Chroma.add_images stores: the base64 file as page_content
    assert document_to_item(Document(page_content=b64)) == {"image": png}
    # metadata image wins; the base64 copy is not sent as text
    assert document_to_item(Document(page_content=b64, metadata={"image_path": "a.png"})) == {"image": "a.png"}
    uri = "data:image/png;base64," + b64
    assert document_to_item(Document(page_content=uri)) == {"image": uri}
    # base64 of something that is not an image stays text; short or odd strings stay text
    not_image = base64.b64encode(b"just some bytes that are plain text, long enough to be checked" * 2).decode()
    assert document_to_item(Document(page_content=not_image)) == not_image
    for text in ("abcd", "QUJD", "iVBORw0KGgo=", "Hello world, this is a sentence."):
        assert document_to_item(Document(page_content=text)) == text
    assert decode_base64_image(b64[:-4] + "!!!!") is None
    assert media_kind(Path("x/y.PNG")) == "image" and media_kind("a.txt") is None and media_kind(3) is None
    assert media_kind("data:video/mp4;base64,AAAA") == "video"


# ----------------------------------------------------------------------------------------------------------------
# rerank / cross encoder with a fake core


def _docs():
    return [
        Document(page_content="alpha", metadata={"id": 0}),
        Document(page_content="beta", metadata={"id": 1, "image_path": "b.png"}),
        Document(page_content="gamma", metadata={"id": 2, "video_url": "https://h/v.mp4"}),
        Document(page_content="delta", metadata={"id": 3, "source": "d.jpg"}),
    ]


def test_rerank_sorts_cuts_and_copies():
    fake = FakeReranker()
    docs = _docs()
    rr = Qwen3VLRerank(reranker=fake, top_n=2, instruction="I!", batch_size=5)
    out = rr.compress_documents(docs, "the query")
    (call,) = fake.calls
    assert call["query"] == "the query" and call["instruction"] == "I!" and call["batch_size"] == 5
    assert call["documents"] == [document_to_item(d) for d in docs]
    assert call["documents"][1] == {"text": "beta", "image": "b.png"}
    scores = fake.score("the query", [document_to_item(d) for d in docs])
    expected = sorted(range(4), key=lambda i: -scores[i])[:2]
    assert [d.metadata["id"] for d in out] == expected
    for d in out:
        assert type(d.metadata["relevance_score"]) is float
        assert d.metadata["relevance_score"] == pytest.approx(float(scores[d.metadata["id"]]))
    # originals untouched, copies are deep
    assert all("relevance_score" not in d.metadata for d in docs)
    assert out[0] is not docs[expected[0]]

    rr_all = Qwen3VLRerank(reranker=FakeReranker(), top_n=None)
    out_all = rr_all.compress_documents(docs, "the query")
    assert [d.metadata["id"] for d in out_all] == sorted(range(4), key=lambda i: -scores[i])
    assert Qwen3VLRerank(reranker=FakeReranker(), top_n=0).compress_documents(docs, "q") == []
    assert rr.score_documents(docs, "the query") == pytest.approx([float(s) for s in scores])


async def test_rerank_async_with_fake():
    rr = Qwen3VLRerank(reranker=FakeReranker(), top_n=3)
    sync = rr.compress_documents(_docs(), "q")
    result = await rr.acompress_documents(_docs(), "q")
    assert [d.metadata for d in result] == [d.metadata for d in sync]
    # the work runs off the event loop: two calls can overlap
    both = await asyncio.gather(rr.acompress_documents(_docs(), "q"), rr.acompress_documents(_docs(), "r"))
    assert len(both) == 2 and all(len(x) == 3 for x in both)


def test_cross_encoder_hands_all_pairs_to_the_core_in_one_call():
    fake = FakeReranker()
    ce = Qwen3VLCrossEncoder(reranker=fake, instruction="I!", batch_size=3)
    q1 = "".join(["q", "1"])  # equal to "q1" but another object: LangChain builds one string per pair
    pairs = [("q1", "a"), ("q2", "b"), (q1, "c"), ("q2", "d"), ("q3", "e")]
    scores = ce.score(pairs)
    assert len(fake.calls) == 1
    call = fake.calls[0]
    assert call["pairs"] == pairs and call["instruction"] == "I!" and call["batch_size"] == 3
    # equal queries reach the core as one object: the core groups (and encodes) queries by identity
    assert call["pairs"][0][0] is call["pairs"][2][0] and call["pairs"][1][0] is call["pairs"][3][0]
    expected = [float(FakeReranker().score(q, [d])[0]) for q, d in pairs]
    assert scores == pytest.approx(expected)
    assert all(type(s) is float for s in scores)
    with pytest.raises(ValueError, match=r"text_pairs\[0\] must be a \(query, document\) pair"):
        ce.score([("only-one",)])
    assert len(fake.calls) == 1


# ================================================================================================================
# tiny checkpoints: real LangChain code, compared with the core


def _images(media_dir: Path) -> list[str]:
    """The readable pictures of the `media_dir` fixture (it also holds a broken.png that is not an image)."""
    names = ("red.png", "blue.jpg", "wide.png", "rgba.png", "gray.png")
    paths = [media_dir / n for n in names if (media_dir / n).exists()]
    assert len(paths) >= 3, paths
    return [str(p) for p in paths]


@pytest.fixture
def lc_embeddings(tiny_embedder):
    return Qwen3VLEmbeddings(embedder=tiny_embedder)


@pytest.fixture
def lc_rerank(tiny_reranker):
    return Qwen3VLRerank(reranker=tiny_reranker, top_n=3)


def test_tiny_embeddings_agree_with_core(tiny_embedder, tiny_embedding_path, media_dir):
    emb = Qwen3VLEmbeddings(model_name=str(tiny_embedding_path), device="cpu", core_options=TINY_OPTIONS)
    images = _images(media_dir)[:2]
    video = str(media_dir / "clip.mp4")
    np.testing.assert_allclose(
        emb.embed_documents(["a cat", "a dog"]), tiny_embedder.embed(["a cat", "a dog"]), atol=1e-5
    )
    np.testing.assert_allclose(
        emb.embed_query("a cat"),
        tiny_embedder.embed(["a cat"], instruction=DEFAULT_QUERY_INSTRUCTION)[0],
        atol=1e-5,
    )
    np.testing.assert_allclose(
        emb.embed_image(uris=images), tiny_embedder.embed([{"image": p} for p in images]), atol=1e-5
    )
    np.testing.assert_allclose(emb.embed_video(uris=[video]), tiny_embedder.embed([{"video": video}]), atol=1e-5)
    mixed = ["text", {"text": "caption", "image": images[0]}]
    np.testing.assert_allclose(emb.embed_multimodal(mixed), tiny_embedder.embed(mixed), atol=1e-5)
    # the query instruction changes the vector
    assert not np.allclose(emb.embed_query("a cat"), emb.embed_documents(["a cat"])[0])


def test_tiny_embeddings_share_the_core_model(tiny_embedder, tiny_embedding_path):
    from qwen3vl_integrations.core.loading import registry_size

    emb = Qwen3VLEmbeddings(model_name=str(tiny_embedding_path), device="cpu", core_options=TINY_OPTIONS)
    assert emb._core is None  # nothing built before first use
    tiny_embedder.load()
    before = registry_size()
    emb.embed_query("x")
    other = Qwen3VLEmbeddings(model_name=str(tiny_embedding_path), device="cpu")
    other.embed_documents(["y"])
    assert registry_size() == before  # same checkpoint, device and dtype: one model in the process


def test_tiny_copies_after_use_carry_options_not_models(tiny_embedder, tiny_embedding_path, tiny_reranker_path,
                                                        media_dir):
    """Core objects held a lock: pickle, deepcopy and model_copy(deep=True) failed once an adapter had been used."""
    import copy
    import pickle

    image = _images(media_dir)[2]
    owned = Qwen3VLEmbeddings(model_name=str(tiny_embedding_path), device="cpu", core_options=TINY_OPTIONS)
    given = Qwen3VLEmbeddings(embedder=tiny_embedder)
    rerank = Qwen3VLRerank(model_name=str(tiny_reranker_path), device="cpu", core_options=TINY_OPTIONS, top_n=None)
    cross = Qwen3VLCrossEncoder(model_name=str(tiny_reranker_path), device="cpu", core_options=TINY_OPTIONS)
    docs = [Document(page_content="a red car"), Document(page_content="blue sea")]
    vectors = [owned.embed_image(uris=[image]), given.embed_image(uris=[image])]
    scores = [d.metadata["relevance_score"] for d in rerank.compress_documents(docs, "a car")]
    pair_scores = cross.score([("a car", "a red car")])
    for clone in (lambda x: pickle.loads(pickle.dumps(x)), copy.deepcopy, lambda x: x.model_copy(deep=True)):
        e1, e2, r, c = (clone(x) for x in (owned, given, rerank, cross))
        assert [e1.embed_image(uris=[image]), e2.embed_image(uris=[image])] == vectors
        assert [d.metadata["relevance_score"] for d in r.compress_documents(docs, "a car")] == scores
        assert c.score([("a car", "a red car")]) == pair_scores
        assert e1.core_embedder.load() is tiny_embedder.load()  # the registry's model, not a copy of it
    assert len(pickle.dumps(owned)) < 10_000  # options only


def test_tiny_a_changed_option_rebuilds_the_core_object(tiny_embedding_path, media_dir):
    """After the first call the core object was kept: a copy with other options returned the original's vectors."""
    import torch

    image = _images(media_dir)[2]
    emb = Qwen3VLEmbeddings(model_name=str(tiny_embedding_path), device="cpu", core_options=TINY_OPTIONS)
    first = emb.embed_image(uris=[image])
    smaller = emb.model_copy(update={"core_options": {**TINY_OPTIONS, "max_pixels": 4 * 32 * 32}})
    assert smaller.embed_image(uris=[image]) != first
    core = emb.core_embedder
    assert emb.core_embedder is core  # unchanged options: the same object
    emb.core_options["max_pixels"] = 4 * 32 * 32  # changed in place
    assert emb.core_embedder is not core and emb.embed_image(uris=[image]) == smaller.embed_image(uris=[image])
    # a torch dtype is kept as its name: the adapter serialises to JSON
    typed = Qwen3VLEmbeddings(dtype=torch.float32, core_options={"dtype": torch.float32})
    assert typed.dtype == "float32" and typed.core_options == {"dtype": "float32"}
    assert Qwen3VLEmbeddings.model_validate_json(typed.model_dump_json()).dtype == "float32"
    assert Qwen3VLRerank(dtype=torch.bfloat16).model_dump_json()


def test_tiny_embeddings_dimensions(tiny_embedder):
    # the tiny model's hidden size is 64, which is also the smallest Matryoshka size the core allows
    dim = tiny_embedder.embedding_dim
    emb = Qwen3VLEmbeddings(embedder=tiny_embedder, dimensions=dim)
    vec = emb.embed_documents(["a cat"])[0]
    assert len(vec) == dim and np.linalg.norm(vec) == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_allclose(
        emb.embed_query("a cat"),
        tiny_embedder.embed(["a cat"], instruction=DEFAULT_QUERY_INSTRUCTION, dimensions=dim)[0],
        atol=1e-5,
    )
    # the core's validation reaches the user unchanged
    with pytest.raises(ValueError, match="dimensions"):
        Qwen3VLEmbeddings(embedder=tiny_embedder, dimensions=8).embed_query("a cat")


def test_tiny_chroma_add_images_and_search_by_image(lc_embeddings, tiny_embedder, media_dir):
    chromadb = pytest.importorskip("chromadb")
    from langchain_chroma import Chroma

    client = chromadb.EphemeralClient(settings=chromadb.config.Settings(anonymized_telemetry=False))
    db = Chroma(
        collection_name=f"qwen3vl-{uuid.uuid4().hex[:8]}",
        embedding_function=lc_embeddings,
        client=client,
    )
    images = _images(media_dir)
    ids = db.add_images(uris=images, metadatas=[{"image_path": p} for p in images])
    assert len(ids) == len(images)

    # stored vectors are the core's image embeddings
    stored = db.get(ids=ids, include=["embeddings", "metadatas", "documents"])
    by_path = {m["image_path"]: np.asarray(e) for m, e in zip(stored["metadatas"], stored["embeddings"])}
    core = tiny_embedder.embed([{"image": p} for p in images])
    for path, vec in zip(images, core):
        np.testing.assert_allclose(by_path[path], vec, atol=1e-5)

    # search by image: the nearest image is itself, and the order follows the core's cosine similarities
    query = images[1]
    results = db.similarity_search_by_image(uri=query, k=len(images))
    assert results[0].metadata["image_path"] == query
    sims = core @ tiny_embedder.embed([{"image": query}])[0]
    got = [images.index(d.metadata["image_path"]) for d in results]
    assert np.all(np.diff(sims[got]) <= 1e-5), (got, sims)

    # distances reported by Chroma (squared L2 on unit vectors) == 2 - 2 cos
    vec = lc_embeddings.embed_image(uris=[query])[0]
    with_scores = db.similarity_search_by_vector_with_relevance_scores(vec, k=len(images))
    for doc, dist in with_scores:
        i = images.index(doc.metadata["image_path"])
        assert dist == pytest.approx(2 - 2 * sims[i], abs=1e-4)

    # text -> image search uses the query instruction
    text_results = db.similarity_search_with_score("a picture", k=len(images))
    qv = tiny_embedder.embed(["a picture"], instruction=DEFAULT_QUERY_INSTRUCTION)[0]
    for doc, dist in text_results:
        i = images.index(doc.metadata["image_path"])
        assert dist == pytest.approx(2 - 2 * float(core[i] @ qv), abs=1e-4)

    # the stored page content is Chroma's base64 image: the compressor reads it as that image
    doc = results[0]
    bare = Document(page_content=doc.page_content)
    assert isinstance(document_to_item(bare)["image"], bytes)


def _media_docs(media_dir: Path) -> list[Document]:
    images = _images(media_dir)
    return [
        Document(page_content="a cat sleeping on a sofa", metadata={"id": 0}),
        Document(page_content="stock prices rose sharply", metadata={"id": 1}),
        Document(page_content="a picture", metadata={"id": 2, "image_path": images[0]}),
        Document(page_content="", metadata={"id": 3, "source": images[1]}),
        Document(page_content="a short clip", metadata={"id": 4, "video_path": str(media_dir / "clip.mp4")}),
    ]


def test_tiny_rerank_agrees_with_core(lc_rerank, tiny_reranker, tiny_reranker_path, media_dir):
    docs = _media_docs(media_dir)
    images = _images(media_dir)
    query = "a cat"
    items = [
        "a cat sleeping on a sofa",
        "stock prices rose sharply",
        {"text": "a picture", "image": images[0]},
        {"image": images[1]},
        {"text": "a short clip", "video": str(media_dir / "clip.mp4")},
    ]
    core_scores = np.asarray(tiny_reranker.score(query, items), dtype=np.float64)
    out = lc_rerank.compress_documents(docs, query)
    assert len(out) == 3
    assert [d.metadata["id"] for d in out] == list(np.argsort(-core_scores, kind="stable")[:3])
    for d in out:
        assert d.metadata["relevance_score"] == pytest.approx(core_scores[d.metadata["id"]], abs=1e-5)
        assert 0.0 < d.metadata["relevance_score"] < 1.0

    # media documents are scored as media, not as their text alone
    text_only = np.asarray(tiny_reranker.score(query, ["a picture", "a short clip"]), dtype=np.float64)
    assert not np.isclose(core_scores[2], text_only[0], atol=1e-6)
    assert not np.isclose(core_scores[4], text_only[1], atol=1e-6)

    # built from the model path (lazy) it gives the same scores
    rr = Qwen3VLRerank(model_name=str(tiny_reranker_path), device="cpu", core_options=TINY_OPTIONS, top_n=None)
    assert rr._core is None
    np.testing.assert_allclose(rr.score_documents(docs, query), core_scores, atol=1e-5)


async def test_tiny_rerank_async(lc_rerank, media_dir):
    docs = _media_docs(media_dir)
    sync = lc_rerank.compress_documents(docs, "a cat")
    got = await lc_rerank.acompress_documents(docs, "a cat")
    assert [d.metadata["id"] for d in got] == [d.metadata["id"] for d in sync]
    for a, b in zip(got, sync):
        assert a.metadata["relevance_score"] == pytest.approx(b.metadata["relevance_score"], abs=1e-6)


def test_tiny_contextual_compression_retriever(lc_embeddings, lc_rerank, tiny_reranker, media_dir):
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.vectorstores import InMemoryVectorStore

    docs = _media_docs(media_dir)
    store = InMemoryVectorStore(embedding=lc_embeddings)
    store.add_documents(docs)
    base = store.as_retriever(search_kwargs={"k": 4})
    retriever = ContextualCompressionRetriever(base_compressor=lc_rerank, base_retriever=base)
    query = "a cat"
    candidates = base.invoke(query)
    got = retriever.invoke(query)
    core_scores = tiny_reranker.score(query, [document_to_item(d) for d in candidates])
    order = np.argsort(-np.asarray(core_scores, dtype=np.float64), kind="stable")[:3]
    assert [d.metadata["id"] for d in got] == [candidates[i].metadata["id"] for i in order]
    for d, i in zip(got, order):
        assert d.metadata["relevance_score"] == pytest.approx(float(core_scores[i]), abs=1e-5)


async def test_tiny_contextual_compression_retriever_async(lc_embeddings, lc_rerank, media_dir):
    from langchain_classic.retrievers import ContextualCompressionRetriever
    from langchain_core.vectorstores import InMemoryVectorStore

    store = InMemoryVectorStore(embedding=lc_embeddings)
    await store.aadd_documents(_media_docs(media_dir))
    retriever = ContextualCompressionRetriever(
        base_compressor=lc_rerank, base_retriever=store.as_retriever(search_kwargs={"k": 4})
    )
    got = await retriever.ainvoke("a cat")
    sync = retriever.invoke("a cat")
    assert [d.metadata["id"] for d in got] == [d.metadata["id"] for d in sync]


def test_tiny_cross_encoder_reranker(tiny_reranker, tiny_reranker_path):
    from langchain_classic.retrievers.document_compressors import CrossEncoderReranker

    ce = Qwen3VLCrossEncoder(reranker=tiny_reranker)
    texts = ["a cat sleeping on a sofa", "stock prices rose sharply", "a dog in the park", "rain tomorrow"]
    docs = [Document(page_content=t, metadata={"id": i}) for i, t in enumerate(texts)]
    compressor = CrossEncoderReranker(model=ce, top_n=2)
    got = compressor.compress_documents(docs, "a pet")
    core_scores = np.asarray(tiny_reranker.score("a pet", texts), dtype=np.float64)
    assert [d.metadata["id"] for d in got] == list(np.argsort(-core_scores, kind="stable")[:2])

    # pairs with different queries: each score equals the core's score for that pair
    pairs = [("a pet", texts[0]), ("money", texts[1]), ("a pet", texts[2]), ("money", texts[3])]
    scores = ce.score(pairs)
    expected = [float(tiny_reranker.score(q, [d])[0]) for q, d in pairs]
    np.testing.assert_allclose(scores, expected, atol=1e-5)
    assert all(type(s) is float for s in scores)

    # the one-line switch: model_name=... builds the core reranker lazily, same scores
    by_name = Qwen3VLCrossEncoder(model_name=str(tiny_reranker_path), device="cpu", core_options=TINY_OPTIONS)
    np.testing.assert_allclose(by_name.score(pairs), expected, atol=1e-5)


def test_tiny_input_errors_reach_the_user(lc_embeddings, lc_rerank, media_dir):
    from qwen3vl_integrations import Qwen3VLInputError

    with pytest.raises(Qwen3VLInputError) as info:
        lc_embeddings.embed_image(uris=[_images(media_dir)[0], str(media_dir / "broken.png")])
    assert info.value.index == 1
    docs = [Document(page_content="ok"), Document(page_content="x", metadata={"image_path": "/no/such/file.png"})]
    with pytest.raises(Qwen3VLInputError) as info:
        lc_rerank.compress_documents(docs, "q")
    assert info.value.index == 1 and info.value.role == "document"
    with pytest.raises(Qwen3VLInputError) as info:  # a bad query, and the bad document beside it
        lc_rerank.compress_documents(docs, {"image": "/no/such/query.png"})
    assert [(each.role, each.index) for each in info.value.errors] == [("query", None), ("document", 1)]

    # an image that is None is refused, not embedded as the word NULL
    with pytest.raises(Qwen3VLInputError, match=r"^item 1: image is None"):
        lc_embeddings.embed_image(uris=[_images(media_dir)[0], None])


def test_tiny_cross_encoder_error_names_the_pair(tiny_reranker):
    """Pairs are scored per query; an error names the position in text_pairs, not in the query's group."""
    from qwen3vl_integrations import Qwen3VLInputError

    ce = Qwen3VLCrossEncoder(reranker=tiny_reranker)
    with pytest.raises(Qwen3VLInputError, match=r"^document 2: unsupported input type NoneType") as info:
        ce.score([("q", "a"), ("q2", "b"), ("q2", None)])
    assert info.value.index == 2
    with pytest.raises(Qwen3VLInputError, match=r"^query 1: text is not valid Unicode"):
        ce.score([("q", "a"), ("\ud83d", "b"), ("\ud83d", "c")])
    # the bad documents of the call are reported with its bad query (equal query strings are one query)
    with pytest.raises(Qwen3VLInputError, match=r"^query 1: .*\(and 2 more bad inputs: documents 2, 3;") as info:
        ce.score([("q", "a"), ("\ud83d", "b"), ("\ud83d", None), ("q", None)])
    assert [(each.role, each.index) for each in info.value.errors] == [("query", 1), ("document", 2), ("document", 3)]


@pytest.mark.parametrize("call", [
    lambda e: e.embed_documents("abc"),
    lambda e: e.embed_image(uris="/data/cat.png"),
    lambda e: e.embed_video(uris=Path("/data/clip.mp4")),
    lambda e: e.embed_multimodal({"text": "a"}),
])
def test_a_single_input_where_a_list_belongs_is_refused(call):
    """A bare string is iterable: unchecked, embed_documents("abc") returned three vectors, one per character."""
    with pytest.raises(TypeError, match=r"takes a list; wrap a single input in a list"):
        call(Qwen3VLEmbeddings(embedder=FakeEmbedder()))


def test_tiny_rerank_image_query(lc_rerank, tiny_reranker, media_dir):
    """Our extension: a core item dict as the query (image -> documents)."""
    docs = _media_docs(media_dir)
    query = {"image": _images(media_dir)[2]}
    out = lc_rerank.compress_documents(docs, query)
    core_scores = np.asarray(tiny_reranker.score(query, [document_to_item(d) for d in docs]), dtype=np.float64)
    assert [d.metadata["id"] for d in out] == list(np.argsort(-core_scores, kind="stable")[:3])
