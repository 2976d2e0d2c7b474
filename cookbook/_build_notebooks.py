"""Writes the cookbook notebooks (nbformat v4, no outputs). Run it after editing a notebook's cells here:

    .venv/bin/python cookbook/_build_notebooks.py

The notebooks are generated so that they stay small, consistent and free of committed outputs. Each one reads
the model names from ``QWEN3VL_EMBEDDING_MODEL`` / ``QWEN3VL_RERANKER_MODEL`` (default: the real 2B models);
the value ``tiny`` builds tiny random checkpoints locally (what ``make test`` uses, see ``cookbook/conftest.py``).
"""
from __future__ import annotations

import sys
from pathlib import Path

import nbformat
from nbformat.v4 import new_code_cell, new_markdown_cell, new_notebook

HERE = Path(__file__).resolve().parent


def md(text: str):
    return new_markdown_cell(text.strip("\n"))


def code(text: str):
    return new_code_cell(text.strip("\n"))


def setup_cell(reranker: bool = True, data: bool = True) -> str:
    lines = [
        "import os",
        "import tempfile",
        "from pathlib import Path",
        "",
        "from qwen3vl_integrations.cli import resolve_model_name",
        "from qwen3vl_integrations.sample_data import generate_sample_data",
        "",
        "# The real models by default. QWEN3VL_EMBEDDING_MODEL=tiny (what `make test` sets) builds tiny random",
        "# checkpoints locally: every cell runs offline in seconds, but the rankings are meaningless.",
        'EMBEDDING_NAME = os.environ.get("QWEN3VL_EMBEDDING_MODEL", "Qwen/Qwen3-VL-Embedding-2B")',
        'EMBEDDING_MODEL = resolve_model_name(EMBEDDING_NAME, "embedding")',
    ]
    if reranker:
        lines += [
            'RERANKER_NAME = os.environ.get("QWEN3VL_RERANKER_MODEL", "Qwen/Qwen3-VL-Reranker-2B")',
            'RERANKER_MODEL = resolve_model_name(RERANKER_NAME, "reranker")',
        ]
    names = "EMBEDDING_NAME, RERANKER_NAME" if reranker else "EMBEDDING_NAME"
    lines += [
        f'if "tiny" in ({names},):',
        '    print("Tiny random checkpoints: the code runs, but rankings and scores are meaningless.")',
    ]
    if data:
        lines += [
            "",
            "# The sample folder: pictures, short text documents and two 3-second videos, drawn locally.",
            'DATA = Path(tempfile.mkdtemp(prefix="qwen3vl-cookbook-"))',
            "files = generate_sample_data(DATA)",
            'print(DATA, sorted(p.name for p in files))',
        ]
    return "\n".join(lines)


MODELS_NOTE = """
**Models.** The notebook reads the model names from the environment variables `QWEN3VL_EMBEDDING_MODEL` and
`QWEN3VL_RERANKER_MODEL` (Hugging Face ids or local folders; default `Qwen/Qwen3-VL-Embedding-2B` and
`Qwen/Qwen3-VL-Reranker-2B`). The value `tiny` builds tiny random checkpoints locally: that is how `make test`
executes this notebook offline, and the rankings are then meaningless.
"""


# --------------------------------------------------------------------------------------------------------------
# 01: LlamaIndex multimodal RAG

NB01 = [
    md("""
# Multimodal RAG with LlamaIndex: one index for text, images and video

Qwen3-VL-Embedding puts text, images and videos in **one vector space**. With `qwen3vl_integrations` a plain
LlamaIndex `VectorStoreIndex` can therefore hold all three, and a single retriever answers:

* text → image / video / text ("a red circle"),
* image → image (and text, and video),
* video → everything,

and `Qwen3VLRerank` reranks mixed candidates (text, image and video nodes) with Qwen3-VL-Reranker.
""" + MODELS_NOTE),
    code(setup_cell()),
    md("""
## 1. Read the folder

`media_file_extractor()` makes `SimpleDirectoryReader` read image files as `ImageDocument`s and video files as
documents whose metadata `video_path` names the video (without it, LlamaIndex reads a `.png` as text and sends
`.mp4` files to a speech-to-text reader).
"""),
    code("""
from llama_index.core import SimpleDirectoryReader

from qwen3vl_integrations.llama_index import media_file_extractor, node_modality

documents = SimpleDirectoryReader(str(DATA), file_extractor=media_file_extractor()).load_data()
for doc in documents:
    print(f"{node_modality(doc):6s} {type(doc).__name__:14s} {doc.metadata['file_name']}")
"""),
    md("""
## 2. One index for every modality

Used as a transformation, `Qwen3VLEmbedding` embeds image nodes as images, video nodes as videos and everything
else as text (documents get the model's default instruction). Queries get a retrieval instruction.
"""),
    code("""
from llama_index.core import VectorStoreIndex
from llama_index.core.ingestion import IngestionPipeline
from llama_index.core.node_parser import SentenceSplitter

from qwen3vl_integrations.llama_index import Qwen3VLEmbedding

embed = Qwen3VLEmbedding(model_name=EMBEDDING_MODEL)  # loads lazily; device and dtype picked automatically
nodes = IngestionPipeline(transformations=[SentenceSplitter(chunk_size=512), embed]).run(documents=documents)
index = VectorStoreIndex(nodes, embed_model=embed)
print(len(nodes), "nodes, dimension", len(nodes[0].embedding))
"""),
    md("""
A small helper draws the results as a contact sheet: pictures as thumbnails, videos by their first frame, text
documents as cards, each with its rank and score.
"""),
    code("""
from IPython.display import display

from qwen3vl_integrations.cli import Hit, render_results_picture


def show(results, title, scores_are_rerank=False):
    hits = []
    for rank, result in enumerate(results, 1):
        meta = result.node.metadata
        modality = node_modality(result.node)
        path = meta.get("video_path") or meta.get("file_path", "")
        text = result.node.get_content() if modality == "text" else ""
        score = float(result.score or 0.0)
        hits.append(Hit(rank, score if not scores_are_rerank else meta.get("retrieval_score", 0.0),
                        score if scores_are_rerank else None, modality, meta.get("file_name", ""), path, text))
    display(render_results_picture(hits, title=title, columns=5))
"""),
    md("### Text → image, text → video"),
    code("""
retriever = index.as_retriever(similarity_top_k=5)
show(retriever.retrieve("a red circle"), 'text query: "a red circle"')
show(retriever.retrieve("a ball rolling across grass"), 'text query: "a ball rolling across grass"')
"""),
    md("""
### Image → image, video → everything

A vector retriever uses a `QueryBundle`'s precomputed `embedding` as it is, so searching by image or video is a
one-liner: `image_query_bundle(embed, path)` / `video_query_bundle(embed, path)`.
"""),
    code("""
from qwen3vl_integrations.llama_index import image_query_bundle, video_query_bundle

show(retriever.retrieve(image_query_bundle(embed, str(DATA / "sunset_beach.jpg"))), "image query: sunset_beach.jpg")
show(retriever.retrieve(video_query_bundle(embed, str(DATA / "ball_rolling.mp4"))), "video query: ball_rolling.mp4")
"""),
    md("""
## 3. Reranking text, image and video candidates

`Qwen3VLRerank` is a node postprocessor: it scores each candidate (text, image or video) against the query with
Qwen3-VL-Reranker, writes a relevance probability in (0, 1) to `node.score`, sorts and keeps `top_n`. With
`keep_retrieval_score=True` the retriever's score stays in `metadata["retrieval_score"]`.
"""),
    code("""
from qwen3vl_integrations.llama_index import Qwen3VLRerank

rerank = Qwen3VLRerank(model=RERANKER_MODEL, top_n=4, keep_retrieval_score=True)
query = "a sunset over the sea"
candidates = index.as_retriever(similarity_top_k=10).retrieve(query)
reranked = rerank.postprocess_nodes(candidates, query_str=query)
show(reranked, f'reranked: "{query}"', scores_are_rerank=True)

# rerank by image: the bundle's image_path is the reranker's query
bundle = image_query_bundle(embed, str(DATA / "red_circle.png"))
reranked = rerank.postprocess_nodes(index.as_retriever(similarity_top_k=10).retrieve(bundle), query_bundle=bundle)
show(reranked, "reranked: image query red_circle.png", scores_are_rerank=True)
"""),
    md("""
### In a query engine

The reranker goes into any query engine as a node postprocessor. `MockLLM` stands in for your LLM here; the
retrieved sources are what matter.
"""),
    code("""
from llama_index.core.llms import MockLLM

query_engine = index.as_query_engine(llm=MockLLM(max_tokens=16), similarity_top_k=10, node_postprocessors=[rerank])
response = query_engine.query("How did sales develop over the four quarters?")
for source in response.source_nodes:
    print(f"{source.score:.3f}  {node_modality(source.node):5s}  {source.node.metadata['file_name']}")
"""),
    md("""
## 4. Persist and reload

The index is an ordinary LlamaIndex index: persist it and load it back with the same embedding model.
`qwen3vl-search index FOLDER` / `qwen3vl-search query INDEX "text"` do exactly this from the command line.
"""),
    code("""
from llama_index.core import StorageContext, load_index_from_storage

index.storage_context.persist(persist_dir=str(DATA / "index"))
reloaded = load_index_from_storage(StorageContext.from_defaults(persist_dir=str(DATA / "index")), embed_model=embed)
top = reloaded.as_retriever(similarity_top_k=1).retrieve("a red circle")[0]
print(top.node.metadata["file_name"], round(top.score, 3))
"""),
]


# --------------------------------------------------------------------------------------------------------------
# 02: LangChain

NB02 = [
    md("""
# LangChain: a reranking retriever and an image-aware vector store

* `Qwen3VLEmbeddings` is a LangChain `Embeddings` with `embed_image(uris=...)`, the method image-aware vector
  stores (Chroma, LanceDB, ...) call, plus `embed_video(uris)` and `embed_multimodal(items)`.
* `Qwen3VLRerank` is a `BaseDocumentCompressor` that reranks text, image and video documents; it plugs into
  `ContextualCompressionRetriever`.
* `Qwen3VLCrossEncoder` is a `BaseCrossEncoder`: a one-line switch for `CrossEncoderReranker` users.
""" + MODELS_NOTE),
    code(setup_cell()),
    code("""
from IPython.display import display

from qwen3vl_integrations.cli import Hit, render_results_picture


def show(docs, title):
    \"\"\"Thumbnails of LangChain documents (images and videos from their metadata, text as cards), with the
    reranker's relevance_score when there is one.\"\"\"
    hits = []
    for rank, doc in enumerate(docs, 1):
        meta = doc.metadata
        if "video_path" in meta:
            modality, path, text = "video", meta["video_path"], ""
        elif "image_path" in meta:
            modality, path, text = "image", meta["image_path"], ""
        else:
            modality, path, text = "text", meta.get("source", ""), doc.page_content
        hits.append(Hit(rank, None, meta.get("relevance_score"), modality, Path(path).name, path, text))
    display(render_results_picture(hits, title=title, columns=5))
"""),
    md("""
## 1. A retriever with the reranking compressor

A vector store retrieves candidates; `Qwen3VLRerank` reorders them with the cross-attention reranker and keeps
`top_n`, writing `metadata["relevance_score"]`.
"""),
    code("""
from langchain_classic.retrievers import ContextualCompressionRetriever
from langchain_core.documents import Document
from langchain_core.vectorstores import InMemoryVectorStore

from qwen3vl_integrations.langchain import Qwen3VLEmbeddings, Qwen3VLRerank

emb = Qwen3VLEmbeddings(model_name=EMBEDDING_MODEL)  # loads lazily, shared with every other adapter
texts = sorted(DATA.glob("*.txt"))
store = InMemoryVectorStore(embedding=emb)
store.add_documents([Document(page_content=p.read_text(), metadata={"source": str(p)}) for p in texts])

rerank = Qwen3VLRerank(model_name=RERANKER_MODEL, top_n=2)
retriever = ContextualCompressionRetriever(base_compressor=rerank,
                                           base_retriever=store.as_retriever(search_kwargs={"k": 4}))
for doc in retriever.invoke("How much did sales grow at the end of the year?"):
    print(round(doc.metadata["relevance_score"], 3), Path(doc.metadata["source"]).name)
"""),
    md("""
The compressor also reranks documents that carry an image or a video in their metadata (`image_path`,
`image_url`, `video_path`, `video_url`, or a `source` naming a media file):
"""),
    code("""
mixed = [
    Document(page_content="", metadata={"image_path": str(DATA / "red_circle.png")}),
    Document(page_content="", metadata={"image_path": str(DATA / "sunset_beach.jpg")}),
    Document(page_content="", metadata={"video_path": str(DATA / "ball_rolling.mp4")}),
    Document(page_content=(DATA / "sourdough_recipe.txt").read_text(), metadata={"source": "sourdough_recipe.txt"}),
]
best = Qwen3VLRerank(model_name=RERANKER_MODEL, top_n=4).compress_documents(mixed, "a football on a lawn")
show(best, 'reranked: "a football on a lawn"')
"""),
    md("""
## 2. An image-aware vector store: Chroma with `embed_image`

`Chroma.add_images(uris=...)` calls `embeddings.embed_image(uris=...)` and `similarity_search_by_image` embeds
the query picture the same way. Text and images share the space, so a text query finds pictures too. Chroma runs
in-process here (nothing to install besides `langchain-chroma`).
"""),
    code("""
import chromadb
from langchain_chroma import Chroma

client = chromadb.EphemeralClient(settings=chromadb.config.Settings(anonymized_telemetry=False))
chroma = Chroma(client=client, collection_name="cookbook_samples", embedding_function=emb)

images = sorted(str(p) for p in DATA.iterdir() if p.suffix in (".png", ".jpg"))
chroma.add_images(uris=images, metadatas=[{"image_path": p} for p in images])
chroma.add_texts([p.read_text() for p in texts], metadatas=[{"source": str(p)} for p in texts])

# Videos: Chroma has no add_videos, so embed them with embed_video and add them through Chroma's own collection.
videos = sorted(str(p) for p in DATA.glob("*.mp4"))
client.get_collection("cookbook_samples").add(
    ids=[Path(v).name for v in videos], embeddings=emb.embed_video(uris=videos),
    documents=[""] * len(videos), metadatas=[{"video_path": v} for v in videos],
)

show(chroma.similarity_search("a red circle", k=4), 'Chroma, text query: "a red circle"')
show(chroma.similarity_search("a ball rolling across grass", k=4), 'Chroma, text query: "a ball rolling across grass"')
by_image = chroma.similarity_search_by_image(uri=str(DATA / "sunset_beach.jpg"), k=4)
show(by_image, "Chroma, image query: sunset_beach.jpg")
"""),
    md("""
### Rerank what Chroma retrieves

`add_images` stores the picture as base64 in `page_content`; the compressor reads the image from
`metadata["image_path"]` (or decodes that base64) and never scores the base64 as text.
"""),
    code("""
chroma_retriever = ContextualCompressionRetriever(
    base_compressor=Qwen3VLRerank(model_name=RERANKER_MODEL, top_n=3),
    base_retriever=chroma.as_retriever(search_kwargs={"k": 8}),
)
show(chroma_retriever.invoke("a sunset over the sea"), 'Chroma + rerank: "a sunset over the sea"')
"""),
    md("""
## 3. `CrossEncoderReranker` users: a one-line switch

`CrossEncoderReranker` passes text only; use `Qwen3VLRerank` for images and videos.
"""),
    code("""
from langchain_classic.retrievers.document_compressors import CrossEncoderReranker

from qwen3vl_integrations.langchain import Qwen3VLCrossEncoder

compressor = CrossEncoderReranker(model=Qwen3VLCrossEncoder(model_name=RERANKER_MODEL), top_n=2)
docs = [Document(page_content=p.read_text(), metadata={"source": p.name}) for p in texts]
for doc in compressor.compress_documents(docs, "Which planet is the biggest?"):
    print(doc.metadata["source"])
"""),
]


# --------------------------------------------------------------------------------------------------------------
# 03: storage profiles

NB03 = [
    md("""
# Storage profiles: Matryoshka dimensions, int8 and binary with rescoring

A 2048-d float32 vector takes 8 KiB. Qwen3-VL-Embedding vectors can be **cut shorter** (Matryoshka: keep the
first `k` values, 64 ≤ k ≤ 2048, and re-normalise) and **quantized** (int8 with calibrated per-dimension ranges,
or 1 bit per dimension). Binary is a first stage only: search the bits, then **rescore** the best
`top_k × 4` candidates exactly.

This notebook measures **bytes per vector versus agreement with the full-precision ranking** (recall@k of the
float32, full-dimension top-k) for every profile, on

1. the sample corpus embedded with the model (few vectors, so the curve is coarse; with tiny models there is only
   one Matryoshka size, 64), and
2. synthetic Matryoshka-like vectors (5,000 × 1024 with planted neighbours), which make the trade-off visible
   whatever model is configured.
""" + MODELS_NOTE),
    code(setup_cell(reranker=False)),
    md("## 1. Embed the sample corpus with the core"),
    code("""
import numpy as np

from qwen3vl_integrations import Qwen3VLEmbedder
from qwen3vl_integrations.core.prompts import DEFAULT_QUERY_INSTRUCTION

emb = Qwen3VLEmbedder(model_name_or_path=EMBEDDING_MODEL)
items = [p.read_text() if p.suffix == ".txt" else {("video" if p.suffix == ".mp4" else "image"): str(p)}
         for p in files]
corpus = emb.embed(items)  # float32 [n, D], L2-normalised
queries = ["a red circle", "a blue square", "a green triangle", "a bar chart of sales", "a presentation slide",
           "a sunset at the beach", "a ball rolling across grass", "how to bake bread", "the largest planet",
           "geometry lesson", "the sun going down", "quarterly revenue"]
query_vecs = emb.embed(queries, instruction=DEFAULT_QUERY_INSTRUCTION)
print("corpus", corpus.shape, "queries", query_vecs.shape)
"""),
    md("""
## 2. Measure every profile

`qwen3vl_integrations.quantization` works on numpy arrays: `truncate` (Matryoshka), `calibrate` (int8 ranges),
`quantize`, and `search` (exact search over float, int8 or packed bits, with optional rescoring).
"""),
    code("""
from qwen3vl_integrations.quantization import calibrate, quantize, search, truncate


def profiles(docs, qs, dims, k, rescore_multiplier=4):
    \"\"\"Recall@k of each storage profile against the float32 full-dimension ranking; bytes per stored vector.\"\"\"
    _, truth = search(qs, docs, "float32", top_k=k)
    rows = []
    for d in dims:
        dd, qd = truncate(docs, d), truncate(qs, d)
        ranges = calibrate(dd)
        int8 = quantize(dd, "int8", ranges=ranges)
        bits = quantize(dd, "ubinary")
        runs = {
            "float32": (4 * d, search(qd, dd, "float32", top_k=k)[1]),
            "int8": (d, search(qd, int8, "int8", top_k=k, ranges=ranges)[1]),
            "binary": (d // 8, search(qd, bits, "ubinary", top_k=k)[1]),
            "binary + int8 rescore": (d // 8 + d, search(qd, bits, "ubinary", top_k=k, rescore=int8, ranges=ranges,
                                                         rescore_multiplier=rescore_multiplier)[1]),
        }
        for name, (nbytes, ids) in runs.items():
            recall = np.mean([len(set(a) & set(b)) / k for a, b in zip(ids, truth)])
            rows.append({"profile": name, "dims": d, "bytes": nbytes, "recall": float(recall)})
    return rows


dims = [d for d in (64, 128, 256, 512, 1024, 2048) if d <= corpus.shape[1]]
k_corpus = 3
corpus_rows = profiles(corpus, query_vecs, dims, k=k_corpus)
for row in corpus_rows:
    print(f"{row['profile']:22s} {row['dims']:5d} dims {row['bytes']:6d} B/vector  "
          f"recall@{k_corpus} {row['recall']:.2f}")
"""),
    md("""
### Synthetic Matryoshka-like vectors

100 random queries, each with 30 planted neighbours whose cosines to it run evenly from 0.9 down to 0.3, plus
2,000 unrelated vectors. Variance decays along the dimensions (as in a Matryoshka-trained model, the first
dimensions carry more of the signal). The float32 top-10 of each query is therefore a clear, graded target, and the
plot shows how much of it each profile keeps.
"""),
    code("""
rng = np.random.default_rng(0)
dim, n_queries, n_planted, n_background = 1024, 100, 30, 2000
scale = (np.arange(1, dim + 1) ** -0.25).astype(np.float32)  # decaying spectrum


def unit(x):
    return (x / np.linalg.norm(x, axis=-1, keepdims=True)).astype(np.float32)


def sample(n):
    return unit(rng.standard_normal((n, dim)).astype(np.float32) * scale)


queries_syn = sample(n_queries)
cos = np.linspace(0.9, 0.3, n_planted, dtype=np.float32)
noise = sample(n_queries * n_planted).reshape(n_queries, n_planted, dim)
planted = cos[None, :, None] * queries_syn[:, None, :] + np.sqrt(1 - cos**2)[None, :, None] * noise
docs_syn = np.concatenate([unit(planted.reshape(-1, dim)), sample(n_background)])

synthetic_rows = profiles(docs_syn, queries_syn, [64, 128, 256, 512, 1024], k=10)
for row in synthetic_rows:
    print(f"{row['profile']:22s} {row['dims']:5d} dims {row['bytes']:6d} B/vector  recall@10 {row['recall']:.2f}")
"""),
    md("## 3. Bytes per vector versus agreement with full precision"),
    code("""
%matplotlib inline
import matplotlib.pyplot as plt

fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
panels = [(axes[0], corpus_rows, f"sample corpus ({corpus.shape[0]} files, {corpus.shape[1]}-d), recall@{k_corpus}"),
          (axes[1], synthetic_rows, f"synthetic Matryoshka-like ({len(docs_syn):,} x {dim}), recall@10")]
markers = {"float32": "o", "int8": "s", "binary": "v", "binary + int8 rescore": "D"}
for ax, rows, title in panels:
    for name, marker in markers.items():
        pts = [r for r in rows if r["profile"] == name]
        ax.plot([r["bytes"] for r in pts], [r["recall"] for r in pts], marker=marker, label=name)
        for r in pts if name in ("float32", "binary") else []:  # label one line of each pair
            ax.annotate(str(r["dims"]), (r["bytes"], r["recall"]), textcoords="offset points", xytext=(3, 4),
                        fontsize=7)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("bytes per stored vector (log scale; labels: dimensions)")
    ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
axes[0].set_ylabel("agreement with float32 full-dimension top-k")
axes[1].legend(loc="lower right")
plt.tight_layout()
plt.show()
"""),
    md("""
Reading the plot: int8 sits on top of float32 at a quarter of the bytes; plain binary drops, increasingly at small
dimensions; binary with int8 rescoring recovers almost all of it. Matryoshka truncation moves every curve left.

## 4. The same knobs on the embedder

`embed(..., dimensions=, precision=, ranges=)` truncates, re-normalises and quantizes in one call. Calibrate the
int8 ranges once on a sample of your corpus and store them next to the index (`ranges.save(path)`).
"""),
    code("""
d = dims[-1] if len(dims) == 1 else dims[1]
ranges = calibrate(emb.embed(items, dimensions=d))
int8_codes = emb.embed(items, dimensions=d, precision="int8", ranges=ranges)
bits = emb.embed(items, dimensions=d, precision="ubinary")
q = emb.embed(["a red circle"], instruction=DEFAULT_QUERY_INSTRUCTION, dimensions=d)
scores, ids = search(q, bits, "ubinary", top_k=3, rescore=int8_codes, ranges=ranges)
print(int8_codes.dtype, int8_codes.shape, bits.dtype, bits.shape)
print([files[i].name for i in ids[0]], scores[0].round(3))
"""),
]


# --------------------------------------------------------------------------------------------------------------
# 04: core API

NB04 = [
    md("""
# The core API: `process`, `embed`, `score`, `rank`

The framework adapters are thin wrappers around two framework-free classes:

* `Qwen3VLEmbedder`: the official `process(list_of_dicts)` API (a float32 tensor), plus `embed` (numpy, any
  input form, instructions, Matryoshka dimensions, quantization) and `try_embed` (skips bad inputs and reports them);
* `Qwen3VLReranker`: the official `process({...})` API (a list of floats), plus `score` and `rank`.

Models load lazily on first use and are shared: every object that asks for the same checkpoint, device and dtype
(including the LlamaIndex and LangChain adapters) uses one loaded model.
""" + MODELS_NOTE),
    code(setup_cell()),
    md("## 1. The official embedding API: `process`"),
    code("""
import numpy as np

from qwen3vl_integrations import Qwen3VLEmbedder, Qwen3VLInputError, Qwen3VLReranker

emb = Qwen3VLEmbedder(model_name_or_path=EMBEDDING_MODEL)
inputs = [
    {"text": "A red circle on a white background.",
     "instruction": "Retrieve images or text relevant to the user's query."},
    {"image": str(DATA / "red_circle.png")},
    {"image": str(DATA / "blue_square.png")},
    {"video": str(DATA / "ball_rolling.mp4")},
    {"text": "Quarterly sales 2024", "image": str(DATA / "bar_chart.png")},  # text and image as one item
]
embeddings = emb.process(inputs)  # torch.Tensor [5, D], L2-normalised
print(embeddings.shape, embeddings.dtype)
print((embeddings @ embeddings.T).numpy().round(3))
"""),
    md("""
## 2. `embed`: numpy out, instructions, every input form

Plain strings are text; dicts may combine `text`, `image` and `video`. Images can be paths, `file://` or
`http(s)://` URLs, `data:` URIs, bytes, PIL images or arrays; videos can be files or lists of frames.
`instruction=` applies to the whole call (an item's own `"instruction"` wins). `dimensions=` truncates
(Matryoshka) and re-normalises.
"""),
    code("""
import av
from PIL import Image

from qwen3vl_integrations.core.prompts import DEFAULT_QUERY_INSTRUCTION

with av.open(str(DATA / "ball_rolling.mp4")) as container:
    frames = [frame.to_image() for frame in container.decode(video=0)][::3]  # 8 PIL frames

docs = emb.embed([
    (DATA / "shapes_lesson.txt").read_text(),                 # text
    Image.open(DATA / "red_circle.png"),                      # a PIL image
    {"image": (DATA / "sunset_beach.jpg").read_bytes()},     # encoded bytes
    {"video": frames},                                        # a video as a list of frames
    {"video": (DATA / "sunset_fading.mp4").as_uri()},         # a file:// URL
])
query = emb.embed(["a ball rolling across grass"], instruction=DEFAULT_QUERY_INSTRUCTION)
print(docs.shape, docs.dtype, (docs @ query[0]).round(3))
print("Matryoshka:", emb.embed(["a red circle"], dimensions=64).shape)
"""),
    md("""
## 3. `try_embed`: skip and report bad inputs

`embed` raises `Qwen3VLInputError` before any model work when an input is bad: one error for all the bad inputs of
the call, naming the first, with every one of them (position and cause) in its `.errors`. `try_embed` embeds the
good ones and returns the errors.
"""),
    code("""
(DATA / "broken.png").write_bytes(b"not a picture")
try:
    emb.embed(["a red circle", {"image": str(DATA / "broken.png")}, {"image": str(DATA / "missing.png")}])
except Qwen3VLInputError as err:
    print(err)
    print("bad inputs:", [(bad.index, bad.cause) for bad in err.errors])

result = emb.try_embed(["a red circle", {"image": str(DATA / "broken.png")}, {"image": str(DATA / "missing.png")},
                        {"image": str(DATA / "blue_square.png")}])
print("embedded:", result.indices, result.embeddings.shape)
for error in result.errors:
    print("skipped:", error)
"""),
    md("## 4. The official reranker API: `process`"),
    code("""
rr = Qwen3VLReranker(model_name_or_path=RERANKER_MODEL)
scores = rr.process({
    "instruction": "Retrieve images or text relevant to the user's query.",
    "query": {"text": "a red circle"},
    "documents": [
        {"image": str(DATA / "red_circle.png")},
        {"image": str(DATA / "blue_square.png")},
        {"text": (DATA / "jupiter_facts.txt").read_text()},
        {"video": str(DATA / "ball_rolling.mp4")},
    ],
})
print([round(s, 3) for s in scores])
"""),
    md("""
## 5. `score` and `rank`

`score(query, documents)` returns a float32 array in (0, 1) in input order; `rank` sorts and cuts to `top_n`. The
query, like the documents, can be text, an image, a video or a mix.
"""),
    code("""
candidates = [str(p) for p in files if p.suffix != ".txt"]
documents = [{"video" if c.endswith(".mp4") else "image": c} for c in candidates]
print(rr.score("a sunset over the sea", documents).round(3))
for i, score in rr.rank({"image": str(DATA / "sunset_beach.jpg")}, documents, top_n=3):
    print(round(score, 3), Path(candidates[i]).name)
"""),
    md("""
Every pair of one query begins with the same tokens (system prompt, instruction, the query with its image or
video), so the reranker can run them once per call and let each document attend to their cached keys and values.
By default (`share_query_prefix=None`) it does so on CPU, and on GPUs for queries with images or videos, where it
pays; `True` or `False` decide for every query. The scores are those of scoring each pair whole, up to float rounding:
"""),
    code("""
whole = Qwen3VLReranker(model_name_or_path=RERANKER_MODEL, share_query_prefix=False)
query = {"image": str(DATA / "sunset_beach.jpg")}
print("largest difference:", float(np.abs(rr.score(query, documents) - whole.score(query, documents)).max()))
"""),
    md("""
## 6. One model, many wrappers

Adapters take an existing core object, or build their own; either way the loaded model is shared.
"""),
    code("""
from qwen3vl_integrations.langchain import Qwen3VLEmbeddings
from qwen3vl_integrations.llama_index import Qwen3VLEmbedding

li_embed = Qwen3VLEmbedding(embedder=emb)
lc_embed = Qwen3VLEmbeddings(embedder=emb)
a = np.array(li_embed.get_text_embedding("a red circle"))
b = np.array(lc_embed.embed_documents(["a red circle"])[0])
print(np.allclose(a, b, atol=1e-5), np.allclose(a, emb.embed(["a red circle"])[0], atol=1e-5))
"""),
    md("""
### Serving queries: concurrent calls share forward passes

A search service embeds each user's query in its own call, several at a time: the async methods run each call in a
worker thread. Calls that wait for the model while another call runs go through it together, in one forward pass,
with the same numbers as alone; a call that finds the model free runs at once. `joiner.passes` counts those passes.
"""),
    code("""
import asyncio

questions = [f"question {i} about oceans, slides and sunsets" for i in range(32)]
joiner = emb.load().joiner
passes_before = joiner.passes
served = await asyncio.gather(*(lc_embed.aembed_query(q) for q in questions))
print(f"{len(questions)} concurrent queries ran in {joiner.passes - passes_before} forward passes")
alone = np.stack([lc_embed.embed_query(q) for q in questions])
print("same vectors as one call at a time:", np.allclose(np.array(served), alone, atol=1e-5))
"""),
    md("""
### Long GPU jobs: `torch_compile`

`torch_compile=True` runs the language model's decoder layers under `torch.compile` for this object's calls (others
sharing the model stay eager); a reranker's calls compile too. On an H100 it embedded the benchmark's texts 1.16x
faster after about 40 s of compilation; on CPUs the gain varies by machine (1.10x on texts and 1.12x reranking
texts on our Intel build machine, a loss on an AMD one). A dict
passes `torch.compile`'s own options. Off a GPU this cell uses torch's `"eager"` backend, which only captures the
layers' graphs (no speed gain), to show that the vectors stay the same.
"""),
    code("""
import torch

compiled = Qwen3VLEmbedder(model_name_or_path=EMBEDDING_MODEL,
                           torch_compile=True if torch.cuda.is_available() else {"backend": "eager"})
print(compiled.torch_compile)
print("largest difference from the eager layers:", float(np.abs(compiled.embed(questions) - emb.embed(questions)).max()))
"""),
]


# Every notebook draws its sample folder into a new temporary folder: the last cell removes it (runs of the
# cookbook, CI's included, left one behind each).
CLEAN_UP = [
    md("""
## Clean up

Remove the sample folder (and what this notebook wrote into it).
"""),
    code("""
import shutil

shutil.rmtree(DATA)
"""),
]


NOTEBOOKS = {
    "01_llama_index_multimodal_rag.ipynb": NB01 + CLEAN_UP,
    "02_langchain.ipynb": NB02 + CLEAN_UP,
    "03_storage_profiles.ipynb": NB03 + CLEAN_UP,
    "04_core_api.ipynb": NB04 + CLEAN_UP,
}


def build(out_dir: Path = HERE) -> list[Path]:
    written = []
    for name, cells in NOTEBOOKS.items():
        nb = new_notebook(cells=cells)
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nb.metadata["language_info"] = {"name": "python"}
        # deterministic cell ids, so that rebuilding an unchanged notebook changes nothing
        for i, cell in enumerate(nb.cells):
            cell["id"] = f"{name[:2]}-{i:02d}"
        nbformat.validate(nb)
        path = out_dir / name
        path.write_text(nbformat.writes(nb) + "\n", encoding="utf-8")
        written.append(path)
    return written


if __name__ == "__main__":
    for path in build(Path(sys.argv[1]) if len(sys.argv) > 1 else HERE):
        print(path)
