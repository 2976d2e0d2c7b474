"""The machinery shared by the embedder and the reranker: options, lazy loading, media preparation, and the
batched forward loop (length-sorted micro-batches, preprocessing in worker threads overlapping compute)."""
from __future__ import annotations

import contextlib
import dataclasses
import functools
import os
import threading
import weakref
from collections import deque
from dataclasses import dataclass, field
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Callable, ContextManager, Iterator, Mapping, NamedTuple, Sequence

import torch

from .async_calls import stop_if_given_up
from .batching import plan_batches
from .caching import BoundedCache, owner_cache
from .compiled_layers import compile_options, compiled_decoder_layers
from .encoding import COUNT_THREADS, EncodedItem, collate, token_counts
from .errors import Qwen3VLInputError, position_of
from .inputs import Item, check_instruction, parse_items
from .joining import JoinLimits, can_join, join_rows
from .loading import (LoadedModel, load_shared, read_config, resolve_attention, resolve_device, resolve_dtype,
                      usable_attention)
from .media import MediaPolicy, _Invalid, naming_media
from .options import flag, flag_or_folder, positive_number, whole_number
from .pixels import normalize_pixels
from .pooled_layer import can_pool_last_layer, pooled_tokens
from .vision import (VisionLimits, fewest_image_tokens, fewest_video_tokens, image_tokens, prepare_image,
                     prepare_video, video_tokens)
from .vision_layout import vision_layout

TEXT_TOKENS_PER_CHAR = 0.34  # a cheap upper-ish estimate used only before the tokenizer is loaded
# Fixed cost of one forward pass, in tokens, for the batch planner: a micro-batch takes a shorter item only when the
# padding that adds costs less than this. CPUs run a batch at about the same cost per token as single items, so
# padding is pure loss there; GPUs need larger batches to be efficient.
BATCH_OVERHEAD_TOKENS = {"cpu": 64, "mps": 256}
DEFAULT_BATCH_OVERHEAD_TOKENS = 1024
# On CPUs a micro-batch also never exceeds this many padded tokens, whatever max_batch_tokens says: bigger batches
# run slower per token there (activations no longer fit the caches) and save nothing, as one forward pass costs
# little beyond its arithmetic. An item longer than the cap still runs, alone.
CPU_MAX_BATCH_TOKENS = 2048
# Items per forward pass of an embedder's call of texts alone on CUDA, where batch_size is left at None (otherwise
# the role's default, `_default_batch_size`). The token budget still bounds each pass, and short texts were bound by
# the host's work per pass (2,048 texts of 8-64 tokens on an H200: 1,914 texts/s at 256 against 1,143 at 32;
# benchmarks/README.md). CPUs ran slower per token with more; passes with images or videos, and reranker pairs,
# keep the default (not measured with more).
CUDA_TEXT_BATCH_SIZE = 256

# Attention kernels our CUDA forward passes may use, by torch's SDPBackend names. cuDNN's is left out: torch sends
# padded (masked) attention to it first on Hopper GPUs, and it builds an execution plan for every new batch shape
# (tens of milliseconds each), which a corpus of varied lengths pays batch after batch. None: torch's own choice.
CUDA_ATTENTION_BACKENDS: tuple[str, ...] | None = ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "MATH")

# Micro-batches go to the model without their padding mask. Rows are right-padded and attention is causal, so no
# real token ever attends to a pad, and a pad's own hidden state is never read: the mask changes nothing we use.
# Without it attention runs as plain causal attention: transformers builds no [B, 1, L, L] mask (nor reads the
# padding mask back from the GPU to decide whether it may skip it), SDPA may use its flash kernels, which take no
# mask, and CPU kernels skip the blocks above the diagonal. True sends the mask (for comparison).
SEND_PADDING_MASK = False

# The last decoder layer runs only at each row's last real token, the one hidden state we read (core/pooled_layer.py).
# False runs it at every position (for comparison).
POOL_IN_LAST_LAYER = True

# The vision tower's layout of each batch's images and videos is computed on the CPU, in the worker thread that
# prepares the batch (core/vision_layout.py). False leaves it to the model, on the model's device (for comparison).
VISION_LAYOUT_ON_HOST = True

# The forward loop queues micro-batch k+1 on the device before it waits for micro-batch k's output, which is copied
# to the host asynchronously: the GPU then never idles while the host waits for a copy and launches the next
# batch's kernels one by one. Nothing changes on a CPU (its forward passes are synchronous) beyond when an output is
# handed over. False waits for each output before the next batch (for comparison).
QUEUE_NEXT_BATCH = True

# <|im_start|> (system), <|im_end|>, <|im_start|> (user): template specials before the chat suffix.
TEMPLATE_SPECIAL_TOKENS = 3

BuildSequence = Callable[[int], EncodedItem]


@dataclass
class ModelInputs:
    """A micro-batch ready for the backbone (`model_inputs` makes them): padded inputs, page-locked on CUDA, and
    each row's last real token. `host` holds inputs that are Python values, passed as they are (the vision tower's
    chunk runs and, under FlashAttention, its longest chunk). Rows that continue a cached query part of `shared`
    tokens also bring `cache_inputs`, called under the model lock for the cache."""

    batch: dict[str, torch.Tensor]
    last: torch.Tensor
    shared: int = 0
    cache_inputs: Callable[[], dict[str, Any]] | None = None
    host: dict[str, Any] = field(default_factory=dict)
    normalize_pixels: Callable[[torch.Tensor], torch.Tensor] | None = None

    def on_device(self, device: torch.device) -> dict[str, Any]:
        """The backbone's keyword arguments: the batch copied to `device` (asynchronously on CUDA), 8-bit image
        patches normalised there (`normalize_pixels`), then `host`."""
        non_blocking = device.type == "cuda"
        moved = {k: v.to(device, non_blocking=non_blocking) for k, v in self.batch.items()}
        if self.normalize_pixels is not None and "pixel_values" in moved:
            moved["pixel_values"] = self.normalize_pixels(moved["pixel_values"])
        return {**moved, **self.host}

    @property
    def tokens(self) -> int:
        """Tokens of the rows' whole sequences, cached part included."""
        return int((self.last + 1).sum()) + self.shared * len(self.last)


# (positions, their sequences) -> model inputs: runs in a worker thread, ahead of the model
Prepare = Callable[[list[int], list[EncodedItem]], ModelInputs]
# (positions, their model inputs) -> last hidden states [B, H], float32: runs on the calling thread
Forward = Callable[[list[int], ModelInputs], torch.Tensor]
# last hidden states [B, H] -> the micro-batch's output (normalised vectors, scores), on the model's device
Head = Callable[[torch.Tensor], torch.Tensor]


class HostCopy:
    """A device tensor's copy to the host, started when made and waited for when read.

    On CUDA the copy goes into page-locked memory behind the work already queued, and an event marks its end, so
    the host can queue more work before reading it. Elsewhere the tensor is copied (or kept, on the CPU) at once.
    """

    def __init__(self, tensor: torch.Tensor) -> None:
        self._done: torch.cuda.Event | None = None
        if tensor.device.type == "cuda":
            self._host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
            self._host.copy_(tensor, non_blocking=True)
            self._done = torch.cuda.Event()
            self._done.record(torch.cuda.current_stream(tensor.device))
        else:
            self._host = tensor.cpu()

    def result(self) -> torch.Tensor:
        """The tensor on the host, once the copy has finished."""
        if self._done is not None:
            self._done.synchronize()
            self._done = None
        return self._host


class CheckedInputs(NamedTuple):
    """What the checks before model work found in a call's inputs; each dict is keyed by the input's position."""

    items: dict[int, Item]  # the inputs that passed, parsed
    costs: dict[int, int]  # their media tokens, with an estimate of video timestamps (a sort cost)
    specials: dict[int, int]  # their special and vision tokens, which truncation never drops
    errors: list[Qwen3VLInputError]  # one per bad input, in order


class Qwen3VLRunner:
    """Common constructor options and the batched forward loop. Not used directly."""

    _role = "embedding"
    _default_batch_size = 32  # items per forward pass where batch_size is None (but see CUDA_TEXT_BATCH_SIZE)

    def __init__(
        self,
        model_name_or_path: str,
        *,
        device: str | torch.device | None = None,
        dtype: str | torch.dtype | None = None,
        torch_dtype: str | torch.dtype | None = None,
        attn_implementation: str | None = None,
        max_length: int,
        min_pixels: int = 4096,
        max_pixels: int = 1_843_200,
        total_pixels: int = 7_864_320,
        fps: float = 1.0,
        max_frames: int = 64,
        default_instruction: str,
        batch_size: int | None = None,
        max_batch_tokens: int = 16384,
        allow_remote: bool = True,
        allow_local_files: bool | str | os.PathLike[str] = True,
        remote_timeout: float = 15.0,
        max_remote_bytes: int = 256 * 2**20,
        max_image_pixels: int = 100_000_000,
        preprocess_workers: int = 2,
        join_concurrent_calls: bool = True,
        torch_compile: bool | Mapping[str, Any] = False,
        model_kwargs: dict[str, Any] | None = None,
    ) -> None:
        if dtype is not None and torch_dtype is not None and dtype != torch_dtype:
            raise TypeError("pass dtype or torch_dtype, not both")
        min_pixels, max_pixels = whole_number("min_pixels", min_pixels, 1), whole_number("max_pixels", max_pixels, 1)
        if min_pixels > max_pixels:
            raise ValueError("min_pixels must not exceed max_pixels")
        self.model_name_or_path = str(model_name_or_path)
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype if dtype is not None else torch_dtype, self.device)
        self.attn_implementation = resolve_attention(attn_implementation, self.device, self.dtype)
        self._attention_chosen_automatically = attn_implementation in (None, "auto")
        self.max_length = whole_number("max_length", max_length, 16)
        self.limits = VisionLimits(min_pixels, max_pixels, whole_number("total_pixels", total_pixels, 1),
                                   positive_number("fps", fps), whole_number("max_frames", max_frames, 2))
        check_instruction(default_instruction, "default_instruction")
        self.default_instruction = default_instruction
        self.batch_size = None if batch_size is None else whole_number("batch_size", batch_size, 1)
        self.max_batch_tokens = whole_number("max_batch_tokens", max_batch_tokens, 1)
        self.policy = MediaPolicy(flag("allow_remote", allow_remote), positive_number("remote_timeout", remote_timeout),
                                  whole_number("max_remote_bytes", max_remote_bytes, 1),
                                  whole_number("max_image_pixels", max_image_pixels, 1), self.limits.max_frames,
                                  flag_or_folder("allow_local_files", allow_local_files))
        self.preprocess_workers = whole_number("preprocess_workers", preprocess_workers, 0)
        # This object's calls that wait for the model while another call's pass runs (a service embedding its users'
        # queries from several threads) run their rows in one pass with the others' when it frees up
        # (core/joining.py). False: its calls run their own passes (bit-for-bit repeatable in bf16 under load).
        self.join_concurrent_calls = flag("join_concurrent_calls", join_concurrent_calls)
        # This object's forward passes run the language model's decoder layers under torch.compile (opt-in: a
        # compilation first, then faster passes on GPUs; core/compiled_layers.py). None: eager.
        self.torch_compile = compile_options(torch_compile)
        self.model_kwargs = dict(model_kwargs or {})
        self._loaded: LoadedModel | None = None
        self._load_lock = threading.Lock()

    def __getstate__(self) -> dict[str, Any]:
        # A pickle or a copy carries the options, not the model: it finds the loaded model again through the
        # registry (or loads it, in another process) on first use. A lock cannot be pickled.
        state = dict(self.__dict__)
        del state["_load_lock"]
        state["_loaded"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._load_lock = threading.Lock()

    def _check_call(self, instruction: str | None, batch_size: int | None) -> int | None:
        """A call's own options, checked before any model work; returns the call's batch size (None: the default)."""
        check_instruction(instruction)
        return self.batch_size if batch_size is None else whole_number("batch_size", batch_size, 1)

    def _items_per_pass(self, batch_size: int | None, texts_only: bool) -> int:
        """A call's cap on items per forward pass: its own or the object's `batch_size`, else the default, which
        on CUDA is larger for a call of texts alone."""
        if batch_size is not None:
            return batch_size
        return CUDA_TEXT_BATCH_SIZE if texts_only and self.device.type == "cuda" else self._default_batch_size

    # ------------------------------------------------------------------------------------ loading
    def load(self) -> LoadedModel:
        """Load the model now (it is otherwise loaded on first use) and return the shared handle."""
        if self._loaded is None:
            with self._load_lock:
                if self._loaded is None:
                    self.attn_implementation = usable_attention(self.attn_implementation, self.device,
                                                                self._attention_chosen_automatically)
                    self._loaded = load_shared(self.model_name_or_path, self._role, self.device, self.dtype,
                                               self.attn_implementation, self.model_kwargs)
        return self._loaded

    @property
    def is_loaded(self) -> bool:
        return self._loaded is not None

    def _config(self) -> Any:
        if self._loaded is not None:
            return self._loaded.config
        if not hasattr(self, "_config_cache"):
            self._config_cache = read_config(self.model_name_or_path, self.model_kwargs)
        return self._config_cache

    @property
    def hidden_size(self) -> int:
        config = self._config()
        return int(getattr(config, "text_config", config).hidden_size)

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({self.model_name_or_path!r}, device={str(self.device)!r}, "
                f"dtype={str(self.dtype).replace('torch.', '')!r}, loaded={self.is_loaded})")

    # ------------------------------------------------------------------------------- preprocessing
    def _media_tokens(self, item: Item, timestamps: bool = True) -> int:
        """Prompt tokens of an item's media: special and vision tokens (exact), plus an estimate of the videos'
        timestamp text unless `timestamps` is False, which counts exactly what truncation can never drop.
        Raises _Invalid."""
        count = 0
        for position, image in enumerate(item.images):
            with naming_media("image", position):
                count += image_tokens(image.width, image.height, self.limits) + 2
        for position, video in enumerate(item.videos):
            with naming_media("video", position):
                count += video_tokens(video, item.fps, item.max_frames, self.limits, timestamps=timestamps)
        return count

    def _checked_items(self, raws: Sequence[Any], role: str, budget: int,
                       taken: Callable[[int], int] = lambda position: 0) -> CheckedInputs:
        """The checks before any model work, on every input (`parse_items`, `_check_count`, `_check_fits`).
        `taken(position)`: tokens of `budget` already spoken for (a reranker query's, for its documents)."""
        parsed, errors = parse_items(raws, self.policy, role=role,
                                     check_count=lambda position, images, videos: self._check_count(
                                         images, videos, budget, taken(position)))
        items: dict[int, Item] = {}
        costs: dict[int, int] = {}
        specials: dict[int, int] = {}
        for position, item in enumerate(parsed):
            if item is None:
                continue
            try:
                specials[position] = self._media_tokens(item, timestamps=False)
                self._check_fits(specials[position] + taken(position), budget)
                costs[position] = self._media_tokens(item)
            except _Invalid as exc:
                specials.pop(position, None)
                errors.append(Qwen3VLInputError(str(exc), index=position, role=role))
                continue
            items[position] = item
        errors.sort(key=position_of)
        return CheckedInputs(items, costs, specials, errors)

    def _check_fits(self, special_tokens: int, budget: int) -> None:
        """Refuse, before any model work, media whose vision tokens alone exceed the sequence budget."""
        needed = special_tokens + TEMPLATE_SPECIAL_TOKENS
        if needed > budget:
            raise _Invalid(
                f"needs {needed} special/vision tokens, more than max_length allows ({budget}); "
                "lower max_pixels/total_pixels or max_frames, or raise max_length"
            )

    def _cut_long_texts(self, items: Sequence[Item]) -> list[Item]:
        """`items` with each long text cut to a head that gives the same kept tokens (core/long_texts.py): megabytes
        that truncation drops are never tokenised. Items with long texts are cut on up to COUNT_THREADS threads (the
        tokenizer's backend releases the GIL for most of a cut's 20-40 ms), before the planner needs their lengths."""
        cut = self.load().long_text_cut
        if cut is None:
            return list(items)

        def cut_item(item: Item) -> Item:
            texts = [cut.cut(text, self.max_length) for text in item.texts]
            return item if all(new is old for new, old in zip(texts, item.texts)) else dataclasses.replace(
                item, texts=texts)

        long = [k for k, item in enumerate(items) if any(cut.is_long(text, self.max_length) for text in item.texts)]
        done = list(items)
        if len(long) > 1 and COUNT_THREADS > 1:
            with ThreadPoolExecutor(min(COUNT_THREADS, len(long))) as pool:
                for k, item in zip(long, pool.map(cut_item, [items[k] for k in long])):
                    done[k] = item
        else:
            for k in long:
                done[k] = cut_item(items[k])
        return done

    def _check_count(self, images: int, videos: int, budget: int, taken: int = 0) -> None:
        """Refuse, before any of them is opened or fetched, images and videos too many for the sequence budget even
        at the fewest tokens each can take under the vision limits (`taken`: tokens of the budget already spoken
        for, a reranker query's for its document). Refuses nothing that `_check_fits` would accept."""
        image_floor, video_floor = fewest_image_tokens(self.limits), fewest_video_tokens(self.limits)
        room = budget - TEMPLATE_SPECIAL_TOKENS - taken
        if images * image_floor + videos * video_floor <= room:
            return
        needed = images * image_floor + videos * video_floor + TEMPLATE_SPECIAL_TOKENS + taken
        media = " and ".join(f"{count} {kind}{'s' if count != 1 else ''}"
                             for count, kind in ((videos, "video"), (images, "image")) if count)
        if videos * video_floor > room:
            most = f"at most {max(room, 0) // video_floor} videos fit, at {video_floor} tokens each at least"
        else:
            beside = " beside its videos" if videos else ""
            most = f"at most {(room - videos * video_floor) // image_floor} images fit{beside}, at {image_floor} " \
                   "tokens each at least"
        query = f" (the query's {taken} included)" if taken else ""
        raise _Invalid(
            f"has {media}, which need at least {needed} special/vision tokens{query}, more than max_length allows "
            f"({budget}): {most}; send fewer{', lower min_pixels' if images else ''} or raise max_length"
        )

    def _text_cost(self, texts: Sequence[str]) -> list[int]:
        return token_counts(self.load().tokenizer, texts)

    def _prepare_media(self, item: Item) -> tuple[list[Any], list[Any]]:
        """Decoded and resized images and videos of one item, in prompt order. Raises _Invalid naming the image or
        video of the item, as the checks before the run do."""
        def decoded(kind: str, position: int, prepare: Callable[[], Any]) -> Any:
            with naming_media(kind, position):
                try:
                    return prepare()
                except _Invalid:
                    raise
                except Exception as exc:  # decoding errors that a header check cannot see
                    raise _Invalid(f"could not decode media: {exc}") from None

        images = [decoded("image", k, functools.partial(prepare_image, image, self.limits, self.policy))
                  for k, image in enumerate(item.images)]
        videos = [decoded("video", k, functools.partial(prepare_video, video, item.fps, item.max_frames,
                                                        self.limits, self.policy))
                  for k, video in enumerate(item.videos)]
        return images, videos

    # ------------------------------------------------------------------------------ forward loop
    def _forward_last_hidden(self, loaded: LoadedModel, inputs: ModelInputs, batch_size: int) -> torch.Tensor:
        """Last-layer hidden state of each row's last real token, float32, [B, H] on the model device. A pass joined
        with other calls' rows holds at most `batch_size` (the call's) rows."""
        limits = JoinLimits(batch_size, self._token_budget(loaded)) if self.join_concurrent_calls else None
        return last_token_states(loaded, inputs, limits, self.torch_compile)

    def _token_budget(self, loaded: LoadedModel) -> int:
        """Padded tokens per forward pass at most (an item longer than that runs alone)."""
        if loaded.device.type == "cpu":
            return min(self.max_batch_tokens, CPU_MAX_BATCH_TOKENS)
        return self.max_batch_tokens

    def _run(
        self,
        costs: Sequence[int],
        build: BuildSequence,
        role: str,
        batch_size: int,
        show_progress: bool = False,
        raise_errors: bool = True,
        groups: Sequence[int] | None = None,
        prepare: Prepare | None = None,
        forward: Forward | None = None,
        head: Head | None = None,
    ) -> Iterator[tuple[list[int], torch.Tensor | None, list[Qwen3VLInputError]]]:
        """Yield (positions, outputs on the host, errors) per micro-batch, in the order they ran: the outputs are
        `head` of the last hidden states [len(positions), H] (default: the hidden states themselves).

        `build(position)` turns one position into a sequence; it runs in worker threads a couple of batches
        ahead of the model. A position whose media fail to decode is reported (raised when `raise_errors`).
        With `groups`, a micro-batch only holds positions of one group, and the groups run one after another in
        order of first appearance. `prepare` (worker threads, default: padding) and `forward` (the calling thread,
        default: the plain forward pass) replace the two halves of running a micro-batch. With QUEUE_NEXT_BATCH, a
        micro-batch's output is handed over after the next micro-batch has been queued on the device.
        """
        loaded = self.load()
        overhead = BATCH_OVERHEAD_TOKENS.get(loaded.device.type, DEFAULT_BATCH_OVERHEAD_TOKENS)
        budget = self._token_budget(loaded)
        members: dict[int, list[int]] = {}
        for position, group in enumerate(groups if groups is not None else [0] * len(costs)):
            members.setdefault(group, []).append(position)
        batches = [[positions[i] for i in batch] for positions in members.values()
                   for batch in plan_batches([costs[p] for p in positions], batch_size, budget,
                                             batch_overhead=overhead)]

        def build_batch(positions: list[int]) -> tuple[list[int], ModelInputs | None, list[Qwen3VLInputError]]:
            ok, sequences, errors = [], [], []
            for position in positions:
                try:
                    sequences.append(build(position))
                    ok.append(position)
                except _Invalid as exc:
                    errors.append(Qwen3VLInputError(str(exc), index=position, role=role))
            if not sequences:
                return ok, None, errors
            inputs = prepare(ok, sequences) if prepare is not None else model_inputs(loaded, sequences)
            return ok, inputs, errors

        progress = None
        if show_progress:
            from tqdm.auto import tqdm

            progress = tqdm(total=len(costs), desc="Qwen3-VL", unit="item")
        # One micro-batch has nothing to overlap with: skip the pool.
        workers = self.preprocess_workers if len(batches) > 1 else 0
        # The pool lives with the loaded model: its threads serve every call.
        pool = loaded.preprocess_pool(workers) if workers else None
        pending: deque[Future] = deque()
        try:
            upcoming = iter(batches)

            def submit_next() -> None:
                positions = next(upcoming, None)
                if positions is not None and pool is not None:
                    pending.append(pool.submit(build_batch, positions))
                elif positions is not None:
                    done: Future = Future()
                    done.set_result(build_batch(positions))
                    pending.append(done)

            for _ in range(max(1, workers) + 1):  # keep the workers busy while the model runs
                submit_next()
            queued: deque[tuple[list[int], HostCopy | None, list[Qwen3VLInputError]]] = deque()
            held = 1 if QUEUE_NEXT_BATCH else 0
            while pending or queued:
                if pending:
                    ok, inputs, errors = pending.popleft().result()
                    submit_next()
                    if errors and raise_errors:
                        # A new exception: raising the one held in `errors` (a local of this frame, which its
                        # traceback holds) made a cycle that kept the call's inputs until the collector ran.
                        raise errors[0].located(errors[0].index, errors[0].role)
                    output = None
                    if inputs is not None:
                        stop_if_given_up()
                        hidden = (forward(ok, inputs) if forward is not None
                                  else self._forward_last_hidden(loaded, inputs, batch_size))
                        output = HostCopy(head(hidden) if head is not None else hidden)
                    queued.append((ok, output, errors))
                    if len(queued) <= held and pending:
                        continue
                ok, output, errors = queued.popleft()
                if progress is not None:
                    progress.update(len(ok) + len(errors))
                yield ok, output.result() if output is not None else None, errors
        finally:
            for future in pending:  # a call that stops early leaves no queued work behind
                future.cancel()
            if progress is not None:
                progress.close()


def rope_positions(backbone: Any, sequences: Sequence[EncodedItem], start: int) -> torch.Tensor:
    """M-RoPE position ids [3, B, max(len) - start] of each whole sequence from `start` on, right-padded with 0.

    Positions of vision tokens depend on their grids, so they come from the model's own rule on the whole
    sequence, then the shared part is cut off.
    """
    width = max(len(s) for s in sequences) - start
    positions = torch.zeros(3, len(sequences), width, dtype=torch.long)
    for row, item in enumerate(sequences):
        positions[:, row, : len(item) - start] = whole_rope_positions(backbone, item)[:, start:]
    return positions


# Sequences of up to this many tokens keep their positions, per backbone, for the next sequence of the same layout:
# the model's rule walks the tokens in Python (0.26 ms for a 448x448 image's prompt at best, a lookup 0.005 ms), and
# an image corpus, or a query's pairs with image documents, repeats one layout.
POSITIONS_CACHE_TOKENS = 2048
POSITIONS_CACHE_ITEMS = 256  # per backbone, emptied when full
_positions: weakref.WeakKeyDictionary[Any, BoundedCache] = weakref.WeakKeyDictionary()


def whole_rope_positions(backbone: Any, item: EncodedItem) -> torch.Tensor:
    """[3, len(item)] M-RoPE positions of one sequence by the model's rule, which reads only the token types and the
    vision grids (never the token ids): sequences alike in these share them. Read-only: the tensor may be shared."""
    image_grid, video_grid = item.vision("image_grid_thw"), item.vision("video_grid_thw")

    def by_rule() -> torch.Tensor:
        whole, _ = backbone.get_rope_index(item.input_ids[None], mm_token_type_ids=item.mm_token_type_ids[None],
                                           image_grid_thw=image_grid, video_grid_thw=video_grid)
        return whole[:, 0]

    if len(item) > POSITIONS_CACHE_TOKENS:
        return by_rule()
    key = tuple(t.numpy().tobytes() if t is not None else b"-" for t in (item.mm_token_type_ids, image_grid,
                                                                         video_grid))
    return owner_cache(_positions, backbone, POSITIONS_CACHE_ITEMS).get_or_make(key, by_rule)


def model_inputs(loaded: LoadedModel, sequences: Sequence[EncodedItem], shared: int = 0,
                 rows: Sequence[EncodedItem] | None = None) -> ModelInputs:
    """A micro-batch padded into model inputs (page-locked on CUDA), with its M-RoPE position ids.

    With `shared`, only `rows` run: each sequence's tokens after its first `shared`, which come from a cache (the
    caller adds the cache's arguments). Positions always follow the whole sequences.

    transformers would compute the positions of image and video prompts inside the forward pass, from tensors
    already on the GPU, with several host synchronisations per image or video; here they come from the same rule on
    the CPU, in the worker thread that prepares the batch. Text-only prompts get shared..L-1 in all three rows, as
    the model would give them; passing them also keeps transformers from reading the positions back from the GPU to
    check whether a row packs several sequences. The vision tower's layout is computed here too
    (VISION_LAYOUT_ON_HOST).
    """
    batch, last = collate(sequences if rows is None else rows, loaded.pad_token_id,
                          pin_memory=loaded.device.type == "cuda")
    padding_mask_as_sent(batch, shared)
    if any(s.vision("image_grid_thw") is not None or s.vision("video_grid_thw") is not None for s in sequences):
        batch["position_ids"] = rope_positions(loaded.backbone, sequences, shared)
    else:
        count, width = batch["input_ids"].shape
        # Materialised, not an expanded view: every row is copied to the device anyway.
        batch["position_ids"] = torch.arange(shared, shared + width).repeat(3, count, 1)
    return prepared_inputs(loaded, batch, last, shared)


def prepared_inputs(loaded: LoadedModel, batch: dict[str, torch.Tensor], last: torch.Tensor, shared: int = 0
                    ) -> ModelInputs:
    """A padded micro-batch (token ids, positions, media) ready for the backbone: with the vision tower's layout
    (VISION_LAYOUT_ON_HOST), its 8-bit image patches to be normalised on the device, page-locked on CUDA."""
    host: dict[str, Any] = {}
    if VISION_LAYOUT_ON_HOST:
        on_device, host = vision_layout(loaded.backbone, batch)
        batch.update(on_device)
    pixels = batch.get("pixel_values")
    normalize = (functools.partial(normalize_pixels, loaded.processor.image_processor)
                 if pixels is not None and pixels.dtype == torch.uint8 else None)
    return ModelInputs(page_locked(loaded, batch), last, shared, host=host, normalize_pixels=normalize)


def padding_mask_as_sent(batch: dict[str, torch.Tensor], shared: int = 0) -> None:
    """Set the batch's padding mask as the model gets it: none (SEND_PADDING_MASK), or with ones in front for the
    `shared` tokens the rows continue from a cache."""
    mask = batch.pop("attention_mask")
    if SEND_PADDING_MASK:
        batch["attention_mask"] = torch.cat([torch.ones(len(mask), shared, dtype=mask.dtype), mask], dim=1)


def page_locked(loaded: LoadedModel, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """On CUDA, the batch in page-locked memory (an asynchronous copy to the GPU needs it); elsewhere unchanged.

    Pinning copies into a tensor of the same strides, which a view whose elements share memory (an expanded tensor)
    refuses: such a tensor is made contiguous first, whoever built it (our collation or transformers' helpers)."""
    if loaded.device.type != "cuda":
        return batch
    return {k: v if v.is_pinned() else (v if v.is_contiguous() else v.contiguous()).pin_memory()
            for k, v in batch.items()}


class _AttentionBackends:
    """The attention kernels of CUDA_ATTENTION_BACKENDS while any of our CUDA forward passes runs.

    torch keeps these choices in process-wide flags, not per thread, and `sdpa_kernel` restores on exit what it saw
    on entry: two passes that overlap (an embedder and a reranker, or models on two GPUs, each under its own lock)
    would each restore the other's setting, re-enabling cuDNN during the second pass and leaving it disabled for the
    rest of the process. So the first pass in sets the flags and the last one out restores them."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._passes = 0
        self._context: Any = None

    @contextlib.contextmanager
    def __call__(self, device: torch.device) -> Iterator[None]:
        if device.type != "cuda" or CUDA_ATTENTION_BACKENDS is None:
            yield
            return
        from torch.nn.attention import SDPBackend, sdpa_kernel

        with self._lock:
            if self._passes == 0:
                self._context = sdpa_kernel([getattr(SDPBackend, name) for name in CUDA_ATTENTION_BACKENDS])
                self._context.__enter__()
            self._passes += 1
        try:
            yield
        finally:
            with self._lock:
                self._passes -= 1
                if self._passes == 0:
                    context, self._context = self._context, None
                    context.__exit__(None, None, None)


attention_backends = _AttentionBackends()


def device_guard(device: torch.device) -> ContextManager[Any]:
    """The model's GPU as the current CUDA device (a thread's is GPU 0 unless set): kernels that consult it (torch's
    FlashAttention eligibility check reads the current GPU's properties) see the GPU the model is on."""
    return torch.cuda.device(device) if device.type == "cuda" else contextlib.nullcontext()


def last_token_states(loaded: LoadedModel, inputs: ModelInputs, limits: JoinLimits | None = None,
                      compiled: dict[str, Any] | None = None) -> torch.Tensor:
    """Run a micro-batch through the backbone and return the last-layer hidden state at each row's last real token,
    float32 [B, H] on the model device. With `limits`, rows of other calls waiting for the model may run in the
    same pass, within them (core/joining.py). With `compiled` (torch.compile options), the pass runs the decoder
    layers compiled (core/compiled_layers.py)."""
    if limits is not None and can_join(inputs):
        return loaded.joiner.run(loaded.lock, inputs, limits, functools.partial(joined_inputs, loaded),
                                 lambda joined: _last_token_states(loaded, joined, compiled))
    with loaded.lock:
        return _last_token_states(loaded, inputs, compiled)


def joined_inputs(loaded: LoadedModel, parts: list[ModelInputs]) -> ModelInputs:
    """The rows of several calls' micro-batches as one micro-batch for `loaded` (core/joining.py), made ready as
    every micro-batch is."""
    return prepared_inputs(loaded, *join_rows(parts, loaded.pad_token_id))


def _last_token_states(loaded: LoadedModel, inputs: ModelInputs, compiled: dict[str, Any] | None = None
                       ) -> torch.Tensor:
    """`last_token_states` of one micro-batch, run by a caller that holds the model lock."""
    batch = inputs.on_device(loaded.device)
    last = inputs.last.to(loaded.device, non_blocking=loaded.device.type == "cuda")
    has_vision = "pixel_values" in batch or "pixel_values_videos" in batch
    pooled = POOL_IN_LAST_LAYER and can_pool_last_layer(loaded.backbone, has_vision)
    with torch.inference_mode(), device_guard(loaded.device), attention_backends(loaded.device):
        # (a query part's cache may run its own forward pass here, of all its tokens)
        extra = inputs.cache_inputs() if inputs.cache_inputs is not None else {"use_cache": False}
        with (pooled_tokens(loaded.backbone, last) if pooled else contextlib.nullcontext(),
              compiled_decoder_layers(loaded.backbone, compiled)):
            hidden = loaded.backbone(**batch, **extra).last_hidden_state
        if pooled:  # [B, 1, H]: the last layer ran at these tokens only
            return hidden[:, 0].float()
        return hidden[torch.arange(hidden.shape[0], device=hidden.device), last].float()
