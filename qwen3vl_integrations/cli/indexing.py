"""Index building: embed a folder's files and persist a LlamaIndex ``VectorStoreIndex`` with its manifest (checks of the
index folder, its atomic replacement, Ctrl-C deferred while files move)."""
from __future__ import annotations

import contextlib
import datetime as _dt
import json
import os
import shutil
import signal
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator

from ..core.paths import path_identity
from ..sample_data import IMAGE_EXTENSIONS, TEXT_EXTENSIONS, VIDEO_EXTENSIONS
from .constants import DEFAULT_INDEX_DIR, MANIFEST_FORMAT, MANIFEST_NAME, PROG, REAL_EMBEDDING_MODEL, TINY_WARNING
from .errors import CLIError, _cause, _one_line
from .models import _embed_model, _is_tiny, _llama_index, _make_embedder
from .scanning import scan_folder

FILES_PER_CALL = 256  # files per embedding call when no batch_size is given (the progress bar moves per call)


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
    from .. import Qwen3VLInputError

    # Calls of many files: the core sorts a call's items and prepares the next micro-batch while one runs.
    step = max(1, batch_size or getattr(embedder, "batch_size", None) or FILES_PER_CALL)
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
    identity = path_identity(index_dir)
    same = (identity == path_identity(folder) if identity is not None  # one folder under two spellings too
            else index_dir.exists() and index_dir.resolve() == folder.resolve())  # no inode numbers there
    if same:
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


def _rel(path: Path, folder: Path) -> str:
    # Not resolved: a symlink keeps its own name (an alias is not its target's duplicate) and a link that leaves
    # the folder stays under it; os.walk gives every path under `folder` as it was given.
    try:
        return str(path.relative_to(folder))
    except ValueError:
        return str(path)
