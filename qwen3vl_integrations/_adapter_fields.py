"""What the LlamaIndex and LangChain adapters' pydantic models share (private: only the adapters import it, and
both frameworks bring pydantic 2; the core does not need pydantic)."""
from __future__ import annotations

from typing import Any

from pydantic import BaseModel, field_validator

from .core.options import dtype_name, dtype_names_in


class DtypeNames(BaseModel):
    """Keeps ``dtype`` fields (and ``dtype`` in ``core_options``) as names, so that ``model_dump_json`` and
    LlamaIndex's ``to_json`` work (a ``torch.dtype`` does not serialise)."""

    @field_validator("dtype", mode="before", check_fields=False)
    @classmethod
    def _dtype_name(cls, value: Any) -> Any:
        return dtype_name(value)

    @field_validator("core_options", mode="before", check_fields=False)
    @classmethod
    def _dtype_names_in_core_options(cls, value: Any) -> Any:
        return dtype_names_in(value) if isinstance(value, dict) else value
