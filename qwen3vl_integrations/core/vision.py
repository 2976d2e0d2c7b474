"""Vision preprocessing identical to the official implementation (qwen-vl-utils 0.0.14, REFERENCE.md §6).

Images and frame lists are handed (already decoded, as PIL images) to qwen-vl-utils' own `fetch_image` /
`fetch_video`, so resizing is bit-identical. Video *files* are decoded here (decord as upstream, PyAV as a
fallback) with upstream's frame sampling, then resized with upstream's per-frame budget — with `total_pixels`
applied, which the reference forgets for files (REFERENCE.md §11 #2, a deliberate deviation).
"""
from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any, Iterator

import torch
from qwen_vl_utils import vision_process as qvu
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .media import (FrameListSource, ImageSource, MediaPolicy, VideoFileSource, VideoSource, _Invalid,
                    open_video_container, sampled_positions)

PATCH_SIZE = 16
IMAGE_FACTOR = 32  # patch 16 x spatial merge 2
FRAME_FACTOR = 2
VIDEO_FRAME_MIN_PIXELS = qvu.VIDEO_MIN_TOKEN_NUM * IMAGE_FACTOR**2  # 131,072
VIDEO_FRAME_MAX_PIXELS = qvu.VIDEO_MAX_TOKEN_NUM * IMAGE_FACTOR**2  # 786,432
TOKENS_PER_GROUP_OVERHEAD = 8  # "<t.t seconds>" plus <|vision_start|> <|vision_end|>, for estimates only


@dataclass(frozen=True)
class VisionLimits:
    """Pixel and frame budgets (REFERENCE.md §2)."""

    min_pixels: int = 4096
    max_pixels: int = 1_843_200
    total_pixels: int = 7_864_320
    fps: float = 1.0
    max_frames: int = 64


@dataclass
class PreparedVideo:
    frames: torch.Tensor  # [T, C, H, W] float, already resized
    metadata: dict[str, Any]


# ------------------------------------------------------------------------------------------ images

def prepare_image(source: ImageSource, limits: VisionLimits, policy: MediaPolicy):
    """Decode and resize one image exactly as the reference does (RGBA on white, smart_resize, bicubic)."""
    image = source.open(policy)
    return qvu.fetch_image(
        {"image": image, "min_pixels": limits.min_pixels, "max_pixels": limits.max_pixels},
        image_patch_size=PATCH_SIZE,
    )


def image_tokens(width: int, height: int, limits: VisionLimits) -> int:
    """Visual tokens of one image after smart_resize (raises _Invalid for aspect ratios over 200, and for images so
    narrow that shrinking them under max_pixels leaves a side of no pixels)."""
    try:
        h, w = qvu.smart_resize(height, width, IMAGE_FACTOR, limits.min_pixels, limits.max_pixels)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    if not h or not w:
        # smart_resize floors each side of a shrunk image to the grid: the shorter one reaches 0 where
        # max_pixels < longer * 32 * 32 / shorter (the image's decoding then failed on a 0-pixel size).
        needed = math.ceil(max(width, height) * IMAGE_FACTOR**2 / min(width, height))
        raise _Invalid(f"a {width}x{height} image shrinks to {w}x{h} pixels under max_pixels={limits.max_pixels}, "
                       f"too narrow for its shorter side to keep a pixel: raise max_pixels to at least {needed} or "
                       "crop the image")
    return (h // IMAGE_FACTOR) * (w // IMAGE_FACTOR)


# A hair's breadth off the exact bounds below, which smart_resize's float arithmetic may miss by rounding.
_SLACK = 1 - 1e-9


def fewest_grid_tokens(min_pixels: int, max_pixels: float) -> int:
    """At most the visual tokens, (h // 32) * (w // 32), of every (h, w) = smart_resize(height, width, 32,
    min_pixels, max_pixels) that does not raise (aspect ratio at most MAX_RATIO): a lower bound, exact for the
    limits of images.

    A size kept or enlarged ends on at least `min_pixels` (its sides rounded to the grid, each at least one cell).
    A size shrunk under `max_pixels` has sides of a and p / a cells before flooring (p = max_pixels / 32², the
    shorter a >= sqrt(p / MAX_RATIO)): with a in [k, k + 1), at least k * floor(p / (k + 1)) cells, which is 0 where
    a side can fall under one cell."""
    grown = max(1, math.ceil(min_pixels / IMAGE_FACTOR**2))
    cells = max_pixels / IMAGE_FACTOR**2
    shortest = math.floor(math.sqrt(cells / qvu.MAX_RATIO) * _SLACK)
    shrunk = min(k * math.floor(cells * _SLACK / (k + 1))
                 for k in range(shortest, math.floor(math.sqrt(cells) / _SLACK) + 1))
    return min(grown, shrunk)


@functools.lru_cache(maxsize=64)
def fewest_image_tokens(limits: VisionLimits) -> int:
    """The fewest prompt tokens one image can take under `limits`: its visual tokens at the smallest size the
    limits allow, and <|vision_start|> <|vision_end|>. `image_tokens(width, height, limits) + 2` is never less."""
    return fewest_grid_tokens(limits.min_pixels, limits.max_pixels) + 2


# ------------------------------------------------------------------------------------------ videos

def frame_count(item_fps: float | None, item_max_frames: int | None, total_frames: int, video_fps: float,
                limits: VisionLimits) -> int:
    """Number of frames sampled from a file (qwen-vl-utils' smart_nframes with the reference's keys)."""
    ele = {"fps": item_fps or limits.fps, "max_frames": item_max_frames or limits.max_frames}
    try:
        return qvu.smart_nframes(ele, total_frames=total_frames, video_fps=video_fps)
    except (ValueError, AssertionError) as exc:
        raise _Invalid(f"video too short to sample: {exc}") from None


def _frame_pixel_cap(nframes: int, total_pixels: int) -> float:
    """Each frame's max_pixels when `nframes` frames share `total_pixels` (REFERENCE.md §6.5)."""
    return max(min(VIDEO_FRAME_MAX_PIXELS, total_pixels / nframes * FRAME_FACTOR), int(VIDEO_FRAME_MIN_PIXELS * 1.05))


def _frame_budget(nframes: int, height: int, width: int, total_pixels: int) -> tuple[int, int]:
    """Per-frame resize target under the total budget (REFERENCE.md §6.5)."""
    return qvu.smart_resize(height, width, IMAGE_FACTOR, VIDEO_FRAME_MIN_PIXELS,
                            _frame_pixel_cap(nframes, total_pixels))


def _downsample_frames(frames: list, max_frames: int) -> list:
    """Frame lists longer than the constructor's max_frames are sub-sampled (REFERENCE.md §3 step 6). Resolving
    did it already where the media policy has the same max_frames (the core objects' own)."""
    return [frames[position] for position in sampled_positions(len(frames), max_frames)]


# Frames decoded and resized at a time: the sampled frames at full size are never all held at once (64 frames of a
# 16 KB video of 2048x2048 held 1.8 GB; of 1080p, 2.7 GB in float32), only the resized ones. Each frame is resized
# on its own, so the result is the same.
RESIZE_CHUNK_FRAMES = 4


def _decord_chunks(reader: Any, indices: list[int]) -> Iterator[torch.Tensor]:
    """The sampled frames as uint8 [k, 3, H, W], a chunk at a time (decord applies the display rotation)."""
    for start in range(0, len(indices), RESIZE_CHUNK_FRAMES):
        yield torch.from_numpy(reader.get_batch(indices[start:start + RESIZE_CHUNK_FRAMES]).asnumpy()).permute(
            0, 3, 1, 2)


def _pyav_chunks(source: VideoFileSource, indices: list[int]) -> Iterator[torch.Tensor]:
    """The same from PyAV: frames at the sampled positions (increasing, repeats allowed), in order; where the file
    has fewer decodable frames than its header counts, the last one stands in for the rest, as decord does."""
    pending: list[Any] = []  # HxWx3 frames not yet handed out
    row = 0  # the next sampled position to find
    last = None
    with open_video_container(source.stream()) as container:
        for position, frame in enumerate(container.decode(video=0)):
            last = frame
            if indices[row] == position:  # only the sampled frames are converted (a 20 s clip: 3x faster)
                rgb = _upright_rgb(frame)
                while row < len(indices) and indices[row] == position:
                    pending.append(rgb)
                    row += 1
            while len(pending) >= RESIZE_CHUNK_FRAMES:
                yield _channels_first(pending[:RESIZE_CHUNK_FRAMES])
                del pending[:RESIZE_CHUNK_FRAMES]
            if row == len(indices):
                break
    if last is None:
        raise _Invalid("video has no decodable frames")
    pending += [_upright_rgb(last)] * (len(indices) - row)
    for start in range(0, len(pending), RESIZE_CHUNK_FRAMES):
        yield _channels_first(pending[start:start + RESIZE_CHUNK_FRAMES])


def _channels_first(frames: list[Any]) -> torch.Tensor:
    """HxWx3 uint8 frames as one [k, 3, H, W] tensor."""
    import numpy as np

    return torch.from_numpy(np.stack(frames)).permute(0, 3, 1, 2)


def _upright_rgb(frame: Any) -> Any:
    """A decoded frame as an HxWx3 uint8 array, turned as its display matrix says (a phone's portrait video), as
    decord returns it."""
    import numpy as np

    array = frame.to_ndarray(format="rgb24")
    turns = round(getattr(frame, "rotation", 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(array, k=turns)) if turns else array


def read_video_file(source: VideoFileSource, item_fps: float | None, item_max_frames: int | None,
                    limits: VisionLimits) -> PreparedVideo:
    """Sample frames like qwen-vl-utils' decord reader, then resize under `total_pixels`, a few frames at a time."""
    try:
        import decord  # noqa: F401

        have_decord = True
    except ImportError:
        have_decord = False
    resized: list[torch.Tensor] = []
    try:
        if have_decord:
            import decord

            reader = decord.VideoReader(source.stream())
            total, video_fps, backend = len(reader), reader.get_avg_fps(), "decord"
        else:
            total, video_fps, backend = source.total_frames, source.fps, "pyav"
        nframes = frame_count(item_fps, item_max_frames, total, video_fps, limits)
        indices = torch.linspace(0, total - 1, nframes).round().long().tolist()
        chunks = _decord_chunks(reader, indices) if have_decord else _pyav_chunks(source, indices)
        first: tuple[int, ...] = ()
        size = (0, 0)
        for chunk in chunks:
            if not first:  # the size from the frames, not the header: a rotated video's are turned
                first = tuple(chunk.shape[2:])
                size = _resized_frame_size(nframes, first[0], first[1], limits)
            elif tuple(chunk.shape[2:]) != first:  # as within a chunk: never squashed to the first frames' shape
                raise _Invalid(f"unreadable video: its frames change size ({first[1]}x{first[0]}, then "
                               f"{chunk.shape[3]}x{chunk.shape[2]})")
            resized.append(TF.resize(chunk, list(size), interpolation=InterpolationMode.BICUBIC, antialias=True))
    except _Invalid:
        raise
    except Exception as exc:  # decoder errors
        raise _Invalid(f"unreadable video: {exc}") from None
    metadata = {"fps": video_fps, "frames_indices": indices, "total_num_frames": total, "video_backend": backend}
    return PreparedVideo(torch.cat(resized).float(), metadata)


def _resized_frame_size(nframes: int, height: int, width: int, limits: VisionLimits) -> tuple[int, int]:
    try:
        return _frame_budget(nframes, height, width, limits.total_pixels)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None


def prepare_frame_list(source: FrameListSource, limits: VisionLimits, policy: MediaPolicy) -> PreparedVideo:
    """Frame lists go through qwen-vl-utils itself (its double resize and 2-fps fake metadata included)."""
    frames = [frame.open(policy) for frame in _downsample_frames(source.frames, limits.max_frames)]
    (video, metadata), _ = qvu.fetch_video(
        {"video": frames, "total_pixels": limits.total_pixels},
        image_patch_size=PATCH_SIZE, return_video_sample_fps=True, return_video_metadata=True,
    )
    return PreparedVideo(video, metadata)


def prepare_video(source: VideoSource, item_fps: float | None, item_max_frames: int | None,
                  limits: VisionLimits, policy: MediaPolicy) -> PreparedVideo:
    if isinstance(source, FrameListSource):
        return prepare_frame_list(source, limits, policy)
    return read_video_file(source, item_fps, item_max_frames, limits)


def video_tokens(source: VideoSource, item_fps: float | None, item_max_frames: int | None,
                 limits: VisionLimits, timestamps: bool = True) -> int:
    """Prompt tokens of one video: its special and vision tokens (exact), plus an estimate of the per-group
    timestamp text unless `timestamps` is False. Raises _Invalid."""
    try:
        if isinstance(source, FrameListSource):
            n = min(len(source.frames), limits.max_frames)
            nframes = math.ceil(n / FRAME_FACTOR) * FRAME_FACTOR
            # qwen-vl-utils first rounds each frame to multiples of 64 (its factor quirk, §6.4), then stacks the
            # frames: they must agree in size by then, or decoding would fail after the model work started.
            sizes = {qvu.smart_resize(frame.height, frame.width, 2 * IMAGE_FACTOR, 4 * (2 * IMAGE_FACTOR) ** 2,
                                      16384 * (2 * IMAGE_FACTOR) ** 2)
                     for frame in _downsample_frames(source.frames, limits.max_frames)}
            if len(sizes) > 1:
                shapes = ", ".join(f"{w}x{h}" for h, w in sorted(sizes))
                raise _Invalid(f"the frames of a video must have one size (after rounding to multiples of 64: "
                               f"{shapes})")
            height, width = sizes.pop()
        else:
            nframes = frame_count(item_fps, item_max_frames, source.total_frames, source.fps, limits)
            height, width = source.height, source.width
        new_h, new_w = _frame_budget(nframes, height, width, limits.total_pixels)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    if not new_h or not new_w:
        # As for images (image_tokens): each frame's share of total_pixels floors its shorter side to 0, and
        # decoding failed after the model work had begun.
        raise _Invalid(f"its {width}x{height} frames shrink to {new_w}x{new_h} pixels under total_pixels="
                       f"{limits.total_pixels} shared by {nframes} frames, too narrow for the shorter side to keep a "
                       "pixel: raise total_pixels, lower max_frames or fps, or crop the video")
    groups = nframes // FRAME_FACTOR
    per_group = (new_h // IMAGE_FACTOR) * (new_w // IMAGE_FACTOR) + 2  # pads plus <|vision_start|> <|vision_end|>
    if timestamps:
        per_group += TOKENS_PER_GROUP_OVERHEAD - 2
    return groups * per_group + 2  # the template's outer <|vision_start|> ... <|vision_end|>


@functools.lru_cache(maxsize=64)
def fewest_video_tokens(limits: VisionLimits) -> int:
    """The fewest prompt tokens one video (a file or frames) can take under `limits`: `video_tokens(...,
    timestamps=False)` is never less, whatever its frame count, size and fps.

    A video of n frames (n even, at least 2) takes n / 2 groups of (its frames' visual tokens + 2), + 2; the frames'
    pixel cap falls as n grows, down to a floor, while every group adds at least 2 tokens: past the n whose groups
    alone cost the fewest found, none can cost fewer."""
    least = None
    nframes = FRAME_FACTOR
    while least is None or (nframes // FRAME_FACTOR) * 2 + 2 < least:
        cap = _frame_pixel_cap(nframes, limits.total_pixels)
        tokens = (nframes // FRAME_FACTOR) * (fewest_grid_tokens(VIDEO_FRAME_MIN_PIXELS, cap) + 2) + 2
        least = tokens if least is None else min(least, tokens)
        nframes += FRAME_FACTOR
    return least
