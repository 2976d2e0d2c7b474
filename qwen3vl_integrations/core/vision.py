"""Vision preprocessing identical to the official implementation (qwen-vl-utils 0.0.14, REFERENCE.md §6).

Images and frame lists are handed (already decoded, as PIL images) to qwen-vl-utils' own `fetch_image` /
`fetch_video`, so resizing is bit-identical. Video *files* are decoded here (decord as upstream, PyAV as a
fallback) with upstream's frame sampling, then resized with upstream's per-frame budget — with `total_pixels`
applied, which the reference forgets for files (REFERENCE.md §11 #2, a deliberate deviation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
from qwen_vl_utils import vision_process as qvu
from torchvision.transforms import InterpolationMode
from torchvision.transforms import functional as TF

from .media import FrameListSource, ImageSource, MediaPolicy, VideoFileSource, VideoSource, _Invalid

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
    """Visual tokens of one image after smart_resize (raises _Invalid for aspect ratios over 200)."""
    try:
        h, w = qvu.smart_resize(height, width, IMAGE_FACTOR, limits.min_pixels, limits.max_pixels)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    return (h // IMAGE_FACTOR) * (w // IMAGE_FACTOR)


# ------------------------------------------------------------------------------------------ videos

def frame_count(item_fps: float | None, item_max_frames: int | None, total_frames: int, video_fps: float,
                limits: VisionLimits) -> int:
    """Number of frames sampled from a file (qwen-vl-utils' smart_nframes with the reference's keys)."""
    ele = {"fps": item_fps or limits.fps, "max_frames": item_max_frames or limits.max_frames}
    try:
        return qvu.smart_nframes(ele, total_frames=total_frames, video_fps=video_fps)
    except (ValueError, AssertionError) as exc:
        raise _Invalid(f"video too short to sample: {exc}") from None


def _frame_budget(nframes: int, height: int, width: int, total_pixels: int) -> tuple[int, int]:
    """Per-frame resize target under the total budget (REFERENCE.md §6.5)."""
    max_pixels = max(min(VIDEO_FRAME_MAX_PIXELS, total_pixels / nframes * FRAME_FACTOR),
                     int(VIDEO_FRAME_MIN_PIXELS * 1.05))
    return qvu.smart_resize(height, width, IMAGE_FACTOR, VIDEO_FRAME_MIN_PIXELS, max_pixels)


def _downsample_frames(frames: list, max_frames: int) -> list:
    """Frame lists longer than the constructor's max_frames are sub-sampled (REFERENCE.md §3 step 6)."""
    if len(frames) <= max_frames:
        return frames
    import numpy as np

    return [frames[int(i)] for i in np.linspace(0, len(frames) - 1, max_frames, dtype=int)]


RESIZE_CHUNK_FRAMES = 4


def _read_frames_pyav(source: VideoFileSource, indices: list[int]) -> torch.Tensor:
    import av
    import numpy as np

    rows_of: dict[int, list[int]] = {}
    for row, index in enumerate(indices):
        rows_of.setdefault(index, []).append(row)
    frames = None  # [T, H, W, 3], filled in place: one copy of the sampled frames
    filled = np.zeros(len(indices), dtype=bool)
    last = None
    with av.open(source.stream()) as container:
        for position, frame in enumerate(container.decode(video=0)):
            last = frame
            if position in rows_of:  # only the sampled frames are converted (a 20 s clip: 3x faster)
                rgb = _upright_rgb(frame)
                if frames is None:
                    frames = np.empty((len(indices), *rgb.shape), dtype=np.uint8)
                frames[rows_of[position]] = rgb
                filled[rows_of[position]] = True
            if position >= indices[-1]:
                break
    if last is None:
        raise _Invalid("video has no decodable frames")
    if not filled.all():  # fewer decodable frames than packets: reuse the last one
        rgb = _upright_rgb(last)
        if frames is None:
            frames = np.empty((len(indices), *rgb.shape), dtype=np.uint8)
        frames[~filled] = rgb
    return torch.from_numpy(frames).permute(0, 3, 1, 2)


def _upright_rgb(frame: Any) -> Any:
    """A decoded frame as an HxWx3 uint8 array, turned as its display matrix says (a phone's portrait video), as
    decord returns it."""
    import numpy as np

    array = frame.to_ndarray(format="rgb24")
    turns = round(getattr(frame, "rotation", 0) / 90) % 4
    return np.ascontiguousarray(np.rot90(array, k=turns)) if turns else array


def read_video_file(source: VideoFileSource, item_fps: float | None, item_max_frames: int | None,
                    limits: VisionLimits) -> PreparedVideo:
    """Sample frames like qwen-vl-utils' decord reader, then resize under `total_pixels`."""
    try:
        import decord  # noqa: F401

        have_decord = True
    except ImportError:
        have_decord = False
    try:
        if have_decord:
            import decord

            reader = decord.VideoReader(source.stream())
            total, video_fps = len(reader), reader.get_avg_fps()
            nframes = frame_count(item_fps, item_max_frames, total, video_fps, limits)
            indices = torch.linspace(0, total - 1, nframes).round().long().tolist()
            video = torch.from_numpy(reader.get_batch(indices).asnumpy()).permute(0, 3, 1, 2)
            backend = "decord"
        else:
            total, video_fps = source.total_frames, source.fps
            nframes = frame_count(item_fps, item_max_frames, total, video_fps, limits)
            indices = torch.linspace(0, total - 1, nframes).round().long().tolist()
            video = _read_frames_pyav(source, indices)
            backend = "pyav"
    except _Invalid:
        raise
    except Exception as exc:  # decoder errors
        raise _Invalid(f"unreadable video: {exc}") from None
    height, width = video.shape[2], video.shape[3]
    try:
        new_h, new_w = _frame_budget(video.shape[0], height, width, limits.total_pixels)
    except ValueError as exc:
        raise _Invalid(str(exc)) from None
    # In chunks: the resize works in float32 on whole frames (64 frames of 1080p: 1.5 GB at once); each frame is
    # resized on its own, so the result is the same.
    frames = torch.cat([TF.resize(video[start:start + RESIZE_CHUNK_FRAMES], [new_h, new_w],
                                  interpolation=InterpolationMode.BICUBIC, antialias=True)
                        for start in range(0, video.shape[0], RESIZE_CHUNK_FRAMES)]).float()
    metadata = {"fps": video_fps, "frames_indices": indices, "total_num_frames": total, "video_backend": backend}
    return PreparedVideo(frames, metadata)


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
    groups = nframes // FRAME_FACTOR
    per_group = (new_h // IMAGE_FACTOR) * (new_w // IMAGE_FACTOR) + 2  # pads plus <|vision_start|> <|vision_end|>
    if timestamps:
        per_group += TOKENS_PER_GROUP_OVERHEAD - 2
    return groups * per_group + 2  # the template's outer <|vision_start|> ... <|vision_end|>
