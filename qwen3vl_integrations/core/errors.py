"""The one error type for bad user input."""
from __future__ import annotations


class Qwen3VLInputError(ValueError):
    """An input item cannot be used. Names the item (by its index in the caller's list) and the cause.

    ``role`` is ``"item"`` for embedder inputs, ``"query"`` or ``"document"`` for the reranker.
    """

    def __init__(self, cause: str, index: int | None = None, role: str = "item") -> None:
        self.cause = cause
        self.index = index
        self.role = role
        where = role if index is None else f"{role} {index}"
        super().__init__(f"{where}: {cause}")

    def located(self, index: int | None, role: str) -> "Qwen3VLInputError":
        """The same cause, attributed to another position (used when items are nested or reordered)."""
        return Qwen3VLInputError(self.cause, index=index, role=role)

    def __reduce__(self):  # keep pickling (multiprocessing, caching) working with the custom __init__
        return (type(self), (self.cause, self.index, self.role))


def position_of(error: Qwen3VLInputError) -> int:
    """The position that an error about one of a call's inputs names (every such error names one); a sort key."""
    if error.index is None:
        raise ValueError(f"the error names no position: {error}")
    return error.index
