"""Turning user inputs (strings and dicts) into validated multimodal items (REFERENCE.md §1.3 and §3)."""
from __future__ import annotations

import functools
import io
import numbers
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path, PurePath
from typing import Any, Callable, Sequence

import numpy as np
from PIL import Image

from .errors import Qwen3VLInputError, one_error
from .media import (
    IMAGE_EXTENSIONS,
    ImageSource,
    MediaPolicy,
    VideoSource,
    _Invalid,
    has_extension,
    naming_media,
    open_image,
    resolve_image,
    resolve_video,
)

ITEM_KEYS = frozenset({"text", "image", "video", "instruction", "fps", "max_frames"})
# Placeholders the processor expands into vision features: in user text they can only make encoding fail.
RESERVED_TOKENS = ("<|image_pad|>", "<|video_pad|>")


@dataclass
class Item:
    """One validated multimodal object. Content order in the prompt is always videos, images, texts."""

    texts: list[str] = field(default_factory=list)
    images: list[ImageSource] = field(default_factory=list)
    videos: list[VideoSource] = field(default_factory=list)
    instruction: str | None = None
    fps: float | None = None
    max_frames: int | None = None

    @property
    def is_empty(self) -> bool:
        return not (self.texts or self.images or self.videos)


def _as_list(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, (list, tuple)) else [value]


def _is_image_data(value: Any) -> bool:
    """True when bytes (or a seekable binary stream) hold an image that Pillow recognises from its header."""
    try:
        if isinstance(value, (bytes, bytearray, memoryview)):
            stream: Any = io.BytesIO(bytes(value))
        elif hasattr(value, "read") and hasattr(value, "seek"):
            position = value.tell()
            try:
                stream = io.BytesIO(value.read())
            finally:
                value.seek(position)
        else:
            return False
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            with open_image(stream):
                return True
    except Image.DecompressionBombError:
        return True  # an image (refused later, with the cause, when the frame is resolved)
    except Exception:  # not an image: a video file, or something unreadable (reported when resolved)
        return False


def _looks_like_frame(value: Any) -> bool:
    if isinstance(value, Image.Image):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim in (2, 3)
    if isinstance(value, (str, Path)):
        text = str(value)
        return text.startswith("data:image") or has_extension(text, IMAGE_EXTENSIONS)
    return _is_image_data(value)  # frames given as encoded bytes / BytesIO


def is_single_video(value: Any) -> bool:
    """The reference's `is_video_input`, extended to paths, bytes and arrays.

    A string, Path, bytes or [T, H, W, 3] array is one video; a list whose first element is a frame (PIL image,
    image array, image path, data:image URI, or encoded image bytes / BytesIO) is one video given as frames; any
    other list is several videos.
    """
    if isinstance(value, (str, Path, bytes, bytearray)) or hasattr(value, "read"):
        return True
    if isinstance(value, np.ndarray):
        return value.ndim == 4
    if isinstance(value, (list, tuple)):
        return bool(value) and _looks_like_frame(value[0])
    return False


def _check_text(text: str, what: str) -> None:
    """Refuse text the tokenizer cannot take: lone UTF-16 surrogates (e.g. from `json.loads('"\\ud83d"')`) and
    the reserved vision placeholders."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise _Invalid(f"{what} is not valid Unicode: {exc.reason} at character {exc.start}") from None
    for token in RESERVED_TOKENS:
        if token in text:
            raise _Invalid(f"{what} contains the reserved vision placeholder {token!r}")


def input_list(values: Any, refusal: str) -> list[Any]:
    """`values` as a list. One input where a list belongs is refused with `refusal` (a TypeError): a str, bytes,
    Path or dict is iterable too, and iterating it would embed or score its characters, bytes, parts or keys."""
    if isinstance(values, (str, bytes, bytearray, PurePath, dict)):
        raise TypeError(refusal)
    return list(values)


def official_item(raw: Any, instruction: bool = True) -> Any:
    """An input of the official `process()` APIs as the official code reads it: keys it does not know (an "id" kept
    next to the content) are ignored, and so is "instruction" where it reads none (the reranker's query and
    documents). Anything but a dict is left for `parse_item` to judge."""
    if not isinstance(raw, dict):
        return raw
    keys = ITEM_KEYS if instruction else ITEM_KEYS - {"instruction"}
    return {key: value for key, value in raw.items() if key in keys}


def check_instruction(instruction: Any, what: str = "instruction") -> None:
    """Refuse an instruction given for a whole call or model (not one item's) before any work: ValueError/TypeError."""
    if instruction is None:
        return
    if not isinstance(instruction, str):
        raise TypeError(f"{what} must be a str or None, got {type(instruction).__name__}")
    try:
        _check_text(instruction, what)
    except _Invalid as exc:
        raise ValueError(str(exc)) from None


def parse_item(raw: Any, policy: MediaPolicy, check_count: Callable[[int, int], None] | None = None) -> Item:
    """Validate one input and resolve its media. Raises _Invalid with the cause.

    `check_count(images, videos)` sees how many images and videos the item holds before any of them is opened or
    fetched, and raises _Invalid for an item that holds too many."""
    if isinstance(raw, str):
        _check_text(raw, "text")
        return Item(texts=[raw])
    if isinstance(raw, Image.Image):
        return Item(images=[resolve_image(raw, policy)])
    if not isinstance(raw, dict):
        raise _Invalid(f"unsupported input type {type(raw).__name__} (expected str or dict)")
    unknown = set(raw) - ITEM_KEYS
    if unknown:
        raise _Invalid(f"unknown key(s) {sorted(unknown)}; expected some of {sorted(ITEM_KEYS)}")

    texts = _as_list(raw.get("text"))
    for position, text in enumerate(texts):
        if not isinstance(text, str):
            raise _Invalid(f"text {position} is {type(text).__name__}, not str")
        _check_text(text, f"text {position}")

    image_values = _as_list(raw.get("image"))
    video_value = raw.get("video")
    if video_value is None:
        video_values: list = []
    elif is_single_video(video_value):
        video_values = [video_value]
    elif isinstance(video_value, (list, tuple)):
        if not video_value:
            # Upstream reads [] as "no video" and embeds the item as NULL; an empty list here is almost always a
            # video whose frames went missing, so it is refused rather than silently replaced.
            raise _Invalid("video is an empty list (no frames); leave the key out for an item without video")
        video_values = list(video_value)
    else:
        raise _Invalid(f"unsupported video type {type(video_value).__name__}")
    if check_count is not None:  # before any image or video is opened or fetched
        check_count(len(image_values), len(video_values))
    images = _resolved("image", image_values, lambda value: resolve_image(value, policy))
    videos = _resolved("video", video_values, lambda value: resolve_video(value, policy))

    instruction = raw.get("instruction")
    if instruction is not None and not isinstance(instruction, str):
        raise _Invalid(f"instruction is {type(instruction).__name__}, not str")
    if instruction:
        _check_text(instruction, "instruction")
    fps = raw.get("fps")
    if fps is not None and (not isinstance(fps, numbers.Real) or isinstance(fps, bool) or fps <= 0):
        raise _Invalid(f"fps must be a positive number, got {fps!r}")
    max_frames = raw.get("max_frames")
    if max_frames is not None and (not isinstance(max_frames, numbers.Integral) or max_frames < 2):
        raise _Invalid(f"max_frames must be an integer >= 2, got {max_frames!r}")
    if not (texts or images or videos) and ("image" in raw or "video" in raw):
        # Upstream embeds such an item as NULL; an image or video that is None here (a path column with a gap, a
        # `uris=[None]`) would come back as a vector of the word NULL, so it is refused rather than replaced.
        given = next(key for key in ("image", "video") if key in raw)
        raise _Invalid(f"{given} is {raw[given]!r} and the item has no other content; leave the key out for an "
                       "empty (NULL) item")
    # A blank instruction is no instruction, "" and "   " alike: the call's (or the default) applies.
    return Item(texts, images, videos, instruction if instruction and instruction.strip() else None,
                float(fps) if fps is not None else None, int(max_frames) if max_frames is not None else None)


def _resolved(kind: str, values: list[Any], resolve: Callable[[Any], Any]) -> list[Any]:
    """Each of `values` resolved in order; an error names the `kind` and its position in the item."""
    resolved = []
    for position, value in enumerate(values):
        with naming_media(kind, position):
            resolved.append(resolve(value))
    return resolved


def parse_items(
    raws: Sequence[Any], policy: MediaPolicy, role: str = "item", workers: int = 8,
    check_count: Callable[[int, int, int], None] | None = None,
) -> tuple[list[Item | None], list[Qwen3VLInputError]]:
    """Validate every input (concurrently: remote fetches overlap). Failed positions are None, with an error each.
    `check_count(position, images, videos)`: as parse_item's, for the input at `position`."""
    def one(position: int) -> Item | Qwen3VLInputError:
        try:
            return parse_item(raws[position], policy,
                              None if check_count is None else functools.partial(check_count, position))
        except _Invalid as exc:
            return Qwen3VLInputError(str(exc), index=position, role=role)

    if len(raws) > 1 and workers > 1:
        with ThreadPoolExecutor(max_workers=min(workers, len(raws))) as pool:
            results = list(pool.map(one, range(len(raws))))
    else:
        results = [one(position) for position in range(len(raws))]
    items = [r if isinstance(r, Item) else None for r in results]
    errors = [r for r in results if isinstance(r, Qwen3VLInputError)]
    return items, errors


def raise_bad_inputs(errors: list[Qwen3VLInputError], hint: str = "") -> None:
    """Raise one error for all of `errors` (in the caller's order): it names the first, lists the others' positions
    and holds them all in `.errors`; `hint` becomes a note on it (shown under the traceback)."""
    if not errors:
        return
    error = one_error(errors)
    if hint:
        error.add_note(hint)
    raise error
