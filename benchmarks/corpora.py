"""Deterministic benchmark inputs: texts of known token lengths, JPEG images of mixed sizes, videos, a mixed corpus.

Everything is generated locally from fixed seeds (no downloads), so two runs (and the baseline and our code
within one run) see exactly the same inputs.
"""
from __future__ import annotations

import dataclasses
import io
import math
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw

WORDS = (
    "the a of and to in is for on with as by at from this that it are was be or an which not have has "
    "cat dog red blue green yellow black white car house tree water sky sun book page picture photo video "
    "document table chart city road person man woman child animal food apple music story news paper report "
    "data model vector score rank small large big little new old good bad fast slow happy what which how when "
    "where who why find show me please about river mountain market energy policy system network school price "
    "history science language people world year time government company market result study method value"
).split()


@dataclass
class Sizes:
    """How much of each corpus to generate (full or --quick)."""

    texts: int = 256
    text_min: int = 10
    text_max: int = 2000
    images: int = 64
    image_min: int = 224
    image_max: int = 1344
    images_448: int = 64
    mixed_texts: int = 28
    mixed_images: int = 16
    mixed_image_texts: int = 10
    mixed_frame_videos: int = 5
    mixed_file_videos: int = 5
    video_frames: int = 16
    video_size: tuple[int, int] = (320, 240)
    rerank_docs: int = 64
    rerank_doc_min: int = 10
    rerank_doc_max: int = 1000
    rerank_image_min: int = 224
    rerank_image_max: int = 896
    queries: int = 64  # short queries embedded one call each (online latency)
    query_min: int = 8
    query_max: int = 32

    @classmethod
    def quick(cls) -> "Sizes":
        return cls(texts=12, text_min=10, text_max=200, images=6, image_min=64, image_max=256, images_448=4,
                   mixed_texts=4, mixed_images=2, mixed_image_texts=1, mixed_frame_videos=1, mixed_file_videos=1,
                   video_frames=4, video_size=(96, 64), rerank_docs=6, rerank_doc_min=10, rerank_doc_max=120,
                   rerank_image_min=64, rerank_image_max=192, queries=4)

    @classmethod
    def for_run(cls, quick: bool, device_type: str) -> "Sizes":
        """The sizes a benchmark run uses: quick ones, or full ones with more 448x448 images on a GPU."""
        if quick:
            return cls.quick()
        # 64 images keep a GPU busy for about a quarter of a second: too short to time its images per second.
        return cls(images_448=512) if device_type == "cuda" else cls()

    def with_texts(self, spec: str | None) -> "Sizes":
        """These sizes with embed_text's texts given as "N,MIN,MAX" (N texts of MIN to MAX tokens)."""
        return self._with_texts_of(spec, "texts", "text_min", "text_max")

    def with_rerank_docs(self, spec: str | None) -> "Sizes":
        """These sizes with the reranked text documents given as "N,MIN,MAX" (N texts of MIN to MAX tokens)."""
        return self._with_texts_of(spec, "rerank_docs", "rerank_doc_min", "rerank_doc_max")

    def _with_texts_of(self, spec: str | None, *fields: str) -> "Sizes":
        """These sizes with the three `fields` (count, shortest, longest) set from "N,MIN,MAX"; unchanged without."""
        if not spec:
            return self
        return dataclasses.replace(self, **dict(zip(fields, (int(n) for n in spec.split(",")), strict=True)))


@dataclass
class Corpora:
    texts: list[str]
    images: list[bytes]
    images_448: list[bytes]
    mixed: list[Any]
    query: str
    rerank_texts: list[str]
    rerank_images: list[Any]
    queries: list[str]
    notes: dict[str, Any] = field(default_factory=dict)


class TextMaker:
    """Texts with a chosen number of tokens under a tokenizer (words joined by spaces; counts are additive because
    the Qwen2 pre-tokenizer splits on ' word' chunks)."""

    def __init__(self, tokenizer: Any, seed: int) -> None:
        self.rng = random.Random(seed)
        self.cost = {w: len(tokenizer(" " + w, add_special_tokens=False)["input_ids"]) for w in WORDS}
        self.first = {w: len(tokenizer(w, add_special_tokens=False)["input_ids"]) for w in WORDS}

    def text(self, tokens: int) -> str:
        words: list[str] = []
        count = 0
        while count < tokens:
            word = self.rng.choice(WORDS)
            cost = self.cost[word] if words else self.first[word]
            if words and count + cost > tokens:
                break
            words.append(word)
            count += cost
        return " ".join(words)


def log_uniform_lengths(n: int, low: int, high: int, seed: int) -> list[int]:
    """`n` integers between `low` and `high`, log-uniformly spread (many short, few long), shuffled."""
    rng = random.Random(seed)
    if n == 1:
        return [high]
    values = [round(math.exp(math.log(low) + (math.log(high) - math.log(low)) * k / (n - 1))) for k in range(n)]
    rng.shuffle(values)
    return values


def synthetic_image(width: int, height: int, seed: int) -> Image.Image:
    """A deterministic RGB picture: a colour gradient with rectangles and discs."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float32)
    c0, c1 = rng.integers(0, 256, 3), rng.integers(0, 256, 3)
    t = (xx / max(width - 1, 1) + yy / max(height - 1, 1)) / 2
    pixels = (c0[None, None, :] * (1 - t[..., None]) + c1[None, None, :] * t[..., None]).astype(np.uint8)
    image = Image.fromarray(pixels, "RGB")
    draw = ImageDraw.Draw(image)
    for _ in range(int(rng.integers(4, 12))):
        x0, y0 = int(rng.integers(0, width)), int(rng.integers(0, height))
        x1, y1 = x0 + int(rng.integers(8, max(9, width // 3))), y0 + int(rng.integers(8, max(9, height // 3)))
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        (draw.rectangle if rng.random() < 0.5 else draw.ellipse)((x0, y0, x1, y1), fill=colour)
    return image


def jpeg(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=90)
    return buffer.getvalue()


def mixed_size_images(n: int, low: int, high: int, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return [jpeg(synthetic_image(rng.randint(low, high), rng.randint(low, high), seed * 1000 + k)) for k in range(n)]


def video_frames(count: int, size: tuple[int, int], seed: int) -> list[Image.Image]:
    """A square moving over a gradient."""
    width, height = size
    base = np.asarray(synthetic_image(width, height, seed))
    frames = []
    side = max(8, min(width, height) // 4)
    for i in range(count):
        pixels = base.copy()
        x0 = (i * (width - side)) // max(count - 1, 1)
        pixels[height // 3: height // 3 + side, x0: x0 + side] = 255
        frames.append(Image.fromarray(pixels, "RGB"))
    return frames


def write_mp4(path: Path, frames: list[Image.Image], rate: int = 8) -> bool:
    """Write frames as an h264 mp4 with PyAV; False when PyAV is not installed."""
    try:
        import av
    except ImportError:
        return False
    width, height = frames[0].size
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for frame in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.asarray(frame), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return True


def build_corpora(tokenizer: Any, sizes: Sizes, media_dir: Path, seed: int = 0) -> Corpora:
    """All benchmark inputs. `media_dir` receives the mp4 files of the mixed corpus."""
    maker = TextMaker(tokenizer, seed)
    texts = [maker.text(n) for n in log_uniform_lengths(sizes.texts, sizes.text_min, sizes.text_max, seed + 1)]
    images = mixed_size_images(sizes.images, sizes.image_min, sizes.image_max, seed + 2)
    images_448 = [jpeg(synthetic_image(448, 448, seed * 7919 + 3 + k)) for k in range(sizes.images_448)]

    mixed: list[Any] = []
    mixed += [maker.text(n) for n in log_uniform_lengths(sizes.mixed_texts, sizes.text_min, sizes.text_max,
                                                         seed + 4)]
    mixed += [{"image": data} for data in mixed_size_images(sizes.mixed_images, sizes.image_min, sizes.image_max,
                                                           seed + 5)]
    mixed += [{"image": data, "text": maker.text(n)} for data, n in zip(
        mixed_size_images(sizes.mixed_image_texts, sizes.image_min, sizes.image_max, seed + 6),
        log_uniform_lengths(sizes.mixed_image_texts, 8, 64, seed + 7))]
    mixed += [{"video": video_frames(sizes.video_frames, sizes.video_size, seed + 100 + k)}
              for k in range(sizes.mixed_frame_videos)]
    file_videos = 0
    media_dir.mkdir(parents=True, exist_ok=True)
    for k in range(sizes.mixed_file_videos):
        frames = video_frames(sizes.video_frames, sizes.video_size, seed + 200 + k)
        path = media_dir / f"clip{k}.mp4"
        if path.exists() or write_mp4(path, frames):
            mixed.append({"video": str(path)})
            file_videos += 1
        else:  # no PyAV: the same clip as a frame list, so the corpus keeps its size
            mixed.append({"video": frames})
    random.Random(seed + 8).shuffle(mixed)

    query = "find a picture of a red car parked in front of a white house near the river"
    rerank_texts = [maker.text(n) for n in log_uniform_lengths(sizes.rerank_docs, sizes.rerank_doc_min,
                                                               sizes.rerank_doc_max, seed + 9)]
    rerank_images = [{"image": data} for data in mixed_size_images(sizes.rerank_docs, sizes.rerank_image_min,
                                                                  sizes.rerank_image_max, seed + 10)]
    queries = [maker.text(n) for n in log_uniform_lengths(sizes.queries, sizes.query_min, sizes.query_max, seed + 11)]
    notes = {"text_lengths": f"log-uniform {sizes.text_min}-{sizes.text_max} tokens",
             "image_sizes": f"{sizes.image_min}-{sizes.image_max} px per side, JPEG bytes",
             "mixed": (f"{sizes.mixed_texts} texts, {sizes.mixed_images} images, {sizes.mixed_image_texts} image+text, "
                       f"{sizes.mixed_frame_videos} frame-list videos, {file_videos} mp4 videos "
                       f"({sizes.video_frames} frames {sizes.video_size[0]}x{sizes.video_size[1]})"),
             "rerank_docs": (f"{sizes.rerank_docs} texts of {sizes.rerank_doc_min}-{sizes.rerank_doc_max} tokens; "
                             f"{sizes.rerank_docs} images of {sizes.rerank_image_min}-{sizes.rerank_image_max} px")}
    notes["queries"] = f"{sizes.queries} texts of {sizes.query_min}-{sizes.query_max} tokens, one call each"
    return Corpora(texts, images, images_448, mixed, query, rerank_texts, rerank_images, queries, notes)
