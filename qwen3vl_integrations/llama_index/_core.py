"""What the two LlamaIndex adapters share about their core object (private)."""
from __future__ import annotations

from typing import Any, ClassVar, Dict


def dtype_name(value: Any) -> Any:
    """Keep ``dtype`` serialisable: ``torch.bfloat16`` -> ``"bfloat16"``."""
    if value is None or isinstance(value, str):
        return value
    text = str(value)
    return text[len("torch."):] if text.startswith("torch.") else text


class CoreObjectPickling:
    """Pickling rule for an adapter holding a core object in the private attribute ``_<core_attribute>``.

    A core object the adapter built itself is dropped and rebuilt after unpickling (it shares the loaded model
    through the core's registry): a loaded model is never dragged through pickle. One the user passed in
    (``_owns_<core_attribute>`` False) is kept.
    """

    core_attribute: ClassVar[str]

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
