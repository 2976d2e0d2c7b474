"""Searching a persisted index: :class:`Hit`, the manifest, :func:`search` (with optional reranking) and the table."""
from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

from .constants import MANIFEST_FORMAT, MANIFEST_NAME, PROG, REAL_RERANKER_MODEL, TINY, TINY_WARNING
from .errors import CLIError, _cause, _one_line
from .models import _embed_model, _is_tiny, _llama_index, _make_embedder, _make_reranker


@dataclass
class Hit:
    """One search result."""

    rank: int
    score: float | None  # cosine similarity from the vector store (None: unknown, e.g. not shown)
    rerank_score: float | None
    modality: str
    file: str  # path relative to the indexed folder
    path: str  # absolute path
    text: str = ""  # the document text, for text files


def read_manifest(index_dir: str | Path) -> dict:
    index_dir = Path(index_dir).expanduser()
    if not index_dir.is_dir():
        raise CLIError(f"index folder not found: {index_dir}", code=2)
    path = index_dir / MANIFEST_NAME
    if not path.is_file():
        raise CLIError(f"not a {PROG} index: {index_dir} has no {MANIFEST_NAME}; build one with "
                       f"`{PROG} index FOLDER --index-dir {index_dir}`", code=2)
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise CLIError(f"cannot read {path}: {_one_line(exc)}", code=2) from None
    if manifest.get("format") != MANIFEST_FORMAT:
        raise CLIError(f"{path} has format {manifest.get('format')!r}; this version reads format "
                       f"{MANIFEST_FORMAT}: rebuild the index", code=2)
    return manifest


def _same_model(requested: str, manifest: dict) -> bool:
    if requested == manifest["model"] or requested == manifest.get("model_path"):
        return True
    if _is_tiny(requested) and _is_tiny(manifest["model"]):
        return True
    try:
        a = Path(requested).expanduser()
        b = Path(manifest.get("model_path") or "")
        return a.exists() and b.exists() and a.resolve() == b.resolve()
    except OSError:
        return False


def _stored_dimension(index) -> int | None:
    store = index.vector_store
    data = getattr(store, "data", None) or getattr(getattr(store, "_data", None), "__dict__", None)
    table = getattr(data, "embedding_dict", None)
    if table:
        return len(next(iter(table.values())))
    return None


def search(
    index_dir: str | Path,
    text: str | None = None,
    *,
    image: str | Path | None = None,
    video: str | Path | None = None,
    top_k: int = 5,
    rerank: bool = False,
    reranker: str | None = None,
    candidates: int | None = None,
    instruction: str | None = None,
    model: str | None = None,
    dimensions: int | None = None,
    device: str | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
) -> tuple[list[Hit], dict]:
    """Query a persisted index. Returns the hits (best first) and the manifest (plus ``"reranker"``: the reranker
    model used, or None).

    ``model`` / ``dimensions`` default to the index's own; passing different ones raises :class:`CLIError`
    (an index only answers queries embedded by the model and at the dimension it was built with).
    """
    from ..core.prompts import DEFAULT_QUERY_INSTRUCTION

    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    if top_k <= 0:
        raise CLIError(f"--top-k must be a positive integer, got {top_k}", code=2)
    text = (text or "").strip() or None
    if text is None and image is None and video is None:
        raise CLIError("nothing to search for: give a query text and/or --image / --video", code=2)
    for flag, value in (("--image", image), ("--video", video)):
        if value is not None and "://" not in str(value) and not Path(value).expanduser().is_file():
            raise CLIError(f"{flag} file not found: {value}", code=2)
    manifest = read_manifest(index_dir)
    index_dir = Path(index_dir).expanduser()
    built_with = manifest["model"]
    if model and not _same_model(model, manifest):
        raise CLIError(f"model mismatch: {index_dir} was built with {built_with!r} (dimension "
                       f"{manifest['dimension']}), not {model!r}; query without --model, or rebuild the index with "
                       f"`{PROG} index FOLDER --model {model}`", code=2)
    if dimensions and int(dimensions) != int(manifest["dimension"]):
        raise CLIError(f"dimension mismatch: {index_dir} holds {manifest['dimension']}-dimensional vectors "
                       f"(model {built_with!r}), not {dimensions}; query without --dimensions, or rebuild the index "
                       f"with `{PROG} index FOLDER --dimensions {dimensions}`", code=2)
    li = _llama_index()
    if _is_tiny(built_with):
        warn(TINY_WARNING)
    embedder, _ = _make_embedder(built_with, device=device, batch_size=None, max_frames=manifest.get("max_frames"))
    if int(embedder.embedding_dim) != int(manifest["model_dim"]):
        raise CLIError(f"model mismatch: {built_with!r} now has embedding size {embedder.embedding_dim}, but "
                       f"{index_dir} was built with size {manifest['model_dim']}: rebuild the index", code=2)
    dims = manifest.get("dimensions")
    storage = li["StorageContext"].from_defaults(persist_dir=str(index_dir))
    try:
        index = li["load_index_from_storage"](storage, embed_model=_embed_model(embedder, dims))
    except Exception as exc:  # noqa: BLE001
        raise CLIError(f"cannot load the index in {index_dir}: {_one_line(exc)}", code=2) from None
    stored = _stored_dimension(index)
    if stored is not None and stored != int(manifest["dimension"]):
        raise CLIError(f"dimension mismatch: {index_dir} stores {stored}-dimensional vectors but its manifest says "
                       f"{manifest['dimension']}: rebuild the index", code=2)

    query_item: Any
    media: dict[str, str] = {}
    if image is not None:
        media["image"] = str(image)
    if video is not None:
        media["video"] = str(video)
    query_item = dict(media, text=text) if media and text else (media or text)
    instruction = instruction or DEFAULT_QUERY_INSTRUCTION
    try:
        qvec = embedder.embed([query_item], instruction=instruction, dimensions=dims)[0]
    except ValueError as exc:
        raise CLIError(f"cannot embed the query: {_cause(exc)}", code=2) from None
    if len(qvec) != int(manifest["dimension"]):
        raise CLIError(f"dimension mismatch: the query vector has {len(qvec)} dimensions, the index "
                       f"{manifest['dimension']}", code=2)

    total = int(manifest["counts"]["indexed"])
    n_candidates = min(total, max(top_k, candidates or max(20, 4 * top_k))) if rerank else min(top_k, total)
    retriever = index.as_retriever(similarity_top_k=n_candidates)
    try:
        results = retriever.retrieve(li["QueryBundle"](query_str=text or "", embedding=[float(v) for v in qvec]))
    except KeyError as exc:  # a store names a node the docstore lacks: files of two different indexes
        raise CLIError(f"the index in {index_dir} is inconsistent ({_one_line(exc)}); rebuild it with "
                       f"`{PROG} index FOLDER --index-dir {index_dir}`", code=2) from None

    hits = []
    for r in results:
        md = r.node.metadata or {}
        modality = md.get("modality", "text")
        hits.append(Hit(rank=0, score=float(r.score or 0.0), rerank_score=None, modality=modality,
                        file=md.get("relative_path") or md.get("file_name", r.node.node_id),
                        path=md.get("file_path", ""),
                        text=r.node.get_content() if modality == "text" else ""))

    rr_name = None
    if rerank and hits:
        rr_name = reranker or (TINY if _is_tiny(built_with) else REAL_RERANKER_MODEL)
        if _is_tiny(rr_name) and not _is_tiny(built_with):
            warn(TINY_WARNING)
        log(f"Reranking {len(hits)} candidates with {rr_name} ...")
        rr, _ = _make_reranker(rr_name, device=device)
        docs: list[str | dict[str, str]] = []
        positions: list[int] = []
        for i, h in enumerate(hits):
            if h.modality == "text":
                docs.append(h.text)
            elif Path(h.path).is_file():
                docs.append({h.modality: h.path})
            else:
                warn(f"cannot rerank {h.file}: the file is gone (it stays last)")
                continue
            positions.append(i)
        if docs:
            try:
                scores = rr.score(query_item, docs, instruction=instruction, show_progress=progress)
            except ValueError as exc:
                raise CLIError(f"cannot rerank: {exc}", code=2) from None
            for i, s in zip(positions, scores):
                hits[i].rerank_score = float(s)
        hits.sort(key=lambda h: (h.rerank_score is None, -(h.rerank_score or 0.0), -(h.score or 0.0)))
    hits = hits[:top_k]
    for rank, h in enumerate(hits, 1):
        h.rank = rank
    return hits, dict(manifest, reranker=rr_name)


def _describe_query(text: str | None, image, video) -> str:
    parts = []
    if text:
        parts.append(f'"{text}"')
    if image:
        parts.append(f"image {Path(str(image)).name}")
    if video:
        parts.append(f"video {Path(str(video)).name}")
    return " + ".join(parts)


def format_table(hits: Sequence[Hit]) -> str:
    """The ranked results as a plain-text table: rank, score, rerank score, modality, file."""
    rows = [("rank", "score", "rerank", "modality", "file")]
    for h in hits:
        score = "-" if h.score is None else f"{h.score:.4f}"
        rerank = "-" if h.rerank_score is None else f"{h.rerank_score:.4f}"
        rows.append((str(h.rank), score, rerank, h.modality, h.file))
    widths = [max(len(r[i]) for r in rows) for i in range(5)]
    lines = []
    for j, r in enumerate(rows):
        cells = [r[0].rjust(widths[0]), r[1].rjust(widths[1]), r[2].rjust(widths[2]), r[3].ljust(widths[3]), r[4]]
        lines.append("  ".join(cells).rstrip())
        if j == 0:
            lines.append("  ".join("-" * w for w in widths))
    return "\n".join(lines)
