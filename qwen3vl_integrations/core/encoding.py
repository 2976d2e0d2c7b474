"""From a rendered prompt and prepared media to model tensors: tokenise, truncate safely, pad into batches."""
from __future__ import annotations

import os
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from .media import _Invalid
from .pixels import RAW_IMAGE_KWARGS, cut_patches, is_qwen2vl_torchvision, normalize_pixels
from .vision import PreparedVideo

# Token ids from a fast tokenizer's Rust backend where its call would only add overhead (`token_ids`); False always
# makes the call (for comparison).
TOKEN_IDS_FROM_BACKEND = True
PER_TOKEN_KEYS = ("input_ids", "mm_token_type_ids")
VISION_KEYS = ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw")


@dataclass
class EncodedItem:
    """One sequence with its vision tensors (unpadded)."""

    input_ids: torch.Tensor  # [L] int64
    mm_token_type_ids: torch.Tensor  # [L] (0 text, 1 image, 2 video)
    pixel_values: torch.Tensor | None = None
    image_grid_thw: torch.Tensor | None = None
    pixel_values_videos: torch.Tensor | None = None
    video_grid_thw: torch.Tensor | None = None
    # Vision inputs that come before the item's own in the prompt, held by reference rather than copied: a reranker
    # query's media, which all of its pairs share.
    leading: EncodedItem | None = None

    def __len__(self) -> int:
        return int(self.input_ids.shape[0])

    def vision_parts(self, key: str) -> list[torch.Tensor]:
        """The vision tensors `key` (one of VISION_KEYS) of the whole prompt, in order: the leading inputs', then the
        item's own (none, one or both)."""
        parts = [getattr(self.leading, key)] if self.leading is not None else []
        return [part for part in parts + [getattr(self, key)] if part is not None]

    def vision(self, key: str) -> torch.Tensor | None:
        """The vision tensor `key` of the whole prompt: `vision_parts` joined (None when there is none)."""
        parts = self.vision_parts(key)
        return None if not parts else parts[0] if len(parts) == 1 else torch.cat(same_dtype(parts, key))


def same_dtype(parts: list[torch.Tensor], key: str) -> list[torch.Tensor]:
    """`parts`, checked to share one dtype before they are joined: 8-bit image patches next to normalised ones would
    be promoted to float silently, as if normalised (core/pixels.py)."""
    if len({part.dtype for part in parts}) > 1:
        raise RuntimeError(f"{key} of one batch mix {sorted({str(p.dtype) for p in parts})}: 8-bit and normalised "
                           "image patches cannot be joined")
    return parts


def eight_bit_if_asked(pixel_values: torch.Tensor | None, raw_pixels: bool) -> torch.Tensor | None:
    """`pixel_values`, checked to be 8-bit where 8-bit patches were asked for: patches of another dtype would reach
    the model unnormalised (only 8-bit ones are normalised on the device)."""
    if raw_pixels and pixel_values is not None and pixel_values.dtype != torch.uint8:
        raise RuntimeError(f"the image processor returned {pixel_values.dtype} patches where 8-bit ones were asked "
                           "for")
    return pixel_values


def encode(processor: Any, text: str, images: Sequence[Any], videos: Sequence[PreparedVideo],
           raw_pixels: bool = False) -> EncodedItem:
    """Run the checkpoint's processor on one prompt; media are already resized (do_resize=False). With
    `raw_pixels`, image patches keep their 8-bit values, for the model's device to normalise (core/pixels.py)."""
    if not videos and processor.video_token not in text:
        if not images and processor.image_token not in text:
            return encode_text(processor, text)
        if text.count(processor.image_token) == len(images):
            return encode_images(processor, text, images, raw_pixels)
    kwargs: dict[str, Any] = {"text": [text], "return_tensors": "pt", "padding": False, "truncation": False}
    if images:
        kwargs.update(images=list(images), do_resize=False)
        if raw_pixels:
            kwargs.update(images_kwargs=dict(RAW_IMAGE_KWARGS))  # images only: video frames stay normalised
    if videos:
        kwargs.update(videos=[v.frames for v in videos], video_metadata=[v.metadata for v in videos],
                      do_resize=False, do_sample_frames=False,
                      cap_pixels_per_frame=False)  # sizes are final already; also silences a v5 warning
    out = processor(**kwargs)
    token_types = out.get("mm_token_type_ids")
    if token_types is None:
        token_types = torch.zeros_like(out["input_ids"])
    return EncodedItem(
        input_ids=out["input_ids"][0].long(),
        mm_token_type_ids=token_types[0],
        pixel_values=eight_bit_if_asked(out.get("pixel_values"), raw_pixels),
        image_grid_thw=out.get("image_grid_thw"),
        pixel_values_videos=out.get("pixel_values_videos"),
        video_grid_thw=out.get("video_grid_thw"),
    )


def encode_text(processor: Any, text: str) -> EncodedItem:
    """A prompt without media or media placeholders: the processor's own tokenizer call, without the processor's
    keyword merging and checks around it (about 3 ms a call, most of a short text's preprocessing)."""
    input_ids = token_ids(processor.tokenizer, text)
    return EncodedItem(input_ids=input_ids, mm_token_type_ids=torch.zeros_like(input_ids))


def token_ids(tokenizer: Any, text: str) -> torch.Tensor:
    """[L] int64 ids of `text` as the tokenizer's call gives them (special tokens added, no padding, no truncation).

    A fast tokenizer's call ends in one call of its Rust backend after setting the backend's truncation, padding and
    special-token splitting; where these already are as the call would set them and the call is transformers' own,
    the backend is called directly: the same ids without the call's keyword handling and output conversion (about
    0.07 ms, held under the GIL that the preprocessing threads share)."""
    backend = _backend_as_is(tokenizer)
    if backend is not None:
        return torch.tensor(backend.encode_batch([text], add_special_tokens=True)[0].ids, dtype=torch.long)
    return tokenizer([text], return_tensors="pt", padding=False, truncation=False,
                     return_token_type_ids=False)["input_ids"][0].long()


# Texts are counted on up to this many threads, at least this many characters (about 5,000 tokens) a thread.
COUNT_THREADS = min(8, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)
COUNT_CHARS_PER_THREAD = 20_000


def token_counts(tokenizer: Any, texts: Sequence[str]) -> list[int]:
    """Tokens in each of `texts` without special tokens, as `tokenizer(texts, add_special_tokens=False)` counts them.

    The batch planner needs every length before the first forward pass, so this runs while the device waits (about
    0.1 s for 100k tokens on one core). Where `token_ids` would call the fast tokenizer's Rust backend, this does
    too, without the character offsets (not needed here), in chunks on several threads (the backend releases the
    GIL while it works)."""
    texts = list(texts)
    if not texts:
        return []
    backend = _backend_as_is(tokenizer)
    if backend is None:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)  # tokenizers before 0.21: with offsets

    def count(part: list[str]) -> list[int]:
        return [len(encoding.ids) for encoding in encode(part, add_special_tokens=False)]

    threads = min(COUNT_THREADS, len(texts), sum(map(len, texts)) // COUNT_CHARS_PER_THREAD)
    if threads <= 1:
        return count(texts)
    step = -(-len(texts) // threads)
    with ThreadPoolExecutor(threads) as pool:
        return [n for part in pool.map(count, [texts[i:i + step] for i in range(0, len(texts), step)]) for n in part]


def _backend_as_is(tokenizer: Any) -> Any:
    """The fast tokenizer's Rust backend where calling it directly gives what the tokenizer's call gives (and
    TOKEN_IDS_FROM_BACKEND is on), else None."""
    return fast_backend(tokenizer) if TOKEN_IDS_FROM_BACKEND else None


def fast_backend(tokenizer: Any) -> Any:
    """The fast tokenizer's Rust backend where calling it directly gives what the tokenizer's call gives, else
    None."""
    backend = getattr(tokenizer, "_tokenizer", None)
    if backend is None:
        return None
    try:
        from transformers.tokenization_utils_base import PreTrainedTokenizerBase
        from transformers.tokenization_utils_tokenizers import TokenizersBackend
    except ImportError:
        return None
    as_is = (isinstance(tokenizer, TokenizersBackend)
            and type(tokenizer).__call__ is PreTrainedTokenizerBase.__call__
            and type(tokenizer)._encode_plus is TokenizersBackend._encode_plus
            and not getattr(tokenizer, "_in_target_context_manager", False)
            and backend.truncation is None and backend.padding is None
            and backend.encode_special_tokens == bool(tokenizer.split_special_tokens))
    return backend if as_is else None


def encode_images(processor: Any, text: str, images: Sequence[Any], raw_pixels: bool = False) -> EncodedItem:
    """A prompt with images and no videos, as the processor encodes it but cheaper: the image processor runs on its
    own, and the text is tokenised with one placeholder per image, each then repeated to the image's token count.

    Equal to the processor's ids because the placeholder is a special token, which the tokenizer never merges with
    its neighbours; the processor instead tokenises the text with every placeholder already repeated (hundreds of
    tokens per image) after its keyword merging and checks (about 2 ms a call).
    """
    pixel_values, grid = image_patches(processor.image_processor, images, raw_pixels)
    counts = (grid.prod(-1) // processor.image_processor.merge_size ** 2).long()
    ids = token_ids(processor.tokenizer, text)
    repeats = torch.ones_like(ids)
    placeholders = (ids == processor.image_token_id).nonzero().flatten()
    if placeholders.numel() != counts.numel():  # encode() checked the count in the text; a tokenizer could differ
        raise _Invalid(f"the prompt holds {placeholders.numel()} image placeholders for {counts.numel()} images")
    repeats[placeholders] = counts
    ids = ids.repeat_interleave(repeats)
    token_types = mm_token_types(processor, ids)
    return EncodedItem(input_ids=ids, mm_token_type_ids=token_types,
                       pixel_values=eight_bit_if_asked(pixel_values, raw_pixels), image_grid_thw=grid)


def image_patches(image_processor: Any, images: Sequence[Any], raw_pixels: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """The patches and grids of `images` (already resized) as the image processor makes them: 8-bit patches of one
    temporal slice with `raw_pixels`, else normalised float ones. Cut here from the 8-bit pixels where possible
    (core/pixels.py: the same values in fewer copies), the float ones then normalised with the processor's own
    normalisation; otherwise by the processor."""
    cut = [cut_patches(image_processor, image) for image in images] if is_qwen2vl_torchvision(image_processor) \
        else []
    if not cut or any(c is None for c in cut):
        vision = image_processor(list(images), do_resize=False, return_tensors="pt",
                                 **(RAW_IMAGE_KWARGS if raw_pixels else {}))
        return vision["pixel_values"], vision["image_grid_thw"]
    each_patches, each_grid = zip(*cut)
    # torch.cat copies even one tensor: a single image's are taken as they are.
    patches, grid = ((each_patches[0], each_grid[0]) if len(cut) == 1
                     else (torch.cat(each_patches), torch.cat(each_grid)))
    return (patches if raw_pixels else normalize_pixels(image_processor, patches)), grid


def mm_token_types(processor: Any, ids: torch.Tensor) -> torch.Tensor:
    """The processor's modality type of each token (its `create_mm_token_type_ids` rule: 1 for its image token ids,
    2 video, 3 audio, else 0) as tensor operations, without the rule's round trip through lists and NumPy."""
    types = torch.zeros_like(ids)
    for value, name in ((1, "image_token_ids"), (2, "video_token_ids"), (3, "audio_token_ids")):
        if value < 3 and not hasattr(processor, name):
            # Every token would read as text, and the rotary positions of images and videos come out wrong (before
            # transformers 5.10.1 these were `image_ids`/`video_ids`: scores moved by up to 0.046)
            raise RuntimeError(f"the processor ({type(processor).__name__}) has no {name}: this transformers "
                               "version is not supported (pyproject.toml gives the range)")
        listed = [token for token in (getattr(processor, name, None) or []) if token is not None]
        if listed:
            types = torch.where(torch.isin(ids, torch.tensor(listed, dtype=ids.dtype)), value, types)
    return types


def append_token(item: EncodedItem, token_id: int) -> EncodedItem:
    """Append one text token (the embedder's <|endoftext|> when the tokenizer did not add it)."""
    item.input_ids = torch.cat([item.input_ids, item.input_ids.new_tensor([token_id])])
    item.mm_token_type_ids = torch.cat([item.mm_token_type_ids, item.mm_token_type_ids.new_zeros(1)])
    return item


def truncate_text_tokens(item: EncodedItem, max_length: int, suffix_length: int,
                         special_ids: torch.Tensor) -> EncodedItem:
    """Keep the body within `max_length` tokens without touching special or vision tokens.

    The body is everything before the last `suffix_length` tokens (the chat suffix, kept whole). If it is too
    long, every special token is kept and, of the other tokens, the first `max_length - n_special` in order:
    the official reranker rule (REFERENCE.md §5.4), applied to the embedder too (§11 #5). All per-token tensors
    are cut with the same mask.
    """
    body_length = len(item) - suffix_length
    if body_length <= max_length:
        return item
    body = item.input_ids[:body_length]
    is_special = torch.isin(body, special_ids) | (item.mm_token_type_ids[:body_length] != 0)
    n_special = int(is_special.sum())
    if n_special > max_length:
        raise _Invalid(
            f"needs {n_special} special/vision tokens, more than max_length={max_length}; "
            "lower max_pixels/total_pixels or max_frames, or raise max_length"
        )
    budget = max_length - n_special
    keep_text = (~is_special) & (torch.cumsum((~is_special).long(), 0) <= budget)
    keep = torch.cat([is_special | keep_text, torch.ones(suffix_length, dtype=torch.bool)])
    item.input_ids = item.input_ids[keep]
    item.mm_token_type_ids = item.mm_token_type_ids[keep]
    return item


def collate(items: Sequence[EncodedItem], pad_token_id: int,
            pin_memory: bool = False) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
    """Right-pad a micro-batch. Returns the model inputs and the index of each row's last real token.

    With `pin_memory` the inputs are built in page-locked memory, ready for an asynchronous copy to a GPU (the
    vision tensors, megabytes per image, are written there directly rather than copied once more).
    """
    lengths = torch.tensor([len(item) for item in items])
    width = int(lengths.max())
    input_ids = torch.full((len(items), width), pad_token_id, dtype=torch.long)
    token_types = torch.zeros((len(items), width), dtype=items[0].mm_token_type_ids.dtype)
    attention_mask = torch.zeros((len(items), width), dtype=torch.long)
    for row, item in enumerate(items):
        n = len(item)
        input_ids[row, :n] = item.input_ids
        token_types[row, :n] = item.mm_token_type_ids
        attention_mask[row, :n] = 1
    batch: dict[str, torch.Tensor] = {
        "input_ids": input_ids, "attention_mask": attention_mask, "mm_token_type_ids": token_types,
    }
    if pin_memory:
        batch = {key: value.pin_memory() for key, value in batch.items()}
    for key in VISION_KEYS:
        # Each item's parts, not `vision`: a pair's leading query inputs go into the batch without a joined copy.
        parts = [part for item in items for part in item.vision_parts(key)]
        if parts:
            shape = (sum(part.shape[0] for part in parts), *parts[0].shape[1:])
            batch[key] = torch.cat(same_dtype(parts, key),
                                   out=torch.empty(shape, dtype=parts[0].dtype, pin_memory=pin_memory))
    return batch, lengths - 1
