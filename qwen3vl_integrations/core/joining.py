"""Forward passes of concurrent calls joined into one.

A search service embeds each user's query in its own call, often from several threads at once (LangChain's and
LlamaIndex's async methods run calls in worker threads). Calls on one model take turns for its forward passes (they
share its weights and per-pass state), and a short text's pass is bound by fixed costs (Python, kernel launches),
not by its few tokens. So the calls that wait while the model is busy run their rows together when it frees up.
Nobody waits for company: a call that finds the model free runs at once, alone; rows join only while the model is
busy, and then each call waits less than it would for its turn.

Rows join from their first token on (not rows after a cached query part), with or without images and videos: their
token ids, token types and positions are right-padded to a common width, which changes no row's result (attention
is causal, so a row never sees its padding, and each row's output is read at its own last token) beyond the
rounding of another batch shape (about 1e-7 in float32). Images and videos join in the order of the rows, the order
in which the model puts their features into the vision tokens; the joined batch is then made ready as any micro-batch
is (the vision tower's layout made for it anew). Only micro-batches with the same inputs join (text with text,
images with images).
"""
from __future__ import annotations

import threading
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Callable

import torch
import torch.nn.functional as F

if TYPE_CHECKING:
    from .runner import ModelInputs

# The tensors of a micro-batch of text rows, each [..., rows, width]: what joining knows how to pad.
TEXT_KEYS = frozenset({"input_ids", "mm_token_type_ids", "position_ids", "attention_mask"})
# Each image's (video's) patches and grid, [patches or items, ...]: joined by concatenation in row order.
MEDIA_KEYS = frozenset({"pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw"})


@dataclass(frozen=True)
class JoinLimits:
    """What a call allows its rows to run with: at most `rows` rows and `tokens` padded tokens per forward pass."""

    rows: int
    tokens: int


@dataclass(eq=False)  # compared by identity: a call's place in the queue
class _Waiting:
    """One call's micro-batch waiting for the model, and its output once a forward pass has run it."""

    inputs: ModelInputs
    limits: JoinLimits
    output: torch.Tensor | None = None

    @property
    def rows(self) -> int:
        return len(self.inputs.last)

    @property
    def width(self) -> int:
        return self.inputs.batch["input_ids"].shape[-1]


@dataclass
class ForwardJoiner:
    """Joins the micro-batches of calls that wait for one model's forward passes (one per loaded model)."""

    _waiting: list[_Waiting] = field(default_factory=list)
    _guard: threading.Lock = field(default_factory=threading.Lock)
    passes: int = 0  # forward passes it ran (for tests and benchmarks)
    joined: int = 0  # micro-batches that ran in another call's pass

    def run(self, lock: threading.Lock, inputs: ModelInputs, limits: JoinLimits,
            join: Callable[[list[ModelInputs]], ModelInputs], forward: Callable[[ModelInputs], torch.Tensor]
            ) -> torch.Tensor:
        """`forward(inputs)` [B, H] under `lock`, with the rows of other calls waiting for `lock` then (`join` puts
        micro-batches in one); returns this call's rows. If a joined pass fails, every call runs its rows alone, as
        if none had joined (a pass too big for the device's memory, say, fails no call that would have run)."""
        me = _Waiting(inputs, limits)
        with self._guard:
            self._waiting.append(me)
        try:
            return self._run_in_turn(lock, me, join, forward)
        finally:
            with self._guard:  # a call that ends without its rows run (interrupted) leaves nothing queued
                if me.output is None and me in self._waiting:
                    self._waiting.remove(me)

    @property
    def waiting(self) -> int:
        """Micro-batches waiting for the model now."""
        return len(self._waiting)

    def _run_in_turn(self, lock: threading.Lock, me: _Waiting, join: Callable[[list[ModelInputs]], ModelInputs],
                     forward: Callable[[ModelInputs], torch.Tensor]) -> torch.Tensor:
        inputs = me.inputs
        with lock:
            if me.output is not None:  # another call's pass ran these rows while this one waited
                return me.output
            group = self._claim(me)
            if len(group) > 1:
                try:
                    hidden = forward(join([w.inputs for w in group]))
                except Exception:
                    with self._guard:  # the others get their turn back
                        self._waiting.extend(group[1:])
                    group = [me]
            if len(group) == 1:
                hidden = forward(inputs)
            self.passes += 1
            self.joined += len(group) - 1
            mine = hidden[:me.rows]  # `me` is first in its group (`_claim`)
            me.output, start = mine, me.rows
            for waiting in group[1:]:
                waiting.output = hidden[start:start + waiting.rows]
                start += waiting.rows
        return mine

    def _claim(self, me: _Waiting) -> list[_Waiting]:
        """`me` and, in order of arrival, the waiting calls whose rows fit with it within every member's limits."""
        with self._guard:
            if me in self._waiting:
                self._waiting.remove(me)
            group, rows, width = [me], me.rows, me.width
            limits = me.limits
            for waiting in list(self._waiting):
                if not joins_with(me.inputs, waiting.inputs):
                    continue
                joined_rows, joined_width = rows + waiting.rows, max(width, waiting.width)
                joined_limits = JoinLimits(min(limits.rows, waiting.limits.rows),
                                           min(limits.tokens, waiting.limits.tokens))
                if joined_rows <= joined_limits.rows and joined_rows * joined_width <= joined_limits.tokens:
                    self._waiting.remove(waiting)
                    group.append(waiting)
                    rows, width, limits = joined_rows, joined_width, joined_limits
            return group


def can_join(inputs: ModelInputs) -> bool:
    """Whether a micro-batch's rows may join others: they run from their first token (no cached part), with inputs
    that joining knows (text and media, which it joins, and the vision layout, which is made anew)."""
    from .vision_layout import HOST_LAYOUT_KEYS, LAYOUT_KEYS

    return (inputs.shared == 0 and inputs.cache_inputs is None and "input_ids" in inputs.batch
            and set(inputs.batch) <= TEXT_KEYS | MEDIA_KEYS | LAYOUT_KEYS and set(inputs.host) <= HOST_LAYOUT_KEYS)


def joins_with(a: ModelInputs, b: ModelInputs) -> bool:
    """Whether two micro-batches can run in one pass: the same inputs of the same types (text with text, images sent
    the same way, 8-bit or not, with images; a switch changed between two calls keeps them apart)."""
    return a.batch.keys() == b.batch.keys() and all(a.batch[key].dtype == b.batch[key].dtype for key in a.batch)


def join_rows(parts: list[ModelInputs], pad_token_id: int) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """The batch and last-token indices of several micro-batches' rows in one: text inputs right-padded to the
    widest row, images and videos concatenated in row order (the vision layout is left to be made anew)."""
    width = max(part.batch["input_ids"].shape[-1] for part in parts)
    batch: dict[str, torch.Tensor] = {}
    for key in parts[0].batch:
        if key in TEXT_KEYS:
            fill = pad_token_id if key == "input_ids" else 0
            # [rows, width] or, for the positions, [3, rows, width]: rows are the second-to-last dimension.
            batch[key] = torch.cat([F.pad(part.batch[key], (0, width - part.batch[key].shape[-1]), value=fill)
                                    for part in parts], dim=-2)
        elif key in MEDIA_KEYS:
            batch[key] = torch.cat([part.batch[key] for part in parts])
    return batch, torch.cat([part.last for part in parts])
