"""Deterministic sample media for the demo, the cookbook and the tests (no downloads).

``generate_sample_data(out_dir)`` writes a small folder of pictures with clear content, short text documents (some
describe the pictures, some are about unrelated topics) and two short videos. Everything is drawn with PIL and
encoded with PyAV (libx264), so the same code gives the same files everywhere, and a real Qwen3-VL model ranks
them sensibly: "a red circle" should find ``red_circle.png``, "a ball rolling across grass" ``ball_rolling.mp4``.

Command line::

    python -m qwen3vl_integrations.sample_data OUT_DIR [--no-video] [--force]
"""
from __future__ import annotations

import argparse
import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
from PIL import Image, ImageDraw, ImageFont

__all__ = [
    "SampleFile",
    "SAMPLE_FILES",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "TEXT_EXTENSIONS",
    "generate_sample_data",
    "main",
]

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".bmp", ".webp", ".tif", ".tiff")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v")
TEXT_EXTENSIONS = (".txt", ".md")

WIDTH, HEIGHT = 320, 240
VIDEO_FPS = 8
VIDEO_SECONDS = 3


@dataclass(frozen=True)
class SampleFile:
    """One generated file: its name, modality ("image", "text", "video") and what it shows."""

    name: str
    modality: str
    description: str


# --------------------------------------------------------------------------------------------------------------
# drawing helpers


def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 ships a scalable default font
    except TypeError:  # pragma: no cover - very old Pillow
        return ImageFont.load_default()


def _text_centered(draw: ImageDraw.ImageDraw, xy: tuple[float, float], text: str, size: int, fill) -> None:
    font = _font(size)
    left, top, right, bottom = draw.textbbox((0, 0), text, font=font)
    draw.text((xy[0] - (right - left) / 2 - left, xy[1] - (bottom - top) / 2 - top), text, font=font, fill=fill)


def _vertical_gradient(width: int, height: int, top: tuple[int, int, int], bottom: tuple[int, int, int]) -> np.ndarray:
    t = np.linspace(0.0, 1.0, height, dtype=np.float64)[:, None, None]
    a = np.asarray(top, dtype=np.float64)[None, None, :]
    b = np.asarray(bottom, dtype=np.float64)[None, None, :]
    rows = (a * (1 - t) + b * t).round().astype(np.uint8)
    return np.repeat(rows, width, axis=1)


def _blank(color=(255, 255, 255)) -> Image.Image:
    return Image.new("RGB", (WIDTH, HEIGHT), color)


# --------------------------------------------------------------------------------------------------------------
# pictures


def red_circle() -> Image.Image:
    img = _blank()
    d = ImageDraw.Draw(img)
    cx, cy, r = WIDTH / 2, HEIGHT / 2, 85
    d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(220, 20, 30), outline=(150, 0, 10), width=3)
    return img


def blue_square() -> Image.Image:
    img = _blank()
    d = ImageDraw.Draw(img)
    s = 160
    x0, y0 = (WIDTH - s) // 2, (HEIGHT - s) // 2
    d.rectangle((x0, y0, x0 + s, y0 + s), fill=(25, 60, 210), outline=(10, 30, 140), width=3)
    return img


def green_triangle() -> Image.Image:
    img = _blank()
    d = ImageDraw.Draw(img)
    d.polygon([(WIDTH / 2, 30), (WIDTH / 2 - 100, HEIGHT - 35), (WIDTH / 2 + 100, HEIGHT - 35)],
              fill=(30, 170, 60), outline=(10, 110, 30))
    return img


def bar_chart() -> Image.Image:
    img = _blank()
    d = ImageDraw.Draw(img)
    _text_centered(d, (WIDTH / 2, 16), "Quarterly sales 2024 (million $)", 15, (20, 20, 20))
    x_axis, y_axis_top, left = HEIGHT - 30, 40, 40
    d.line((left, y_axis_top, left, x_axis), fill=(0, 0, 0), width=2)
    d.line((left, x_axis, WIDTH - 15, x_axis), fill=(0, 0, 0), width=2)
    values = [("Q1", 12), ("Q2", 19), ("Q3", 15), ("Q4", 26)]
    colors = [(66, 133, 244), (219, 68, 55), (244, 180, 0), (15, 157, 88)]
    vmax = 30
    for tick in range(0, vmax + 1, 10):
        y = x_axis - (x_axis - y_axis_top) * tick / vmax
        d.line((left - 4, y, left, y), fill=(0, 0, 0), width=1)
        d.text((8, y - 6), str(tick), font=_font(11), fill=(0, 0, 0))
    bar_w, gap = 44, 22
    for i, ((label, v), c) in enumerate(zip(values, colors)):
        x0 = left + gap + i * (bar_w + gap)
        y0 = x_axis - (x_axis - y_axis_top) * v / vmax
        d.rectangle((x0, y0, x0 + bar_w, x_axis - 1), fill=c)
        _text_centered(d, (x0 + bar_w / 2, y0 - 9), str(v), 12, (0, 0, 0))
        _text_centered(d, (x0 + bar_w / 2, x_axis + 13), label, 13, (0, 0, 0))
    return img


def slide() -> Image.Image:
    img = Image.fromarray(_vertical_gradient(WIDTH, HEIGHT, (18, 40, 90), (40, 80, 160)))
    d = ImageDraw.Draw(img)
    d.rectangle((0, 0, WIDTH, 8), fill=(250, 190, 40))
    _text_centered(d, (WIDTH / 2, 62), "Ocean Cleanup", 40, (255, 255, 255))
    _text_centered(d, (WIDTH / 2, 104), "Project kickoff - March 2025", 16, (250, 210, 120))
    bullets = ["Remove plastic from the coast", "Volunteers every Saturday", "Goal: 10 tonnes this year"]
    for i, b in enumerate(bullets):
        y = 140 + i * 26
        d.ellipse((34, y + 5, 42, y + 13), fill=(250, 190, 40))
        d.text((52, y), b, font=_font(16), fill=(235, 240, 255))
    return img


def _sunset_frame(darkness: float, sun_height: float) -> Image.Image:
    """A beach at sunset. ``darkness`` in [0, 1] dims the sky, ``sun_height`` is the sun centre's y (pixels)."""
    horizon, shore = 150, 190
    sky_top = np.array([70, 40, 130]) * (1 - darkness) + np.array([8, 8, 30]) * darkness
    sky_bottom = np.array([255, 150, 60]) * (1 - darkness) + np.array([60, 30, 50]) * darkness
    arr = np.empty((HEIGHT, WIDTH, 3), dtype=np.uint8)
    arr[:horizon] = _vertical_gradient(WIDTH, horizon, tuple(sky_top), tuple(sky_bottom))
    img = Image.fromarray(arr)
    d = ImageDraw.Draw(img)
    sun_rgb = np.array([255, 225, 90]) * (1 - 0.5 * darkness) + np.array([200, 70, 40]) * 0.5 * darkness
    sun = tuple(int(v) for v in sun_rgb)
    r = 28
    d.ellipse((WIDTH * 0.62 - r, sun_height - r, WIDTH * 0.62 + r, sun_height + r), fill=sun)
    # the sea hides the lower part of the sun
    sea_a = np.array([30, 70, 120]) * (1 - darkness) + np.array([5, 10, 30]) * darkness
    sea_b = np.array([20, 50, 95]) * (1 - darkness) + np.array([3, 6, 20]) * darkness
    sea = Image.fromarray(_vertical_gradient(WIDTH, shore - horizon, tuple(sea_a), tuple(sea_b)))
    img.paste(sea, (0, horizon))
    # a shimmering reflection of the sun on the water
    for i in range(6):
        y = horizon + 4 + i * 6
        half = 22 - i * 3
        d.line((WIDTH * 0.62 - half, y, WIDTH * 0.62 + half, y), fill=sun, width=2)
    sand_a = np.array([235, 200, 140]) * (1 - 0.7 * darkness)
    sand_b = np.array([210, 170, 110]) * (1 - 0.7 * darkness)
    sand = Image.fromarray(_vertical_gradient(WIDTH, HEIGHT - shore, tuple(sand_a), tuple(sand_b)))
    img.paste(sand, (0, shore))
    # a palm tree silhouette on the left
    d.line((40, HEIGHT - 20, 55, 95), fill=(40, 25, 15), width=6)
    for dx, dy in [(-40, 10), (40, 15), (-30, -20), (35, -15), (0, -30)]:
        d.line((55, 95, 55 + dx, 95 + dy), fill=(20, 60, 20), width=5)
    return img


def sunset_beach() -> Image.Image:
    return _sunset_frame(0.0, 128.0)


# --------------------------------------------------------------------------------------------------------------
# videos


def _ball_frames() -> list[np.ndarray]:
    n = VIDEO_FPS * VIDEO_SECONDS
    frames = []
    for i in range(n):
        img = Image.fromarray(_vertical_gradient(WIDTH, HEIGHT, (110, 170, 235), (190, 220, 250)))
        d = ImageDraw.Draw(img)
        grass = Image.fromarray(_vertical_gradient(WIDTH, HEIGHT - 120, (60, 160, 60), (30, 110, 35)))
        img.paste(grass, (0, 120))
        for x in range(0, WIDTH, 40):  # mowing stripes
            d.rectangle((x, 120, x + 19, HEIGHT), fill=(55, 150, 55))
        r = 24
        cx = 32 + (WIDTH - 64) * i / (n - 1)
        cy = 178
        d.ellipse((cx - r + 6, cy + r - 6, cx + r + 6, cy + r + 4), fill=(25, 80, 25))  # shadow
        d.ellipse((cx - r, cy - r, cx + r, cy + r), fill=(250, 250, 250), outline=(30, 30, 30), width=2)
        # football patches: a central pentagon and five around it, turning as the ball rolls to the right
        angle = (cx - 32) / r
        for k in range(6):
            if k == 0:
                px, py, pr = cx, float(cy), 7.5
            else:
                a = angle + k * 2 * math.pi / 5
                px, py, pr = cx + 17 * math.cos(a), cy + 17 * math.sin(a), 5.5
            pts = [(px + pr * math.cos(angle + j * 2 * math.pi / 5), py + pr * math.sin(angle + j * 2 * math.pi / 5))
                   for j in range(5)]
            d.polygon(pts, fill=(25, 25, 25))
        frames.append(np.asarray(img))
    return frames


def _sunset_frames() -> list[np.ndarray]:
    n = VIDEO_FPS * VIDEO_SECONDS
    return [np.asarray(_sunset_frame(i / (n - 1), 110 + 45 * i / (n - 1))) for i in range(n)]


def write_video(path: str | Path, frames: list[np.ndarray], fps: int = VIDEO_FPS) -> Path:
    """Encode RGB frames (H, W, 3 uint8, even sizes) as H.264 mp4 with PyAV."""
    import av

    path = Path(path)
    height, width = frames[0].shape[:2]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        stream.options = {"crf": "20"}
        stream.thread_count = 1  # single-threaded x264: byte-identical output
        for arr in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(np.ascontiguousarray(arr), format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# --------------------------------------------------------------------------------------------------------------
# texts

TEXTS: dict[str, str] = {
    "shapes_lesson.txt": (
        "Geometry for beginners. A circle is a round shape whose points are all the same distance from its centre. "
        "A square has four equal sides and four right angles. A triangle has three sides and three corners. "
        "In today's worksheet the circle is painted red, the square blue and the triangle green."
    ),
    "quarterly_sales.txt": (
        "Sales report for 2024. Revenue grew in every quarter except the third: 12 million dollars in Q1, "
        "19 million in Q2, 15 million in Q3 and a record 26 million in Q4. The bar chart in the appendix "
        "compares the four quarters."
    ),
    "beach_holiday.txt": (
        "Our last evening at the beach: the sun went down slowly over the sea, the sky turned orange and purple, "
        "and a palm tree stood black against the sunset while the sand cooled under our feet."
    ),
    "sourdough_recipe.txt": (
        "How to bake sourdough bread. Mix 500 g of flour with 350 g of water and 100 g of active starter, rest the "
        "dough for an hour, add 10 g of salt, fold it every 30 minutes, proof it overnight in the fridge and bake "
        "it in a hot Dutch oven for 45 minutes."
    ),
    "jupiter_facts.txt": (
        "Jupiter is the largest planet in the Solar System, a gas giant made mostly of hydrogen and helium. "
        "Its Great Red Spot is a storm larger than the Earth, and it has at least 95 known moons."
    ),
}


TEXT_DESCRIPTIONS: dict[str, str] = {
    "shapes_lesson.txt": "a geometry lesson about circles, squares and triangles",
    "quarterly_sales.txt": "a sales report for 2024 (the numbers of the bar chart)",
    "beach_holiday.txt": "a holiday memory of a sunset at the beach",
    "sourdough_recipe.txt": "a sourdough bread recipe (unrelated to the pictures)",
    "jupiter_facts.txt": "facts about the planet Jupiter (unrelated to the pictures)",
}

# --------------------------------------------------------------------------------------------------------------
# the catalogue

_IMAGES: dict[str, tuple[Callable[[], Image.Image], str]] = {
    "red_circle.png": (red_circle, "a red circle on a white background"),
    "blue_square.png": (blue_square, "a blue square on a white background"),
    "green_triangle.png": (green_triangle, "a green triangle on a white background"),
    "bar_chart.png": (bar_chart, "a bar chart of quarterly sales in 2024"),
    "slide_ocean_cleanup.png": (slide, "a presentation slide titled 'Ocean Cleanup'"),
    "sunset_beach.jpg": (sunset_beach, "a sunset over the sea seen from a beach with a palm tree"),
}
_VIDEOS: dict[str, tuple[Callable[[], list[np.ndarray]], str]] = {
    "ball_rolling.mp4": (_ball_frames, "a white ball rolling across a green grass field (3 s)"),
    "sunset_fading.mp4": (_sunset_frames, "a sunset over the sea getting darker (3 s)"),
}

SAMPLE_FILES: tuple[SampleFile, ...] = (
    *(SampleFile(name, "image", desc) for name, (_, desc) in _IMAGES.items()),
    *(SampleFile(name, "text", TEXT_DESCRIPTIONS[name]) for name in TEXTS),
    *(SampleFile(name, "video", desc) for name, (_, desc) in _VIDEOS.items()),
)


def generate_sample_data(out_dir: str | Path, *, video: bool = True, overwrite: bool = False) -> list[Path]:
    """Write the sample folder into ``out_dir`` (created if needed) and return the paths written, sorted.

    Existing files are kept unless ``overwrite`` is set (the content is deterministic, so this only saves time).
    ``video=False`` skips the two mp4 files (PyAV is then not needed).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    for name, (draw, _) in _IMAGES.items():
        path = out / name
        if overwrite or not path.exists():
            img = draw()
            if path.suffix.lower() in (".jpg", ".jpeg"):
                img.save(path, quality=90, optimize=False, progressive=False)
            else:
                img.save(path, optimize=False)
        written.append(path)
    for name, text in TEXTS.items():
        path = out / name
        if overwrite or not path.exists():
            path.write_text(text + "\n", encoding="utf-8")
        written.append(path)
    if video:
        for name, (frames, _) in _VIDEOS.items():
            path = out / name
            if overwrite or not path.exists():
                write_video(path, frames())
            written.append(path)
    return sorted(written)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwen3vl_integrations.sample_data",
        description="Generate the sample folder (pictures, text documents, videos) used by the demo and cookbook.",
    )
    parser.add_argument("out_dir", help="folder to write into (created if missing)")
    parser.add_argument("--no-video", action="store_true", help="skip the two mp4 files")
    parser.add_argument("--force", action="store_true", help="rewrite files that already exist")
    args = parser.parse_args(argv)
    paths = generate_sample_data(args.out_dir, video=not args.no_video, overwrite=args.force)
    by_name = {f.name: f for f in SAMPLE_FILES}
    for p in paths:
        f = by_name[p.name]
        print(f"{f.modality:5s}  {p}  ({f.description})")
    print(f"{len(paths)} files in {args.out_dir}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
