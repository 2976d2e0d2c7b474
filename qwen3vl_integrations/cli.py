"""``qwen3vl-search``: multimodal search over a folder of pictures, text files and videos.

Two commands::

    qwen3vl-search index FOLDER [--index-dir DIR] [--model NAME|PATH|tiny] [--dimensions K] ...
    qwen3vl-search query INDEX_DIR ["text"] [--image P] [--video P] [--top-k K] [--rerank] ...

``index`` embeds every image, text file and video of FOLDER with Qwen3-VL-Embedding into one vector space and
persists a LlamaIndex ``VectorStoreIndex`` (plus a small ``qwen3vl-manifest.json``) in the index directory.
``query`` embeds a text and/or image/video query with the query instruction, retrieves the nearest files,
optionally reranks them with Qwen3-VL-Reranker, prints a ranked table and writes a picture of the results.

The model name ``tiny`` builds tiny random checkpoints in a cache folder (no downloads): the pipeline runs offline,
but its rankings are meaningless. The Python functions :func:`build_index`, :func:`search`,
:func:`render_results_picture` and :func:`resolve_model_name` are what the commands use, for scripts and notebooks.
"""
from __future__ import annotations

import argparse
import codecs
import contextlib
import datetime as _dt
import io
import json
import os
import re
import shutil
import signal
import sys
import tempfile
import textwrap
import threading
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

from .sample_data import IMAGE_EXTENSIONS, TEXT_EXTENSIONS, VIDEO_EXTENSIONS

__all__ = [
    "REAL_EMBEDDING_MODEL",
    "REAL_RERANKER_MODEL",
    "TINY",
    "MANIFEST_NAME",
    "CLIError",
    "Hit",
    "resolve_model_name",
    "tiny_checkpoint",
    "scan_folder",
    "build_index",
    "search",
    "format_table",
    "render_results_picture",
    "main",
]

PROG = "qwen3vl-search"
REAL_EMBEDDING_MODEL = "Qwen/Qwen3-VL-Embedding-2B"
REAL_RERANKER_MODEL = "Qwen/Qwen3-VL-Reranker-2B"
TINY = "tiny"
MANIFEST_NAME = "qwen3vl-manifest.json"
MANIFEST_FORMAT = 1
DEFAULT_INDEX_DIR = "qwen3vl-index"
TINY_WARNING = (
    "warning: using tiny random checkpoints (--model tiny): the pipeline runs, but rankings and scores are "
    "meaningless. Use the real models for real results."
)

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


class CLIError(Exception):
    """A user-facing error: printed as one line (no traceback), exit status ``code``."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


# --------------------------------------------------------------------------------------------------------------
# models


def _cache_root() -> Path:
    env = os.environ.get("QWEN3VL_CACHE_DIR")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qwen3vl-integrations"


def tiny_checkpoint(kind: str = "embedding") -> Path:
    """The tiny random checkpoint of ``kind`` ("embedding" or "reranker") in the cache folder, built if needed.

    The folder is ``$QWEN3VL_CACHE_DIR/tiny-<kind>`` (default ``~/.cache/qwen3vl-integrations``). It is rebuilt
    when the installed transformers version changes. Builds are deterministic, so a rebuilt checkpoint is the
    same model.
    """
    import transformers

    from .testing import build_tiny_checkpoint

    path = _cache_root() / f"tiny-{kind}"
    stamp = path / ".qwen3vl-tiny-stamp"
    wanted = f"transformers={transformers.__version__}\n"
    if stamp.is_file() and stamp.read_text() == wanted:
        return path
    tmp = path.with_name(f"{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    build_tiny_checkpoint(tmp, kind=kind)
    (tmp / stamp.name).write_text(wanted)
    shutil.rmtree(path, ignore_errors=True)
    try:
        os.replace(tmp, path)
    except OSError:  # another process won the race: its checkpoint is identical
        shutil.rmtree(tmp, ignore_errors=True)
    return path


def resolve_model_name(name: str | None, kind: str = "embedding") -> str:
    """Map a user-facing model name to what the core loads.

    ``None`` or ``""`` gives the real default model of ``kind``; ``"tiny"`` gives the path of a freshly built (or
    cached) tiny random checkpoint; anything else (a hub id or a local folder) is returned unchanged. Notebooks call
    this with the value of ``QWEN3VL_EMBEDDING_MODEL`` / ``QWEN3VL_RERANKER_MODEL``.
    """
    if kind not in ("embedding", "reranker"):
        raise ValueError(f"kind must be 'embedding' or 'reranker', got {kind!r}")
    if not name:
        return REAL_EMBEDDING_MODEL if kind == "embedding" else REAL_RERANKER_MODEL
    if name.strip().lower() == TINY:
        return str(tiny_checkpoint(kind))
    return name


def _is_tiny(name: str | None) -> bool:
    return name is not None and name.strip().lower() == TINY


def _load_failure(name: str, resolved: str, role: str, exc: BaseException | None) -> CLIError:
    """A one-line explanation of why a model could not be loaded, with the offline hint for hub models."""
    local = Path(resolved).expanduser()
    if local.exists():
        return CLIError(f"cannot load the {role} model from {resolved}: {_one_line(exc)}", code=3)
    if _HUB_ID.match(resolved) and not resolved.startswith((".", "/")):
        if _hub_offline():
            why = ("it is not in the local Hugging Face cache and offline mode is on (HF_HUB_OFFLINE=1); "
                   "to download it, run with HF_HUB_OFFLINE=0 and network access")
        else:
            why = ("the Hugging Face Hub cannot be reached and it is not in the local cache; download it where "
                   f"there is network access (`huggingface-cli download {resolved}`)")
        return CLIError(
            f"cannot load the {role} model {resolved!r}: {why}. To run offline with tiny random checkpoints "
            f"(meaningless rankings): `make demo MODEL=tiny`, or `{PROG} index FOLDER --model tiny`.",
            code=3,
        )
    return CLIError(f"model not found: {name!r} is neither a local folder nor a Hugging Face model id", code=3)


def _hub_offline() -> bool:
    return any(os.environ.get(k, "").strip().lower() not in ("", "0", "false", "no", "off")
               for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _hub_preflight(name: str, resolved: str, role: str) -> None:
    """Fail fast, with the offline hint, when a hub model is neither cached nor downloadable.

    Without this, transformers retries every file for minutes when the network is down.
    """
    if Path(resolved).expanduser().exists() or not _HUB_ID.match(resolved):
        return
    try:
        from huggingface_hub import snapshot_download

        snapshot_download(resolved, local_files_only=True)
        return  # cached: loading needs no network
    except Exception:  # noqa: BLE001 - not cached (or no huggingface_hub): find out whether we can download
        pass
    if _hub_offline():
        raise _load_failure(name, resolved, role, None)
    import requests

    endpoint = os.environ.get("HF_ENDPOINT", "https://huggingface.co").rstrip("/")
    try:
        requests.head(f"{endpoint}/api/models/{resolved}", timeout=5, allow_redirects=False)
    except requests.RequestException:
        raise _load_failure(name, resolved, role, None) from None


def _one_line(exc: BaseException | None) -> str:
    text = str(exc or "").strip().splitlines()
    first = text[0] if text else ""
    if exc is None:
        return "unknown error"
    return f"{type(exc).__name__}: {first}" if first else type(exc).__name__


@contextlib.contextmanager
def _quiet_transformers():
    """Hide transformers' "Loading weights" bar while a model loads (our own bars say what is going on)."""
    try:
        from transformers.utils import logging as hf_logging
    except ImportError:  # pragma: no cover
        yield
        return
    active = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if active:
            hf_logging.enable_progress_bar()


def _make_embedder(name: str, *, device: str | None, batch_size: int | None, max_frames: int | None = None):
    from . import Qwen3VLEmbedder

    resolved = resolve_model_name(name, "embedding")
    kwargs: dict[str, Any] = {"device": device}
    if batch_size:
        kwargs["batch_size"] = batch_size
    if max_frames:
        kwargs["max_frames"] = max_frames
    embedder = Qwen3VLEmbedder(model_name_or_path=resolved, **kwargs)
    _hub_preflight(name, resolved, "embedding")
    try:
        with _quiet_transformers():
            embedder.load()
    except Exception as exc:  # noqa: BLE001 - anything that stops loading is reported on one line
        raise _load_failure(name, resolved, "embedding", exc) from None
    return embedder, resolved


def _make_reranker(name: str, *, device: str | None, batch_size: int | None = None):
    from . import Qwen3VLReranker

    resolved = resolve_model_name(name, "reranker")
    kwargs: dict[str, Any] = {"device": device}
    if batch_size:
        kwargs["batch_size"] = batch_size
    reranker = Qwen3VLReranker(model_name_or_path=resolved, **kwargs)
    _hub_preflight(name, resolved, "reranker")
    try:
        with _quiet_transformers():
            reranker.load()
    except Exception as exc:  # noqa: BLE001
        raise _load_failure(name, resolved, "reranker", exc) from None
    return reranker, resolved


def _llama_index():
    try:
        from llama_index.core import StorageContext, VectorStoreIndex, load_index_from_storage
        from llama_index.core.schema import ImageNode, QueryBundle, TextNode
    except ImportError:
        raise CLIError(
            f"{PROG} needs LlamaIndex: pip install 'qwen3vl-integrations[llama-index]'", code=4
        ) from None
    return dict(StorageContext=StorageContext, VectorStoreIndex=VectorStoreIndex,
                load_index_from_storage=load_index_from_storage, ImageNode=ImageNode, QueryBundle=QueryBundle,
                TextNode=TextNode)


def _embed_model(embedder, dimensions: int | None):
    """Our LlamaIndex adapter around ``embedder`` (what the persisted index is loaded with and queried through)."""
    from .llama_index import Qwen3VLEmbedding

    kwargs: dict[str, Any] = {"embedder": embedder}
    if dimensions:
        kwargs["dimensions"] = dimensions
    return Qwen3VLEmbedding(**kwargs)


# --------------------------------------------------------------------------------------------------------------
# scanning


@dataclass
class ScanResult:
    files: list[tuple[Path, str]] = field(default_factory=list)  # (path, modality), sorted by path
    ignored: list[Path] = field(default_factory=list)  # files with an extension we do not index
    linked_folders: list[Path] = field(default_factory=list)  # symlinked folders, not followed


def _modality(path: Path) -> str | None:
    suffix = path.suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    if suffix in TEXT_EXTENSIONS:
        return "text"
    return None


def _identity(path: Path) -> tuple[int, int] | None:
    """What names one folder or file whatever the spelling (None if it does not exist): on macOS' case-insensitive
    disks `photos` and `Photos` are one folder, and `resolve()` keeps the case it was given."""
    try:
        stat = path.stat()
    except OSError:
        return None
    return stat.st_dev, stat.st_ino


def scan_folder(folder: str | Path, exclude: Sequence[str | Path] = ()) -> ScanResult:
    """Every image, video and text file under ``folder`` (recursively; hidden files and folders skipped).

    Symlinked folders are listed, not followed: a link can loop back or reach far outside the folder.
    """
    folder = Path(folder)
    excluded = {_identity(Path(p)) for p in exclude} - {None}
    result = ScanResult()
    for root, dirs, names in os.walk(folder):
        root_path = Path(root)
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and _identity(root_path / d) not in excluded)
        result.linked_folders.extend(root_path / d for d in dirs if (root_path / d).is_symlink())
        for name in sorted(names):
            if name.startswith("."):
                continue
            path = root_path / name
            kind = _modality(path)
            if kind is None:
                result.ignored.append(path)
            else:
                result.files.append((path, kind))
    result.files.sort(key=lambda t: str(t[0]))
    return result


# --------------------------------------------------------------------------------------------------------------
# index


def _progress(iterable=None, **kwargs):
    from tqdm.auto import tqdm

    return tqdm(iterable, file=sys.stderr, dynamic_ncols=True, **kwargs)


def _read_text(path: Path) -> str:
    try:
        text = path.read_text(encoding="utf-8-sig")  # Notepad's "UTF-8 with BOM": the BOM is no text to embed
    except UnicodeDecodeError:
        raise ValueError("not UTF-8 text") from None
    except OSError as exc:
        raise ValueError(f"cannot read file: {exc.strerror or exc}") from None
    if not text.strip():
        raise ValueError("empty text file")
    return text


def _check_readable(path: Path) -> None:
    """Fail early on files the OS refuses to open (permissions): the core reports decoding problems itself."""
    try:
        with open(path, "rb") as f:
            f.read(1)
    except OSError as exc:
        raise ValueError(f"cannot read file: {exc.strerror or exc}") from None


def build_index(
    folder: str | Path,
    index_dir: str | Path | None = None,
    *,
    model: str = REAL_EMBEDDING_MODEL,
    dimensions: int | None = None,
    batch_size: int | None = None,
    device: str | None = None,
    max_frames: int | None = None,
    progress: bool = True,
    log: Callable[[str], None] = print,
    warn: Callable[[str], None] | None = None,
) -> dict:
    """Embed every file of ``folder`` and persist a LlamaIndex ``VectorStoreIndex`` in ``index_dir``.

    Returns the manifest (also written to ``index_dir/qwen3vl-manifest.json``): model, dimension, folder, the
    indexed files, counts per modality and the files that were skipped with the reason. Raises :class:`CLIError`
    for a missing or empty folder, a model that cannot be loaded, or when no file could be indexed.
    """
    warn = warn or (lambda msg: print(msg, file=sys.stderr))
    folder = Path(folder).expanduser()
    if not folder.exists():
        raise CLIError(f"folder not found: {folder}", code=2)
    if not folder.is_dir():
        raise CLIError(f"not a folder: {folder}", code=2)
    index_dir = Path(index_dir).expanduser() if index_dir else Path(DEFAULT_INDEX_DIR)
    _check_index_dir(index_dir, folder)
    if dimensions is not None and dimensions <= 0:
        raise CLIError(f"--dimensions must be a positive integer, got {dimensions}", code=2)
    scan = scan_folder(folder, exclude=[index_dir])
    if not scan.files:
        extra = f" ({len(scan.ignored)} other file(s) ignored)" if scan.ignored else ""
        raise CLIError(
            f"no images, videos or text files found in {folder}{extra}; supported: "
            f"{' '.join(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS + TEXT_EXTENSIONS)}",
            code=2,
        )
    li = _llama_index()
    if _is_tiny(model):
        warn(TINY_WARNING)
    log(f"Loading the embedding model {model} ...")
    embedder, resolved = _make_embedder(model, device=device, batch_size=batch_size, max_frames=max_frames)
    full_dim = int(embedder.embedding_dim)
    if dimensions is not None and dimensions > full_dim:
        raise CLIError(f"--dimensions {dimensions} is larger than the model's embedding size {full_dim}", code=2)

    # Prepare one core item per file; files that cannot even be opened are errors before any model work.
    items: list[Any] = []
    texts: dict[int, str] = {}
    entries: list[tuple[Path, str]] = []
    errors: list[dict] = []
    for path, kind in scan.files:
        try:
            _check_readable(path)
            if kind == "text":
                text = _read_text(path)
                texts[len(items)] = text
                item: Any = text
            else:
                item = {kind: str(path.resolve())}
        except ValueError as exc:
            errors.append({"file": _rel(path, folder), "modality": kind, "error": str(exc)})
            continue
        items.append(item)
        entries.append((path, kind))

    # Embed in chunks (one progress step per file); unreadable media are reported by the core and skipped.
    from . import Qwen3VLInputError

    step = max(1, batch_size or getattr(embedder, "batch_size", 8) or 8)
    vectors: dict[int, list[float]] = {}
    bar = _progress(total=len(items), desc="Embedding", unit="file", disable=not progress)
    try:
        for start in range(0, len(items), step):
            chunk = items[start:start + step]
            try:
                result = embedder.try_embed(chunk, dimensions=dimensions)
            except Qwen3VLInputError as exc:  # pragma: no cover - try_embed reports instead of raising
                raise CLIError(f"cannot embed the files: {exc}") from None
            except ValueError as exc:
                raise CLIError(f"cannot embed the files: {_one_line(exc)}", code=2) from None
            for row, idx in zip(result.embeddings, result.indices):
                vectors[start + int(idx)] = [float(v) for v in row]
            for err in result.errors:
                i = start + int(err.index if err.index is not None else 0)
                path, kind = entries[i]
                errors.append({"file": _rel(path, folder), "modality": kind, "error": _cause(err)})
            bar.update(len(chunk))
    finally:
        bar.close()

    errors.sort(key=lambda e: e["file"])
    for err in errors:
        warn(f"skipped {err['file']}: {err['error']}")
    if not vectors:
        raise CLIError(f"none of the {len(scan.files)} file(s) in {folder} could be indexed "
                       f"({len(errors)} unreadable; see the messages above)")

    # Nodes carry their embedding, so building the index does no model work. Text nodes embed their text only;
    # media nodes keep their file name as embed metadata (LlamaIndex drops nodes whose embed content is empty).
    nodes = []
    files_out = []
    for i, (path, kind) in enumerate(entries):
        if i not in vectors:
            continue
        rel = _rel(path, folder)
        metadata = {"file_path": str(path.resolve()), "file_name": path.name, "relative_path": rel, "modality": kind}
        hidden = ["file_path", "relative_path", "modality", "video_path"]
        if kind == "text":
            node = li["TextNode"](text=texts[i], metadata=metadata,
                                  excluded_embed_metadata_keys=list(metadata), excluded_llm_metadata_keys=hidden)
        elif kind == "image":
            node = li["ImageNode"](image_path=str(path.resolve()), metadata=metadata,
                                   excluded_embed_metadata_keys=hidden, excluded_llm_metadata_keys=hidden)
        else:
            metadata["video_path"] = str(path.resolve())
            node = li["TextNode"](text="", metadata=metadata,
                                  excluded_embed_metadata_keys=hidden, excluded_llm_metadata_keys=hidden)
        node.embedding = vectors[i]
        nodes.append(node)
        files_out.append({"file": rel, "modality": kind, "node_id": node.node_id})

    storage_context = li["StorageContext"].from_defaults()
    index = li["VectorStoreIndex"](nodes, storage_context=storage_context,
                                   embed_model=_embed_model(embedder, dimensions), show_progress=False)

    counts = {m: sum(1 for f in files_out if f["modality"] == m) for m in ("image", "text", "video")}
    manifest = {
        "format": MANIFEST_FORMAT,
        "tool": PROG,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "model": model,
        "model_path": resolved,
        "model_dim": full_dim,
        "dimensions": int(dimensions) if dimensions else None,
        "dimension": int(dimensions or full_dim),
        "max_frames": max_frames,
        "folder": str(folder.resolve()),
        "counts": {**counts, "indexed": len(files_out), "skipped": len(errors), "ignored": len(scan.ignored)},
        "files": files_out,
        "skipped": errors,
        "ignored": [_rel(p, folder) for p in scan.ignored],
        "linked_folders_not_followed": [_rel(p, folder) for p in scan.linked_folders],
    }

    def write(staging: Path) -> None:
        index.storage_context.persist(persist_dir=str(staging))
        (staging / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")

    _replace_index(index_dir, write)
    summary = ", ".join(f"{counts[m]} {m}{'s' if counts[m] != 1 else ''}" for m in ("image", "text", "video"))
    log(f"Indexed {len(files_out)} file(s) ({summary}) with {model} "
        f"(dimension {manifest['dimension']}) into {index_dir}")
    if errors:
        log(f"Skipped {len(errors)} unreadable file(s): " + ", ".join(e["file"] for e in errors))
    if scan.ignored:
        log(f"Ignored {len(scan.ignored)} file(s) of other types")
    if scan.linked_folders:
        log(f"Did not follow {len(scan.linked_folders)} symlinked folder(s) (index their targets on their own): "
            + ", ".join(_rel(p, folder) for p in scan.linked_folders))
    return manifest


def _check_index_dir(index_dir: Path, folder: Path) -> None:
    """Before any model work: the index folder must be a folder we can create or write, and not the indexed folder
    (its results pictures would be indexed by the next run)."""
    if index_dir.exists() and not index_dir.is_dir():
        raise CLIError(f"--index-dir is a file, not a folder: {index_dir}", code=2)
    identity = _identity(index_dir)
    if identity is not None and identity == _identity(folder):
        raise CLIError(f"--index-dir must not be the folder being indexed ({folder}): the index and its results "
                       "pictures would be read as files next time; use a subfolder or another folder", code=2)
    existing = next(p for p in (index_dir, *index_dir.absolute().parents) if p.exists())
    if not existing.is_dir() or not _can_create_in(existing):
        raise CLIError(f"cannot create or write the index folder {index_dir} ({existing} is not a writable "
                       "folder)", code=2)


def _can_create_in(folder: Path) -> bool:
    """Whether a folder can be made in `folder`, found by making one: `os.access` ignores folder permissions on
    Windows, and answers for root by the permission bits alone (yes, in /proc too)."""
    try:
        os.rmdir(tempfile.mkdtemp(prefix=".qwen3vl-write-check-", dir=folder))
    except OSError:
        return False
    return True


# What LlamaIndex's StorageContext.persist writes (docstore.json, index_store.json, default__vector_store.json, ...).
_STORE_FILES = "*store.json"


def _replace_index(index_dir: Path, write: Callable[[Path], None]) -> None:
    """Write a new index into a staging folder inside `index_dir`, then move its files over the old ones.

    Writing the JSON stores is the slow part: an interrupt there leaves the previous index whole. The moves (each one
    atomic) run with Ctrl-C deferred, so the folder never mixes files of two indexes. Other files (results pictures)
    stay."""
    index_dir.mkdir(parents=True, exist_ok=True)
    staging = index_dir / ".staging"  # hidden: a folder scan skips it
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir()
    try:
        write(staging)
        with _interrupts_deferred():
            new = {path.name for path in staging.iterdir()}
            for stale in index_dir.glob(_STORE_FILES):
                if stale.name not in new:
                    stale.unlink()
            for name in sorted(new - {MANIFEST_NAME}) + [MANIFEST_NAME]:  # the manifest last
                os.replace(staging / name, index_dir / name)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextlib.contextmanager
def _interrupts_deferred() -> Iterator[None]:
    """Ctrl-C (SIGINT) waits for the block to finish, then raises KeyboardInterrupt as usual."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def _cause(err: BaseException) -> str:
    """The reason an input was rejected, without the core's position prefix (e.g. "image 0: ")."""
    cause = str(getattr(err, "cause", None) or err)
    return re.sub(r"^(?:image|video|text|frame) \d+: ", "", cause)


def _rel(path: Path, folder: Path) -> str:
    # Not resolved: a symlink keeps its own name (an alias is not its target's duplicate) and a link that leaves
    # the folder stays under it; os.walk gives every path under `folder` as it was given.
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)


# --------------------------------------------------------------------------------------------------------------
# query


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
    from .core.prompts import DEFAULT_QUERY_INSTRUCTION

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


# --------------------------------------------------------------------------------------------------------------
# results picture (PIL only)

_CELL_W, _THUMB_H, _CAPTION_H, _PAD = 220, 165, 52, 10


def _thumbnail_source(path: str, modality: str, text: str = ""):
    from PIL import Image

    if modality == "video":
        import av

        with av.open(path) as container:
            for frame in container.decode(video=0):
                return frame.to_image()
        raise ValueError("no frames")
    if modality == "image":
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                bg = Image.new("RGB", rgba.size, "white")
                bg.paste(rgba, mask=rgba.split()[-1])
                return bg
            return img.convert("RGB")
    return _text_card(text or Path(path).read_text(encoding="utf-8-sig", errors="replace"))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _text_card(text: str):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (_CELL_W - 2 * _PAD, _THUMB_H), (250, 248, 240))
    d = ImageDraw.Draw(img)
    lines = textwrap.wrap(" ".join(text.split()), width=30)[:9]
    for i, line in enumerate(lines):
        d.text((8, 6 + i * 17), line, font=_font(13), fill=(40, 40, 40))
    d.rectangle((0, 0, img.width - 1, img.height - 1), outline=(180, 180, 170))
    return img


def _fit(img, width: int, height: int):
    from PIL import Image

    img = img.copy()
    img.thumbnail((width, height), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height), (235, 235, 235))
    canvas.paste(img, ((width - img.width) // 2, (height - img.height) // 2))
    return canvas


def _placeholder(label: str, width: int, height: int):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (200, 200, 200))
    ImageDraw.Draw(img).text((10, height // 2 - 8), label, font=_font(14), fill=(90, 90, 90))
    return img


def render_results_picture(hits: Sequence[Hit], out_path: str | Path | None = None, *, query_text: str | None = None,
                           query_image: str | Path | None = None, query_video: str | Path | None = None,
                           title: str | None = None, subtitle: str | None = None, columns: int = 5):
    """Draw the query and the ranked results (thumbnails with scores); returns the PIL image, saved to ``out_path``
    (PNG) unless it is None.

    Images are shown as thumbnails, videos by their first frame, text files as a card with their first lines.
    """
    from PIL import Image, ImageDraw

    columns = max(1, min(columns, max(1, len(hits))))
    thumb_w = _CELL_W - 2 * _PAD
    top = 38 + (18 if subtitle else 0)
    header_h = top + 2 + (_THUMB_H // 2 + 10 if (query_image or query_video) else 0)
    rows = max(1, -(-len(hits) // columns))
    width = max(columns * _CELL_W, 440)
    height = header_h + rows * (_THUMB_H + _CAPTION_H + _PAD) + _PAD
    canvas = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(canvas)
    heading = title or ("Query: " + (_describe_query(query_text, query_image, query_video) or "?"))
    d.text((_PAD, 10), heading[:110], font=_font(18), fill=(0, 0, 0))
    if subtitle:
        d.text((_PAD, 34), subtitle[:140], font=_font(12), fill=(110, 110, 110))
    x = _PAD
    for media, kind in ((query_image, "image"), (query_video, "video")):
        if media is None:
            continue
        try:
            thumb = _fit(_thumbnail_source(str(media), kind), thumb_w // 2, _THUMB_H // 2)
        except Exception:  # noqa: BLE001 - a picture must never fail the query
            thumb = _placeholder("unreadable", thumb_w // 2, _THUMB_H // 2)
        canvas.paste(thumb, (x, top))
        x += thumb_w // 2 + _PAD
    for i, h in enumerate(hits):
        col, row = i % columns, i // columns
        x0 = col * _CELL_W + _PAD
        y0 = header_h + row * (_THUMB_H + _CAPTION_H + _PAD)
        try:
            thumb = _fit(_thumbnail_source(h.path, h.modality, h.text), thumb_w, _THUMB_H)
        except Exception:  # noqa: BLE001
            thumb = _placeholder("missing file", thumb_w, _THUMB_H)
        canvas.paste(thumb, (x0, y0))
        if h.modality == "video":
            d.polygon([(x0 + 8, y0 + 8), (x0 + 8, y0 + 30), (x0 + 27, y0 + 19)], fill=(255, 255, 255),
                      outline=(0, 0, 0))
        scores = f"#{h.rank}" + (f"  score {h.score:.3f}" if h.score is not None else "")
        if h.rerank_score is not None:
            scores += f"  rerank {h.rerank_score:.3f}"
        d.text((x0, y0 + _THUMB_H + 4), scores, font=_font(13), fill=(0, 0, 0))
        name = h.file if len(h.file) <= 30 else "..." + h.file[-27:]
        d.text((x0, y0 + _THUMB_H + 22), f"{name} ({h.modality})", font=_font(12), fill=(70, 70, 70))
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(out_path)
    return canvas


def picture_subtitle(info: dict) -> str:
    """"embedding <model> (dimension K) · reranker <model>", flagged when tiny random models were used."""
    text = f"embedding {info['model']} (dimension {info['dimension']})"
    if info.get("reranker"):
        text += f" · reranker {info['reranker']}"
    if _is_tiny(info["model"]) or _is_tiny(info.get("reranker")):
        text += " · tiny random weights: rankings are meaningless"
    return text


def _slug(text: str) -> str:
    slug = re.sub(r"[\W_]+", "-", text).strip("-").lower()  # \W: letters of every script stay
    return slug[:60] or "query"


def default_picture_path(index_dir: str | Path, text: str | None, image=None, video=None) -> Path:
    """``INDEX_DIR/results-<query>.png``: the results picture lies next to the index."""
    parts = [p for p in (text, Path(str(image)).stem if image else None, Path(str(video)).stem if video else None) if p]
    return Path(index_dir) / f"results-{_slug('-'.join(parts))}.png"


# --------------------------------------------------------------------------------------------------------------
# command line


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=textwrap.fill(
            "Multimodal search over a folder of pictures, text files and videos with Qwen3-VL-Embedding (one vector "
            "space for all three) and Qwen3-VL-Reranker. First `index` a folder, then `query` the index.", 79),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} index photos/ --index-dir photos-index
              {PROG} query photos-index "a red circle" --rerank
              {PROG} query photos-index --image photos/sunset_beach.jpg --top-k 3
              {PROG} index photos/ --model tiny      # offline smoke run: tiny random models, meaningless ranks

            Models are Hugging Face ids or local folders; 'tiny' builds tiny random checkpoints locally.
            Set HF_HUB_OFFLINE=1 to never touch the network."""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true",
                        help="show Python tracebacks instead of one-line error messages")
    # --debug also after the subcommand, where the error message's hint leads users to put it
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show Python tracebacks instead of one-line error messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{index,query}")

    p = sub.add_parser(
        "index", parents=[debug],
        help="embed every image, text file and video of a folder and save a searchable index",
        description="Embed every image (png, jpg, gif, bmp, webp, tiff), text file (txt, md) and video (mp4, mov, "
        "avi, mkv, webm, m4v) under FOLDER, recursively, into one LlamaIndex VectorStoreIndex saved on disk with a "
        f"manifest ({MANIFEST_NAME}). Files that cannot be read are reported, skipped and counted.",
    )
    p.add_argument("folder", metavar="FOLDER", help="the folder to index (searched recursively; hidden files skipped)")
    p.add_argument("--index-dir", metavar="DIR", default=DEFAULT_INDEX_DIR,
                   help=f"where to save the index (created or replaced; default ./{DEFAULT_INDEX_DIR})")
    p.add_argument("--model", metavar="NAME|PATH", default=REAL_EMBEDDING_MODEL,
                   help=f"embedding model: a Hugging Face id, a local checkpoint folder, or 'tiny' for tiny random "
                   f"checkpoints (offline, meaningless rankings). Default {REAL_EMBEDDING_MODEL}")
    p.add_argument("--dimensions", metavar="K", type=_positive_int, default=None,
                   help="keep only the first K dimensions of each vector (Matryoshka; 64 <= K <= model size) for a "
                   "smaller index; queries then use K too. Default: the model's full size")
    p.add_argument("--batch-size", metavar="N", type=_positive_int, default=None,
                   help="files embedded per forward pass (default: the core's, 32); lower it if memory is short")
    p.add_argument("--device", metavar="D", default=None,
                   help="torch device, e.g. cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--max-frames", metavar="N", type=_positive_int, default=None,
                   help="at most N frames sampled per video (default: the core's, 64)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    q = sub.add_parser(
        "query", parents=[debug], help="search an index with a text, an image and/or a video",
        description="Embed the query (text, --image, --video, or a combination) with the query instruction, "
        "retrieve the nearest files of the index, optionally rerank them, print a ranked table (rank, score, rerank "
        "score, modality, file) and write a picture of the results (thumbnails with scores).",
    )
    q.add_argument("index_dir", metavar="INDEX_DIR", help="a folder written by `index`")
    q.add_argument("text", metavar="TEXT", nargs="?", default=None,
                   help="the query text (optional when --image or --video is given)")
    q.add_argument("--image", metavar="P", default=None, help="query with this picture (alone or with TEXT)")
    q.add_argument("--video", metavar="P", default=None, help="query with this video (alone or with TEXT)")
    q.add_argument("--top-k", metavar="K", type=_positive_int, default=5, help="number of results to show (default 5)")
    q.add_argument("--rerank", action="store_true",
                   help="rerank the retrieved candidates with Qwen3-VL-Reranker (slower, more accurate)")
    q.add_argument("--reranker", metavar="NAME|PATH", default=None,
                   help=f"reranker model for --rerank: a Hugging Face id, a local folder or 'tiny' (default "
                   f"{REAL_RERANKER_MODEL}, or 'tiny' when the index was built with --model tiny)")
    q.add_argument("--candidates", metavar="N", type=_positive_int, default=None,
                   help="with --rerank: how many retrieved files are reranked (default max(20, 4 x top-k))")
    q.add_argument("--instruction", metavar="TEXT", default=None,
                   help="task instruction for the query (and the reranker); default \"Retrieve images or text "
                   "relevant to the user's query.\"")
    q.add_argument("--picture", metavar="OUT.png", default=None,
                   help="where to write the results picture (default INDEX_DIR/results-<query>.png)")
    q.add_argument("--no-picture", action="store_true", help="do not write the results picture")
    q.add_argument("--model", metavar="NAME|PATH", default=None,
                   help="the embedding model to query with; must be the one the index was built with (default: "
                   "read from the index)")
    q.add_argument("--dimensions", metavar="K", type=_positive_int, default=None,
                   help="must match the index's dimension (default: read from the index)")
    q.add_argument("--device", metavar="D", default=None, help="torch device (default: the best available)")
    q.add_argument("--no-progress", action="store_true", help="hide the reranking progress bar")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "index":
        index_dir = Path(args.index_dir)
        build_index(args.folder, index_dir, model=args.model, dimensions=args.dimensions,
                    batch_size=args.batch_size, device=args.device, max_frames=args.max_frames,
                    progress=not args.no_progress)
        return 0
    hits, manifest = search(args.index_dir, args.text, image=args.image, video=args.video, top_k=args.top_k,
                            rerank=args.rerank, reranker=args.reranker, candidates=args.candidates,
                            instruction=args.instruction, model=args.model, dimensions=args.dimensions,
                            device=args.device, progress=not args.no_progress)
    query = _describe_query(args.text, args.image, args.video)
    how = " (reranked)" if args.rerank else ""
    print(f"\nQuery: {query}: top {len(hits)} of {manifest['counts']['indexed']} indexed files{how}")
    print(format_table(hits))
    if not args.no_picture:
        out = Path(args.picture) if args.picture else default_picture_path(args.index_dir, args.text, args.image,
                                                                          args.video)
        render_results_picture(hits, out, query_text=args.text, query_image=args.image, query_video=args.video,
                               subtitle=picture_subtitle(manifest))
        print(f"Results picture: {out}")
    return 0


def _escape_what_stdout_cannot_encode() -> None:
    """Windows writes a redirected stdout in its ANSI code page (cp1252) and raises on the rest: a folder, file name
    or query outside it failed the command after the work was done. Escape those characters instead."""
    out = sys.stdout
    if (isinstance(out, io.TextIOWrapper) and out.errors == "strict"
            and codecs.lookup(out.encoding).name not in ("utf-8", "utf-16", "utf-32")):
        out.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qwen3vl-search``; returns the exit status (0 on success)."""
    _escape_what_stdout_cannot_encode()
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.debug:
            return _run(args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            return _run(args)
    except CLIError as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - keep the promise of one-line errors; --debug shows the traceback
        if args.debug:
            raise
        print(f"{PROG}: error: {_one_line(exc)} (run with --debug for the traceback)", file=sys.stderr)
        return 1


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
