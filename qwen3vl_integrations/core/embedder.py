"""Qwen3-VL-Embedding: one vector space for text, images, visual documents and video."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

import numpy as np
import torch

from .encoding import EncodedItem, append_token, encode, truncate_text_tokens
from .errors import Qwen3VLInputError, position_of
from .inputs import Item, input_list, official_item, raise_bad_inputs
from .media import _Invalid
from .prompts import EMBEDDING_DEFAULT_INSTRUCTION, embedding_conversation, render
from .runner import Qwen3VLRunner

EMBEDDING_SUFFIX = 6  # <|im_end|> \n <|im_start|> assistant \n <|endoftext|>
PROMPT_OVERHEAD = 24  # template tokens around the content, for length estimates
GAP_CLOSING_ROWS = 4096  # rows moved at a time when skipped inputs leave gaps in the output


@dataclass
class EmbeddingResult:
    """What `try_embed` returns: vectors of the good inputs, their positions, and an error per bad input."""

    embeddings: np.ndarray
    indices: np.ndarray
    errors: list[Qwen3VLInputError] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.indices)


class Qwen3VLEmbedder(Qwen3VLRunner):
    """Embeds text, images, videos and mixtures with Qwen3-VL-Embedding, identically to the official code.

    The model loads on first use and is shared with every other object asking for the same checkpoint,
    device, dtype and attention implementation.
    """

    _role = "embedding"

    def __init__(
        self,
        model_name_or_path: str = "Qwen/Qwen3-VL-Embedding-2B",
        *,
        max_length: int = 8192,
        default_instruction: str = EMBEDDING_DEFAULT_INSTRUCTION,
        **options: Any,
    ) -> None:
        super().__init__(model_name_or_path, max_length=max_length, default_instruction=default_instruction,
                         **options)

    @property
    def embedding_dim(self) -> int:
        """Full output dimension (2048 for the 2B model, 4096 for the 8B)."""
        return self.hidden_size

    # ------------------------------------------------------------------------------- public API
    def embed(
        self,
        items: Sequence[Any],
        *,
        instruction: str | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        precision: str = "float32",
        ranges: Any = None,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> np.ndarray:
        """Embed `items` (str or dict with text/image/video) into an [N, D] array, in the caller's order.

        Raises `Qwen3VLInputError` before any model work if inputs are bad (naming the first, with all of them in
        its `.errors`); use `try_embed` to skip bad inputs instead. `dimensions` truncates (Matryoshka) and
        re-normalises; `precision` other than float32 quantizes (see `qwen3vl_integrations.quantization`). Both
        apply to each micro-batch as it comes, so the returned array is the only one that grows with `items`.
        """
        finish = self._output_rows(dimensions, normalize, precision, ranges)
        return self._embed(items, instruction, normalize, batch_size, show_progress, strict=True,
                           finish=finish).embeddings

    def try_embed(
        self,
        items: Sequence[Any],
        *,
        instruction: str | None = None,
        dimensions: int | None = None,
        normalize: bool = True,
        precision: str = "float32",
        ranges: Any = None,
        batch_size: int | None = None,
        show_progress: bool = False,
    ) -> EmbeddingResult:
        """Like `embed`, but bad inputs are skipped and reported: `.embeddings[k]` belongs to `items[.indices[k]]`."""
        finish = self._output_rows(dimensions, normalize, precision, ranges)
        return self._embed(items, instruction, normalize, batch_size, show_progress, strict=False, finish=finish)

    def check_inputs(self, items: Sequence[Any]) -> list[Qwen3VLInputError]:
        """The checks `embed` runs on `items` before any model work, without it: one error per bad input (its
        `index` counts in `items`), in order; [] when all pass. Media are read as `embed` reads them (headers of
        files, remote media fetched); the model is not loaded. A file damaged after a good header shows only when
        it is decoded, so only `embed` finds it."""
        items = input_list(items, "check_inputs() takes a list of inputs; wrap a single input in a list")
        return self._checked_items(items, "item", self.max_length - EMBEDDING_SUFFIX).errors

    def process(self, inputs: Sequence[dict[str, Any]], normalize: bool = True) -> torch.Tensor:
        """The official API: a list of dicts in, a float32 tensor [N, D] out. Keys other than the official ones are
        ignored, as upstream does."""
        inputs = input_list(inputs, "process() takes a list of inputs; wrap a single input in a list")
        return torch.from_numpy(self.embed([official_item(raw) for raw in inputs], normalize=normalize))

    # ----------------------------------------------------------------------------- internals
    @staticmethod
    def _output_rows(dimensions: int | None, normalize: bool, precision: str,
                     ranges: Any) -> Callable[[np.ndarray], np.ndarray]:
        """The row-wise last step of an output: Matryoshka truncation, then quantization. `_embed` tries it on a
        zero row before any model work, so a bad size, precision or ranges fails then, not after embedding
        everything."""
        from .quantization import quantize, truncate

        def finish(vectors: np.ndarray) -> np.ndarray:
            if dimensions is not None:
                vectors = truncate(vectors, dimensions, normalize=normalize)
            if precision not in ("float32", None):
                vectors = quantize(vectors, precision, ranges=ranges)
            return vectors

        return finish

    def _embed(self, items: Sequence[Any], instruction: str | None, normalize: bool, batch_size: int | None,
               show_progress: bool, strict: bool, finish: Callable[[np.ndarray], np.ndarray]) -> EmbeddingResult:
        items = input_list(items, "embed() takes a list of inputs; wrap a single input in a list")
        batch_size = self._check_call(instruction, batch_size)
        row = finish(np.zeros((1, self.embedding_dim), np.float32))  # checks the options; the output's width, dtype
        checked = self._checked_items(items, "item", self.max_length - EMBEDDING_SUFFIX)
        valid, costs, errors = checked.items, checked.costs, checked.errors
        if strict:
            raise_bad_inputs(errors, hint="Qwen3VLEmbedder.try_embed embeds the good inputs and reports the bad ones")
        good = list(costs)
        if not items or not good:
            return EmbeddingResult(np.zeros((0, row.shape[1]), row.dtype), np.zeros(0, np.int64), errors)
        valid.update(zip(good, self._cut_long_texts([valid[position] for position in good])))

        text_costs = self._text_cost([" ".join(valid[p].texts) + (valid[p].instruction or "") for p in good])
        # At most max_length: truncation's bound, not a long text's whole length, decides its batch.
        order_costs = [min(costs[p] + t + PROMPT_OVERHEAD, self.max_length) for p, t in zip(good, text_costs)]
        batch_size = self._items_per_pass(batch_size, all(not (valid[p].images or valid[p].videos) for p in good))
        loaded = self.load()
        vectors = np.zeros((len(good), row.shape[1]), row.dtype)
        done = np.zeros(len(good), bool)

        def build(k: int) -> EncodedItem:
            return self._encode_item(loaded, valid[good[k]], instruction)

        def head(hidden: torch.Tensor) -> torch.Tensor:
            return torch.nn.functional.normalize(hidden, p=2, dim=-1) if normalize else hidden

        for ks, hidden, batch_errors in self._run(order_costs, build, "item", batch_size, show_progress,
                                                  raise_errors=strict, head=head):
            for error in batch_errors:
                errors.append(error.located(good[position_of(error)], "item"))
            if hidden is not None:
                vectors[ks] = finish(hidden.numpy())
                done[ks] = True
        errors.sort(key=position_of)
        kept = np.flatnonzero(done)
        return EmbeddingResult(_close_gaps(vectors, kept), np.asarray(good, dtype=np.int64)[kept], errors)

    def _encode_item(self, loaded: Any, item: Item, instruction: str | None) -> EncodedItem:
        """Prompt, media and tokens of one item, ending in <|endoftext|>, truncated around vision tokens."""
        images, videos = self._prepare_media(item)  # decoding first: a processor is lent for the prompt only
        with loaded.lent_processor() as processor:
            chosen = item.instruction or instruction
            text = render(processor, embedding_conversation(item, chosen, self.default_instruction))
            try:
                sequence = encode(processor, text, images, videos, loaded.raw_pixels)
            except Exception as exc:  # processor errors on odd media (sizes, channels)
                raise _Invalid(f"could not encode input: {exc}") from None
            eot_id = processor.tokenizer.convert_tokens_to_ids("<|endoftext|>")
        if int(sequence.input_ids[-1]) != eot_id:
            sequence = append_token(sequence, eot_id)
        return truncate_text_tokens(sequence, self.max_length - EMBEDDING_SUFFIX, EMBEDDING_SUFFIX,
                                    loaded.special_ids)


def _close_gaps(vectors: np.ndarray, kept: np.ndarray) -> np.ndarray:
    """The rows `kept` (increasing) of `vectors`, moved up in place a block at a time: skipped inputs never cost a
    second copy of the output. A view of `vectors` when rows were dropped."""
    if len(kept) == len(vectors):
        return vectors
    for start in range(0, len(kept), GAP_CLOSING_ROWS):
        rows = kept[start:start + GAP_CLOSING_ROWS]
        vectors[start:start + len(rows)] = vectors[rows]  # each source row is at or after its target: none is lost
    return vectors[:len(kept)]
