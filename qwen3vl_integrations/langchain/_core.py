"""Lazy construction of the core objects shared by the LangChain adapters (private)."""
from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any, Callable

import numpy as np
from pydantic import AliasChoices, ConfigDict, Field, PrivateAttr, model_validator

from qwen3vl_integrations._adapter_fields import DtypeNames

if TYPE_CHECKING:
    from qwen3vl_integrations.core.reranker import Qwen3VLReranker

_LOCK = threading.RLock()


def _kwargs(model_name: str, device: Any, dtype: Any, batch_size: int | None, core_options: dict[str, Any]) -> dict:
    kwargs: dict[str, Any] = dict(core_options or {})
    kwargs["model_name_or_path"] = model_name
    if device is not None:
        kwargs["device"] = device
    if dtype is not None:
        kwargs["dtype"] = dtype
    if batch_size is not None and "batch_size" not in kwargs:
        kwargs["batch_size"] = batch_size
    return kwargs


def build_embedder(model_name: str, device: Any, dtype: Any, batch_size: int | None, core_options: dict) -> Any:
    """A core `Qwen3VLEmbedder` (lazy: it loads nothing; the core registry shares weights between instances)."""
    from qwen3vl_integrations import Qwen3VLEmbedder

    return Qwen3VLEmbedder(**_kwargs(model_name, device, dtype, batch_size, core_options))


def build_reranker(model_name: str, device: Any, dtype: Any, batch_size: int | None, core_options: dict) -> Any:
    """A core `Qwen3VLReranker` (lazy, shared through the core registry)."""
    from qwen3vl_integrations import Qwen3VLReranker

    return Qwen3VLReranker(**_kwargs(model_name, device, dtype, batch_size, core_options))


_MODEL_OPTIONS = ("device", "dtype", "core_options")


def attach_core(model: Any, field: str, method: str) -> None:
    """Validate a user-supplied core object in ``model.<field>`` and make it the adapter's core object.

    Used by the adapters' ``after`` validators: rejects non-core objects and clashing model options, and fills
    ``model_name`` from the core object when the user did not set it.
    """
    core = getattr(model, field)
    if core is None:
        return
    if not callable(getattr(core, method, None)):
        raise TypeError(f"{field}= must be a core Qwen3-VL object (an object with a .{method} method)")
    clashing = [name for name in _MODEL_OPTIONS if name in model.model_fields_set]
    if clashing:
        raise ValueError(
            f"{type(model).__name__}: pass either {field}= or model options, not both "
            f"(got {field}= and {', '.join(n + '=' for n in clashing)})"
        )
    if "model_name" not in model.model_fields_set:
        name = getattr(core, "model_name_or_path", None)
        if name is not None:
            model.model_name = str(name)


def lazy_core(owner: Any, build: Callable[..., Any], model_name: str, device: Any, dtype: Any,
              batch_size: int | None, core_options: dict[str, Any]) -> Any:
    """``owner._core``: built by ``build(...)`` on first use, thread-safely, and again when those options changed since
    (a field set later, or ``model_copy(update=...)``, which copies the built object along)."""
    options = (model_name, device, dtype, batch_size, dict(core_options or {}))
    core = owner._core
    if core is None or owner._core_options != options:
        with _LOCK:
            if owner._core is None or owner._core_options != options:
                owner._core = build(*options)
                owner._core_options = options
            core = owner._core
    return core


def to_float_lists(array: Any) -> list[list[float]]:
    """Core output (numpy [N, D]) -> Python ``list[list[float]]``."""
    arr = np.asarray(array)
    if arr.dtype.kind != "f":
        arr = arr.astype(np.float32)
    return arr.tolist()


def to_floats(array: Any) -> list[float]:
    """Core scores (numpy [N]) -> Python ``list[float]``."""
    return [float(x) for x in np.asarray(array, dtype=np.float64).reshape(-1)]


class RerankerOptions(DtypeNames):
    """Fields and lazy core object shared by the LangChain reranker classes."""

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), populate_by_name=True, arbitrary_types_allowed=True
    )

    # `model=` works too; type checkers see `model_name=` (an `alias` would make them accept `model=` only)
    model_name: str = Field(default="Qwen/Qwen3-VL-Reranker-2B",
                            validation_alias=AliasChoices("model_name", "model"))
    """Hugging Face model id or local checkpoint folder."""
    instruction: str | None = None
    """Task instruction (``None``: the model's default)."""
    batch_size: int | None = None
    """Query-document pairs per forward pass (``None``: the core's default)."""
    device: str | None = None
    dtype: Any = None
    core_options: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for the core `Qwen3VLReranker` (e.g. ``max_pixels``, ``fps``, ``max_frames``)."""
    reranker: Any = Field(default=None, exclude=True)
    """An existing core `Qwen3VLReranker` to use instead of building one from the fields above."""

    _core: Any = PrivateAttr(default=None)
    _core_options: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _attach_reranker(self) -> "RerankerOptions":
        attach_core(self, "reranker", "score")
        return self

    @property
    def core_reranker(self) -> Qwen3VLReranker:
        """The core `Qwen3VLReranker` (created on first access; creating it loads no weights)."""
        if self.reranker is not None:
            return self.reranker
        return lazy_core(self, build_reranker, self.model_name, self.device, self.dtype, self.batch_size,
                         self.core_options)
