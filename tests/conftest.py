"""Shared pytest fixtures: tiny random Qwen3-VL checkpoints, sample media, and core objects built on them.

Everything is built locally, once per test session; nothing is downloaded.
Other test modules may ADD fixtures at the end of this file.
"""
from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from pathlib import Path  # noqa: E402

import pytest  # noqa: E402

# Pixel budgets of the tiny core objects: 4 to 64 visual tokens per image, 256 per video, at most 8 frames.
TINY_CORE_KWARGS = dict(
    device="cpu",
    min_pixels=4 * 32 * 32,
    max_pixels=64 * 32 * 32,
    total_pixels=256 * 32 * 32,
    max_frames=8,
)


@pytest.fixture(scope="session")
def tiny_embedding_path(tmp_path_factory) -> Path:
    """A tiny random Qwen3-VL checkpoint whose tokenizer appends <|endoftext|> (like Qwen3-VL-Embedding)."""
    from qwen3vl_integrations.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-embedding"), kind="embedding", seed=0)


@pytest.fixture(scope="session")
def tiny_reranker_path(tmp_path_factory) -> Path:
    """A tiny random Qwen3-VL checkpoint whose tokenizer appends nothing (like Qwen3-VL-Reranker)."""
    from qwen3vl_integrations.testing import build_tiny_checkpoint

    return build_tiny_checkpoint(tmp_path_factory.mktemp("tiny-reranker"), kind="reranker", seed=0)


def _write_mp4(path: Path, *, width: int = 96, height: int = 64, frames: int = 16, rate: int = 8) -> None:
    """A 2 s, 16-frame clip (libx264 through PyAV): a white square moving over a colour gradient."""
    import av
    import numpy as np

    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width = width
        stream.height = height
        stream.pix_fmt = "yuv420p"
        for i in range(frames):
            rgb = np.zeros((height, width, 3), dtype=np.uint8)
            rgb[..., 0] = (xx * 255 // (width - 1)).astype(np.uint8)
            rgb[..., 1] = (yy * 255 // (height - 1)).astype(np.uint8)
            rgb[..., 2] = (i * 255 // max(frames - 1, 1))
            x0 = (i * (width - 16)) // max(frames - 1, 1)
            rgb[24:40, x0 : x0 + 16] = 255
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():  # flush the encoder
            container.mux(packet)


@pytest.fixture(scope="session")
def media_dir(tmp_path_factory) -> Path:
    """A folder of small media files.

    red.png 160x120 RGB (red with a white rectangle and a blue disc), blue.jpg 224x224 RGB, wide.png 300x100 RGB,
    rgba.png 64x64 RGBA (transparent corners), gray.png 80x60 mode L, doc.txt (short text),
    clip.mp4 (2 s, 16 frames at 8 fps, 96x64, h264), broken.png (not an image).
    """
    from PIL import Image, ImageDraw

    folder = tmp_path_factory.mktemp("media")

    red = Image.new("RGB", (160, 120), (220, 20, 30))
    draw = ImageDraw.Draw(red)
    draw.rectangle((20, 20, 70, 60), fill=(255, 255, 255))
    draw.ellipse((90, 50, 140, 100), fill=(20, 40, 200))
    red.save(folder / "red.png")

    blue = Image.new("RGB", (224, 224), (30, 60, 210))
    ImageDraw.Draw(blue).polygon([(112, 20), (200, 200), (24, 200)], fill=(250, 220, 40))
    blue.save(folder / "blue.jpg", quality=90)

    wide = Image.new("RGB", (300, 100), (40, 160, 60))
    draw = ImageDraw.Draw(wide)
    for x in range(0, 300, 40):
        draw.rectangle((x, 30, x + 20, 70), fill=(240, 240, 240))
    wide.save(folder / "wide.png")

    rgba = Image.new("RGBA", (64, 64), (0, 0, 0, 0))
    ImageDraw.Draw(rgba).ellipse((8, 8, 56, 56), fill=(200, 30, 160, 255))
    rgba.save(folder / "rgba.png")

    gray = Image.linear_gradient("L").resize((80, 60))
    gray.save(folder / "gray.png")

    (folder / "doc.txt").write_text(
        "A red car is parked in front of a white house.\nThe sky is blue and the sun is out.\n", encoding="utf-8"
    )
    (folder / "broken.png").write_bytes(b"this is not a png file\x00\x01\x02")
    _write_mp4(folder / "clip.mp4")
    return folder


@pytest.fixture
def tiny_core_kwargs() -> dict:
    """The options of `tiny_embedder` / `tiny_reranker` (a fresh copy; tests may pop from it)."""
    return dict(TINY_CORE_KWARGS)


@pytest.fixture(scope="session")
def tiny_embedder(tiny_embedding_path):
    """A core Qwen3VLEmbedder on the tiny embedding checkpoint, with small pixel budgets, on CPU."""
    from qwen3vl_integrations import Qwen3VLEmbedder

    return Qwen3VLEmbedder(model_name_or_path=str(tiny_embedding_path), **TINY_CORE_KWARGS)


@pytest.fixture(scope="session")
def tiny_reranker(tiny_reranker_path):
    """A core Qwen3VLReranker on the tiny reranker checkpoint, with small pixel budgets, on CPU."""
    from qwen3vl_integrations import Qwen3VLReranker

    return Qwen3VLReranker(model_name_or_path=str(tiny_reranker_path), **TINY_CORE_KWARGS)


@pytest.fixture
def lever_outputs(media_dir):
    """A function of (embedder, reranker): vectors of texts and images (one batch padded), and scores of text and
    image documents with and without the cached query part: what a switch of the core must leave unchanged."""
    items = ["a red car in front of a white house", {"image": str(media_dir / "red.png")},
             {"text": "a picture", "image": str(media_dir / "gray.png")}, "the sky is blue " * 9, "b"]
    documents = ["a red car", {"image": str(media_dir / "red.png")}, "the sky is blue and the sun is out", "x"]

    def outputs(embedder, reranker) -> list:
        scores = []
        for share in (False, True):
            reranker.share_query_prefix = share
            scores.append(reranker.score("which car is red?", documents))
        return [embedder.embed(items), *scores]

    return outputs


@pytest.fixture(scope="session")
def deep_paths(tmp_path_factory) -> dict[str, Path]:
    """Tiny checkpoints ("embedding", "reranker") with 4 language layers. The tiny size adds vision features after
    layers 0 and 1, so only a deeper model may run its last layer pooled for image and video prompts; and layers 0
    to 2 run the same code, which compiled layers must share."""
    from qwen3vl_integrations.testing import build_random_checkpoint

    return {kind: build_random_checkpoint(tmp_path_factory.mktemp(f"deep-{kind}"), "tiny", kind, "float32",
                                          text_layers=4)
            for kind in ("embedding", "reranker")}
