"""Loading checkpoints once per process: device/dtype/attention choice and a shared registry.

Two objects (core classes or framework adapters) that ask for the same checkpoint, role, device, dtype and
attention implementation get the same loaded model.
"""
from __future__ import annotations

import contextlib
import copy
import functools
import importlib.util
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator

import torch

from .fused_projections import use_fused_gate_up
from .joining import ForwardJoiner
from .long_texts import LongTextCut
from .lower_right_attention import use_lower_right_attention
from .paths import path_identity
from .pixels import normalizes_on_device
from .pooled_layer import use_pooled_last_layer
from .rms_norm import use_fused_rms_norm
from .text_attention import use_text_attention
from .vision_levers import use_grouped_vision_attention, use_indexed_deepstack, use_linear_patch_embed

ROLES = ("embedding", "reranker")


def _mps_available() -> bool:
    return getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available()


def resolve_device(device: str | torch.device | None) -> torch.device:
    """`None`/"auto": cuda, then mps, then cpu.

    A bare ``"cuda"`` is the current CUDA device of the thread that builds the object, when this process has
    already initialised CUDA (after ``torch.cuda.set_device(rank)``, say): PyTorch keeps the current device per
    thread, and a model loaded later in another thread (an async call's worker) would otherwise land on GPU 0.
    """
    if device is None or str(device) == "auto":
        if torch.cuda.is_available():
            resolved = torch.device("cuda")
        elif _mps_available():
            return torch.device("mps")
        else:
            return torch.device("cpu")
    else:
        resolved = torch.device(device)
    if resolved.type == "cuda" and resolved.index is None and torch.cuda.is_initialized():
        # is_initialized() first: current_device() would initialise CUDA here, which a fork afterwards cannot undo
        return torch.device("cuda", torch.cuda.current_device())
    if resolved.type in ("cpu", "mps") and resolved.index in (None, 0):
        return torch.device(resolved.type)  # "cpu:0" is the CPU, "mps:0" the one MPS device: one registry entry
    return resolved


def _device_to_load_on(device: torch.device) -> torch.device:
    """The device a model is loaded on, checked (an unavailable one is named) and with its index (so that "cuda"
    and "cuda:0" share one loaded model)."""
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise RuntimeError(f"device {str(device)!r}: CUDA is not available to this torch ({torch.__version__})")
        if device.index is None:
            return torch.device("cuda", torch.cuda.current_device())
        if device.index >= torch.cuda.device_count():
            raise RuntimeError(f"device {str(device)!r}: only {torch.cuda.device_count()} CUDA device(s) visible")
    if device.type == "mps" and not _mps_available():
        raise RuntimeError(f"device {str(device)!r}: MPS is not available to this torch ({torch.__version__})")
    return device


_DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float": torch.float32,
           "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
           "float16": torch.float16, "fp16": torch.float16, "half": torch.float16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    """`None`/"auto": bfloat16 on GPUs (on MPS from macOS 14, which bfloat16 needs there), float32 on CPU."""
    if dtype is None or dtype == "auto":
        if device.type == "cuda" or (device.type == "mps" and _mps_has_bfloat16()):
            return torch.bfloat16
        return torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).replace("torch.", "")
    if name not in _DTYPES:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(_DTYPES)}")
    return _DTYPES[name]


def _mps_has_bfloat16() -> bool:
    check = getattr(torch.backends.mps, "is_macos_or_newer", None)
    return check is None or bool(check(14, 0))


FLASH_ATTENTION_2 = "flash_attention_2"
_HALF_DTYPES = (torch.float16, torch.bfloat16)


def _flash_attention_2_installed() -> bool:
    """flash-attn 2 is importable as transformers would use it (a FlashAttention 4 install has the same module name)."""
    if importlib.util.find_spec("flash_attn") is None:
        return False
    from transformers.utils import is_flash_attn_2_available

    return bool(is_flash_attn_2_available())


def resolve_attention(attn_implementation: str | None, device: torch.device,
                      dtype: torch.dtype = torch.bfloat16) -> str:
    """`None`/"auto": flash_attention_2 when flash-attn 2 is installed, on CUDA, in float16/bfloat16; else sdpa.

    (On GPUs older than Ampere, which FlashAttention does not run on, `usable_attention` falls back to sdpa when the
    model loads: asking the GPU here would initialise CUDA when the object is built.)"""
    if attn_implementation not in (None, "auto"):
        if not isinstance(attn_implementation, str):
            raise TypeError(f"attn_implementation must be a str or None, got {attn_implementation!r}")
        if attn_implementation == FLASH_ATTENTION_2:
            installed = _flash_attention_2_installed()
            if device.type != "cuda" or not installed or dtype not in _HALF_DTYPES:
                raise ValueError(
                    "attn_implementation='flash_attention_2' needs a CUDA device, the flash-attn 2 package and "
                    f"dtype bfloat16 or float16 (device {str(device)!r}, flash-attn 2 {'' if installed else 'not '}"
                    f"installed, dtype {str(dtype).replace('torch.', '')}); leave it None for the best available one")
        return attn_implementation  # other names are transformers' to check, when the model loads
    if device.type == "cuda" and dtype in _HALF_DTYPES and _flash_attention_2_installed():
        return FLASH_ATTENTION_2
    return "sdpa"


def usable_attention(attn_implementation: str, device: torch.device, chosen_automatically: bool) -> str:
    """The attention to load with, once the device may be asked: an automatic FlashAttention-2 becomes sdpa on GPUs
    older than Ampere (compute capability 8.0), where flash-attn raises on the first forward pass."""
    if (chosen_automatically and attn_implementation == FLASH_ATTENTION_2 and device.type == "cuda"
            and torch.cuda.get_device_capability(device) < (8, 0)):
        return "sdpa"
    return attn_implementation


@dataclass(frozen=True)
class ModelKey:
    path: str
    role: str
    device: str
    dtype: str
    attn_implementation: str
    extra: tuple = ()


@dataclass
class LoadedModel:
    """A loaded backbone with its processor. `lock` serialises forward passes on the shared weights."""

    key: ModelKey
    backbone: Any  # Qwen3VLModel: no LM head
    processor: Any
    config: Any
    device: torch.device
    dtype: torch.dtype
    score_weight: torch.Tensor | None = None  # reranker only: W_yes - W_no, float32, on device
    lock: threading.Lock = field(default_factory=threading.Lock)
    joiner: ForwardJoiner = field(default_factory=ForwardJoiner)  # rows of calls waiting for `lock`
    lock_pools: threading.Lock = field(default_factory=threading.Lock)
    _local: threading.local = field(default_factory=threading.local)
    _processors_lock: threading.Lock = field(default_factory=threading.Lock)
    _idle_processors: list[Any] = field(default_factory=list)  # processors lent out one borrower at a time
    _pools: dict[int, ThreadPoolExecutor] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._idle_processors.append(self.processor)  # the first borrower needs no copy

    def preprocess_pool(self, workers: int) -> ThreadPoolExecutor:
        """A persistent pool of `workers` preprocessing threads, shared by every call on this model.

        Reusing threads saves starting them for every call.
        """
        with self.lock_pools:
            pool = self._pools.get(workers)
            if pool is None:
                pool = ThreadPoolExecutor(max_workers=workers, thread_name_prefix="qwen3vl-prep")
                self._pools[workers] = pool
            return pool

    def forget_threads(self) -> None:
        """In a forked child: the parent's preprocessing threads were not copied (their pools would take work and
        never run it: the child's first call of several micro-batches hung), and a lock another thread held at the
        fork would stay held."""
        self.lock, self.lock_pools, self._processors_lock = threading.Lock(), threading.Lock(), threading.Lock()
        self.joiner = ForwardJoiner()
        self._pools = {}

    @property
    def tokenizer(self) -> Any:
        return self.processor.tokenizer

    @property
    def raw_pixels(self) -> bool:
        """Whether images go to the model as 8-bit patches, normalised on its device (core/pixels.py)."""
        return normalizes_on_device(self.processor.image_processor, self.device)

    @property
    def pad_token_id(self) -> int:
        """What right padding fills in (masked out; any id would do when the tokenizer has none)."""
        pad_id = self.processor.tokenizer.pad_token_id
        return pad_id if pad_id is not None else 0

    @functools.cached_property
    def long_text_cut(self) -> LongTextCut | None:
        """What cuts long texts before they are tokenised (core/long_texts.py); None for a tokenizer it does not
        know. Found on first use (two threads may both find it: the same answer)."""
        return LongTextCut.for_tokenizer(self.tokenizer)

    @property
    def special_ids(self) -> torch.Tensor:
        """Ids that truncation never drops (all special tokens, vision placeholders included)."""
        ids = getattr(self._local, "special_ids", None)
        if ids is None:
            ids = torch.tensor(sorted(set(self.tokenizer.all_special_ids)), dtype=torch.long)
            self._local.special_ids = ids
        return ids

    @contextlib.contextmanager
    def lent_processor(self) -> Iterator[Any]:
        """A processor no other thread uses while the block runs (tokenizers are not safe to share across threads).
        Copies are lent from a pool: as many as threads prepare inputs at the same moment. One copy per thread that
        ever called made a copy per request in a server with a thread per request (about 0.6 s and 20 MB for a
        151k-token vocabulary), and kept one per thread of a pool for good."""
        with self._processors_lock:
            processor = self._idle_processors.pop() if self._idle_processors else None
        if processor is None:
            processor = copy.deepcopy(self.processor)
        try:
            yield processor
        finally:
            with self._processors_lock:
                self._idle_processors.append(processor)


_REGISTRY: dict[ModelKey, LoadedModel] = {}
_REGISTRY_LOCK = threading.Lock()


def _after_fork_in_child() -> None:
    # LlamaIndex's IngestionPipeline(num_workers=...) and pre-forking servers (gunicorn --preload) fork processes that
    # inherit loaded models; CUDA models cannot run in a forked child anyway, CPU ones can.
    global _REGISTRY_LOCK
    _REGISTRY_LOCK = threading.Lock()
    for loaded in _REGISTRY.values():
        loaded.forget_threads()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)


# The first spelling seen of each local checkpoint folder, by the folder's (device, inode): on case-insensitive disks
# (macOS, Windows) `resolve()` keeps the case it is given, so `~/Models/X` and `~/models/x` would load twice.
_SPELLINGS: dict[tuple[int, int], str] = {}


def _normalise_path(path: str) -> str:
    local = Path(path).expanduser()
    if not local.exists():
        return path  # a hub id
    resolved = str(local.resolve())
    identity = path_identity(resolved)
    if identity is None:
        return resolved
    known = _SPELLINGS.get(identity)
    if known is not None and known != resolved and path_identity(known) == identity:
        return known
    _SPELLINGS[identity] = resolved  # first seen, or the folder known by that identity is gone (its inode reused)
    return resolved


def model_key(path: str, role: str, device: torch.device, dtype: torch.dtype, attn_implementation: str,
              model_kwargs: dict[str, Any] | None = None) -> ModelKey:
    """The registry key under which `load_shared` keeps (and finds) a loaded model."""
    return ModelKey(_normalise_path(path), role, str(_device_to_load_on(device)), str(dtype).replace("torch.", ""),
                    attn_implementation, tuple(sorted((k, repr(v)) for k, v in (model_kwargs or {}).items())))


def load_shared(path: str, role: str, device: torch.device, dtype: torch.dtype, attn_implementation: str,
                model_kwargs: dict[str, Any] | None = None) -> LoadedModel:
    """Load (or reuse) a checkpoint for `role` ("embedding" loads the backbone only; "reranker" keeps W_yes-W_no)."""
    if role not in ROLES:
        raise ValueError(f"role must be one of {ROLES}")
    model_kwargs = dict(model_kwargs or {})
    device = _device_to_load_on(device)
    key = model_key(path, role, device, dtype, attn_implementation, model_kwargs)
    with _REGISTRY_LOCK:
        loaded = _REGISTRY.get(key)
        if loaded is None:
            loaded = _load(key, path, device, dtype, attn_implementation, model_kwargs)
            _REGISTRY[key] = loaded
        return loaded


def _hub_kwargs(model_kwargs: dict[str, Any]) -> dict[str, Any]:
    """The model options that also say where a checkpoint's config and processor files come from."""
    return {k: v for k, v in model_kwargs.items() if k in ("revision", "cache_dir", "local_files_only", "token")}


def read_config(path: str, model_kwargs: dict[str, Any] | None = None) -> Any:
    """A checkpoint's config, without loading its weights: a loaded model's, where the registry holds the checkpoint
    (a service building an object per request read the file, or asked the hub, every time), else read under the
    registry lock: transformers imports its classes on first use, which is not thread-safe, and a service's first
    wave of calls gets here from many threads at once (some failed with `ImportError: cannot import name
    'AutoConfig'`)."""
    model_kwargs = dict(model_kwargs or {})
    wanted = (_normalise_path(path), repr(model_kwargs.get("revision")))
    for key, loaded in _REGISTRY.copy().items():  # a dict copy is atomic: no lock, so no wait for a model's load
        if (key.path, dict(key.extra).get("revision", "None")) == wanted:
            return loaded.config
    with _REGISTRY_LOCK:
        from transformers import AutoConfig

        return AutoConfig.from_pretrained(path, **_hub_kwargs(model_kwargs))


def _load(key: ModelKey, path: str, device: torch.device, dtype: torch.dtype, attn: str,
          model_kwargs: dict[str, Any]) -> LoadedModel:
    from transformers import AutoModel, AutoProcessor, Qwen3VLForConditionalGeneration

    processor = AutoProcessor.from_pretrained(path, **_hub_kwargs(model_kwargs))
    load_kwargs = {"dtype": dtype, "attn_implementation": attn, **model_kwargs}
    if device.type == "cuda":
        # Straight onto the GPU: loaded on the CPU first, the whole model would pass through host memory (16 GB for
        # the 8B in bf16) before moving. One device needs no accelerate.
        load_kwargs.setdefault("device_map", str(device))
    score_weight = None
    if key.role == "embedding":
        backbone = AutoModel.from_pretrained(path, **load_kwargs)
    else:
        full = Qwen3VLForConditionalGeneration.from_pretrained(path, **load_kwargs)
        score_weight = yes_no_weight(full, processor.tokenizer, device)
        backbone = full.model
        del full
    backbone.to(device).eval()
    backbone.requires_grad_(False)
    use_model_levers(backbone)
    return LoadedModel(key, backbone, processor, backbone.config, device, dtype, score_weight)


def yes_no_weight(full: Any, tokenizer: Any, device: torch.device) -> torch.Tensor:
    """The reranker's score head: W_yes - W_no of a full model's LM head, built once, in float32 (REFERENCE.md §5.1
    SHOULD); the full LM head is never applied."""
    vocab = tokenizer.get_vocab()
    weight = full.lm_head.weight.detach()
    return (weight[vocab["yes"]].float() - weight[vocab["no"]].float()).to(device)


def share_model(path: str, role: str, device: torch.device, dtype: torch.dtype, attn_implementation: str,
                full: Any, processor: Any) -> LoadedModel:
    """Put a model already in memory (a full `Qwen3VLForConditionalGeneration`, levers installed) in the shared
    registry for `role`, under the key that objects built with `path`, `device`, `dtype` and
    `attn_implementation` look up: they then use it instead of loading weights from `path`."""
    device = _device_to_load_on(device)
    key = model_key(path, role, device, dtype, attn_implementation)
    backbone = full.model
    score_weight = yes_no_weight(full, processor.tokenizer, device) if role == "reranker" else None
    loaded = LoadedModel(key, backbone, processor, backbone.config, device, dtype, score_weight)
    with _REGISTRY_LOCK:
        _REGISTRY[key] = loaded
    return loaded


def use_model_levers(backbone: Any) -> None:
    """Install the per-module forward overrides every loaded model runs with (each gives the stock results to float
    rounding; `del module.forward` restores a module's stock code)."""
    use_linear_patch_embed(backbone)
    use_grouped_vision_attention(backbone)
    use_fused_rms_norm(backbone)
    use_text_attention(backbone)
    use_fused_gate_up(backbone)
    use_pooled_last_layer(backbone)
    use_indexed_deepstack(backbone)
    use_lower_right_attention(backbone)


def clear_registry() -> None:
    """Forget every shared model (they are freed once no object holds them)."""
    with _REGISTRY_LOCK:
        _REGISTRY.clear()


def registry_size() -> int:
    return len(_REGISTRY)
