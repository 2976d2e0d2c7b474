"""The one error type for bad user input."""
from __future__ import annotations

from typing import Sequence

POSITIONS_SHOWN = 10  # positions of the other bad inputs named in the message; `.errors` holds them all


class Qwen3VLInputError(ValueError):
    """An input item cannot be used. Names the item (by its index in the caller's list) and the cause.

    ``role`` is ``"item"`` for embedder inputs, ``"query"`` or ``"document"`` for the reranker. The checks before
    any model work raise one error for all the bad inputs of a call (a reranker's bad queries first, then its bad
    documents): it names the first, and ``errors`` lists every one of them (this one first), each with its own
    ``index`` and ``cause``.
    """

    def __init__(self, cause: str, index: int | None = None, role: str = "item",
                 others: Sequence["Qwen3VLInputError"] = ()) -> None:
        self.cause = cause
        self.index = index
        self.role = role
        self.others = tuple(others)
        super().__init__(f"{_where(role, index)}: {cause}{_more(self.others)}")

    @property
    def errors(self) -> list["Qwen3VLInputError"]:
        """Every bad input this error reports, in the caller's order: this one, then the others."""
        return [self, *self.others]

    def located(self, index: int | None, role: str,
                others: Sequence["Qwen3VLInputError"] | None = None) -> "Qwen3VLInputError":
        """The same cause, attributed to another position (used when items are nested or reordered); `others`
        replaces the other bad inputs' errors (relocated the same way), which are otherwise kept, as are the notes."""
        moved = Qwen3VLInputError(self.cause, index=index, role=role, others=self.others if others is None else others)
        for note in getattr(self, "__notes__", ()):
            moved.add_note(note)
        return moved

    def __reduce__(self):  # keep pickling (multiprocessing, caching) working with the custom __init__
        notes = getattr(self, "__notes__", None)
        return (type(self), (self.cause, self.index, self.role, self.others), {"__notes__": notes} if notes else None)


def _where(role: str, index: int | None) -> str:
    return role if index is None else f"{role} {index}"


def _more(others: Sequence[Qwen3VLInputError]) -> str:
    if not others:
        return ""
    plural = "s" if len(others) > 1 else ""
    roles = {error.role for error in others}
    if len(roles) == 1 and all(error.index is not None for error in others):  # "items 3, 7"
        shown = f"{roles.pop()}{plural} " + ", ".join(str(error.index) for error in others[:POSITIONS_SHOWN])
    else:  # "query, document 3"
        shown = ", ".join(_where(error.role, error.index) for error in others[:POSITIONS_SHOWN])
    etc = ", ..." if len(others) > POSITIONS_SHOWN else ""
    return f" (and {len(others)} more bad input{plural}: {shown}{etc}; each with its cause in this error's .errors)"


def one_error(errors: Sequence[Qwen3VLInputError]) -> Qwen3VLInputError:
    """One error for all of `errors` (non-empty, in the order given): it names the first, lists the others'
    positions and holds them all in `.errors`."""
    first = errors[0]
    return Qwen3VLInputError(first.cause, index=first.index, role=first.role, others=list(errors[1:]))


def position_of(error: Qwen3VLInputError) -> int:
    """The position that an error about one of a call's inputs names (every such error names one); a sort key."""
    if error.index is None:
        raise ValueError(f"the error names no position: {error}")
    return error.index
