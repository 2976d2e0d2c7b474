"""What the two LlamaIndex adapters share about their core object (private)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, ClassVar, Dict

from llama_index.core.bridge.pydantic import PrivateAttr

from .._adapter_fields import DtypeNames


class HoldsCoreObject(DtypeNames):
    """For an adapter holding a core object in the private attribute ``_<core_attribute>`` (and ``_owns_<...>``).

    A core object the user passed in is used as it is, and kept through pickling. One the adapter builds from its
    fields is built on first use, and again when those fields changed since (a field set later, or
    ``model_copy(update=...)``, which copies the built object along); pickling drops it, and it is rebuilt after
    unpickling. Core objects pickle without their model, which they find again through the core's registry.
    ``dtype`` (and a dtype in ``core_options``) is kept as its name, so that ``to_json`` works.
    """

    core_attribute: ClassVar[str]
    _built_with: Any = PrivateAttr(default=None)  # the options the adapter's own core object was built from
    if TYPE_CHECKING:  # a field of each adapter, declared there with its description (here it would be a field)
        core_options: Dict[str, Any]

    def _core_object(self, build: Callable[..., Any], model_name_or_path: str, **fields: Any) -> Any:
        """The core object, built by ``build`` from the model, the fields that are set and ``core_options`` (which
        win)."""
        options = {"model_name_or_path": model_name_or_path,
                   **{name: value for name, value in fields.items() if value is not None}, **self.core_options}
        private, owns = "_" + self.core_attribute, "_owns_" + self.core_attribute
        core = getattr(self, private)
        if core is not None and (not getattr(self, owns) or self._built_with == options):
            return core
        core = build(**options)
        setattr(self, private, core)
        self._built_with = options
        return core

    def __getstate__(self) -> Dict[str, Any]:
        private, owns = "_" + self.core_attribute, "_owns_" + self.core_attribute
        if not getattr(self, owns):
            return super().__getstate__()
        core = getattr(self, private)
        setattr(self, private, None)
        try:
            return super().__getstate__()
        finally:
            setattr(self, private, core)

    def __setstate__(self, state: Dict[str, Any]) -> None:
        # BaseComponent re-runs __init__ from the fields, which loses private attributes: restore a core object
        # the user passed in.
        super().__setstate__(state)
        private, owns = "_" + self.core_attribute, "_owns_" + self.core_attribute
        saved = state.get("__pydantic_private__") or {}
        if saved.get(private) is not None and not saved.get(owns, True):
            setattr(self, private, saved[private])
            setattr(self, owns, False)
