"""The results picture (PIL only): the query and the ranked results as thumbnails with their scores."""
from __future__ import annotations

import re
import textwrap
from pathlib import Path
from typing import Sequence

from .models import _is_tiny
from .searching import Hit, _describe_query

_CELL_W, _THUMB_H, _CAPTION_H, _PAD = 220, 165, 52, 10


def _thumbnail_source(path: str, modality: str, text: str = ""):
    from PIL import Image

    if modality == "video":
        import av

        with av.open(path) as container:
            for frame in container.decode(video=0):
                return frame.to_image()
        raise ValueError("no frames")
    if modality == "image":
        with Image.open(path) as img:
            img.load()
            if img.mode in ("RGBA", "LA") or "transparency" in img.info:
                rgba = img.convert("RGBA")
                bg = Image.new("RGB", rgba.size, "white")
                bg.paste(rgba, mask=rgba.split()[-1])
                return bg
            return img.convert("RGB")
    return _text_card(text or Path(path).read_text(encoding="utf-8-sig", errors="replace"))


def _font(size: int):
    from PIL import ImageFont

    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # pragma: no cover - Pillow < 10.1
        return ImageFont.load_default()


def _text_card(text: str):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (_CELL_W - 2 * _PAD, _THUMB_H), (250, 248, 240))
    d = ImageDraw.Draw(img)
    lines = textwrap.wrap(" ".join(text.split()), width=30)[:9]
    for i, line in enumerate(lines):
        d.text((8, 6 + i * 17), line, font=_font(13), fill=(40, 40, 40))
    d.rectangle((0, 0, img.width - 1, img.height - 1), outline=(180, 180, 170))
    return img


def _fit(img, width: int, height: int):
    from PIL import Image

    img = img.copy()
    img.thumbnail((width, height), Image.Resampling.LANCZOS)
    canvas = Image.new("RGB", (width, height), (235, 235, 235))
    canvas.paste(img, ((width - img.width) // 2, (height - img.height) // 2))
    return canvas


def _placeholder(label: str, width: int, height: int):
    from PIL import Image, ImageDraw

    img = Image.new("RGB", (width, height), (200, 200, 200))
    ImageDraw.Draw(img).text((10, height // 2 - 8), label, font=_font(14), fill=(90, 90, 90))
    return img


def render_results_picture(hits: Sequence[Hit], out_path: str | Path | None = None, *, query_text: str | None = None,
                           query_image: str | Path | None = None, query_video: str | Path | None = None,
                           title: str | None = None, subtitle: str | None = None, columns: int = 5):
    """Draw the query and the ranked results (thumbnails with scores); returns the PIL image, saved to ``out_path``
    (PNG) unless it is None.

    Images are shown as thumbnails, videos by their first frame, text files as a card with their first lines.
    """
    from PIL import Image, ImageDraw

    columns = max(1, min(columns, max(1, len(hits))))
    thumb_w = _CELL_W - 2 * _PAD
    top = 38 + (18 if subtitle else 0)
    header_h = top + 2 + (_THUMB_H // 2 + 10 if (query_image or query_video) else 0)
    rows = max(1, -(-len(hits) // columns))
    width = max(columns * _CELL_W, 440)
    height = header_h + rows * (_THUMB_H + _CAPTION_H + _PAD) + _PAD
    canvas = Image.new("RGB", (width, height), "white")
    d = ImageDraw.Draw(canvas)
    heading = title or ("Query: " + (_describe_query(query_text, query_image, query_video) or "?"))
    d.text((_PAD, 10), heading[:110], font=_font(18), fill=(0, 0, 0))
    if subtitle:
        d.text((_PAD, 34), subtitle[:140], font=_font(12), fill=(110, 110, 110))
    x = _PAD
    for media, kind in ((query_image, "image"), (query_video, "video")):
        if media is None:
            continue
        try:
            thumb = _fit(_thumbnail_source(str(media), kind), thumb_w // 2, _THUMB_H // 2)
        except Exception:  # noqa: BLE001 - a picture must never fail the query
            thumb = _placeholder("unreadable", thumb_w // 2, _THUMB_H // 2)
        canvas.paste(thumb, (x, top))
        x += thumb_w // 2 + _PAD
    for i, h in enumerate(hits):
        col, row = i % columns, i // columns
        x0 = col * _CELL_W + _PAD
        y0 = header_h + row * (_THUMB_H + _CAPTION_H + _PAD)
        try:
            thumb = _fit(_thumbnail_source(h.path, h.modality, h.text), thumb_w, _THUMB_H)
        except Exception:  # noqa: BLE001
            thumb = _placeholder("missing file", thumb_w, _THUMB_H)
        canvas.paste(thumb, (x0, y0))
        if h.modality == "video":
            d.polygon([(x0 + 8, y0 + 8), (x0 + 8, y0 + 30), (x0 + 27, y0 + 19)], fill=(255, 255, 255),
                      outline=(0, 0, 0))
        scores = f"#{h.rank}" + (f"  score {h.score:.3f}" if h.score is not None else "")
        if h.rerank_score is not None:
            scores += f"  rerank {h.rerank_score:.3f}"
        d.text((x0, y0 + _THUMB_H + 4), scores, font=_font(13), fill=(0, 0, 0))
        name = h.file if len(h.file) <= 30 else "..." + h.file[-27:]
        d.text((x0, y0 + _THUMB_H + 22), f"{name} ({h.modality})", font=_font(12), fill=(70, 70, 70))
    if out_path is not None:
        out_path = Path(out_path)
        out_path.parent.mkdir(parents=True, exist_ok=True)
        canvas.save(out_path)
    return canvas


def picture_subtitle(info: dict) -> str:
    """"embedding <model> (dimension K) · reranker <model>", flagged when tiny random models were used."""
    text = f"embedding {info['model']} (dimension {info['dimension']})"
    if info.get("reranker"):
        text += f" · reranker {info['reranker']}"
    if _is_tiny(info["model"]) or _is_tiny(info.get("reranker")):
        text += " · tiny random weights: rankings are meaningless"
    return text


def _slug(text: str) -> str:
    slug = re.sub(r"[\W_]+", "-", text).strip("-").lower()  # \W: letters of every script stay
    return slug[:60] or "query"


def default_picture_path(index_dir: str | Path, text: str | None, image=None, video=None) -> Path:
    """``INDEX_DIR/results-<query>.png``: the results picture lies next to the index."""
    parts = [p for p in (text, Path(str(image)).stem if image else None, Path(str(video)).stem if video else None) if p]
    return Path(index_dir) / f"results-{_slug('-'.join(parts))}.png"
