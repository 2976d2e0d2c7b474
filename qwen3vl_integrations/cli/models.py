"""Model names and loading: tiny checkpoints, the hub preflight, making the embedder, the reranker and the LlamaIndex
adapter."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
from pathlib import Path
from typing import Any

from .constants import PROG, REAL_EMBEDDING_MODEL, REAL_RERANKER_MODEL, TINY
from .errors import CLIError, _one_line

_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.\-]*/[\w.\-]+$")


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

    from ..testing import build_tiny_checkpoint

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
    from .. import Qwen3VLEmbedder

    return _loaded(Qwen3VLEmbedder, name, "embedding", device=device, batch_size=batch_size, max_frames=max_frames)


def _make_reranker(name: str, *, device: str | None, batch_size: int | None = None):
    from .. import Qwen3VLReranker

    return _loaded(Qwen3VLReranker, name, "reranker", device=device, batch_size=batch_size)


def _loaded(cls: Any, name: str, role: str, *, device: str | None, **options: Any) -> tuple[Any, str]:
    """A core object of `cls` for the model `name` (options left out where not given), its weights loaded, and the
    checkpoint it resolved to; a model that cannot be loaded is reported on one line, with what to do."""
    resolved = resolve_model_name(name, role)
    core_object = cls(model_name_or_path=resolved, device=device, **{k: v for k, v in options.items() if v})
    _hub_preflight(name, resolved, role)
    try:
        with _quiet_transformers():
            core_object.load()
    except Exception as exc:  # noqa: BLE001 - anything that stops loading is reported on one line
        raise _load_failure(name, resolved, role, exc) from None
    return core_object, resolved


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
    from ..llama_index import Qwen3VLEmbedding

    kwargs: dict[str, Any] = {"embedder": embedder}
    if dimensions:
        kwargs["dimensions"] = dimensions
    return Qwen3VLEmbedding(**kwargs)
