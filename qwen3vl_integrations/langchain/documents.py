"""Convert LangChain `Document` objects into core items (text / image / video dicts).

A document's media is read from its metadata, in this order:

* image: ``metadata["image_path"]``, then ``metadata["image_url"]``;
* video: ``metadata["video_path"]``, then ``metadata["video_url"]``;
* if neither an image nor a video key is present, ``metadata["source"]`` is used when it names an image or
  video file by its extension (``.png``, ``.jpg``, ... / ``.mp4``, ``.webm``, ...; for URLs the extension of the
  URL path counts) or when ``metadata["mime_type"]`` says ``image/...`` or ``video/...``.

The text is ``page_content``. One special case: ``langchain_chroma.Chroma.add_images`` stores the *base64 encoded
image file* as ``page_content``. When ``page_content`` is a ``data:image/...`` URI or a bare base64 string whose
decoded bytes start with an image file signature (PNG, JPEG, GIF, WebP, BMP, TIFF), and no image was found in
metadata, that image is used as the document's image and the base64 text is not sent as text.
"""
from __future__ import annotations

import base64
import binascii
import os
import re
from collections.abc import Mapping
from pathlib import PurePosixPath
from typing import Any
from urllib.parse import urlparse

__all__ = [
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
    "IMAGE_METADATA_KEYS",
    "VIDEO_METADATA_KEYS",
    "document_to_item",
    "decode_base64_image",
    "media_kind",
]

IMAGE_EXTENSIONS = frozenset(
    {".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".jfif", ".pjpeg", ".pjp"}
)
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".avi", ".mkv", ".webm", ".mpeg", ".mpg", ".wmv", ".flv", ".3gp"})
IMAGE_METADATA_KEYS = ("image_path", "image_url")
VIDEO_METADATA_KEYS = ("video_path", "video_url")

_IMAGE_SIGNATURES = (
    b"\x89PNG\r\n\x1a\n",
    b"\xff\xd8\xff",  # JPEG
    b"GIF87a",
    b"GIF89a",
    b"BM",  # BMP
    b"II*\x00",  # TIFF little endian
    b"MM\x00*",  # TIFF big endian
)
_BASE64_RE = re.compile(r"^[A-Za-z0-9+/]+={0,2}$")
# a bare base64 image is at least this long; shorter strings are treated as ordinary text
_MIN_BASE64_IMAGE_CHARS = 64


def media_kind(reference: Any, mime_type: Any = None) -> str | None:
    """Return ``"image"``, ``"video"`` or ``None`` for a path/URL string, by extension (or by ``mime_type``)."""
    if isinstance(mime_type, str):
        major = mime_type.split("/", 1)[0].strip().lower()
        if major in ("image", "video"):
            return major
    if isinstance(reference, os.PathLike):
        reference = os.fspath(reference)
    if not isinstance(reference, str):
        return None
    ref = reference
    if ref.startswith("data:"):
        major = ref[5:].split("/", 1)[0].lower()
        return major if major in ("image", "video") else None
    if "://" in ref:
        ref = urlparse(ref).path
    suffix = PurePosixPath(ref.replace("\\", "/")).suffix.lower()
    if suffix in IMAGE_EXTENSIONS:
        return "image"
    if suffix in VIDEO_EXTENSIONS:
        return "video"
    return None


def _looks_like_image(data: bytes) -> bool:
    if data.startswith(_IMAGE_SIGNATURES):
        return True
    return data[:4] == b"RIFF" and data[8:12] == b"WEBP"


def decode_base64_image(text: Any) -> bytes | str | None:
    """Return the image if ``text`` is a base64 image (as Chroma's ``add_images`` stores it), else ``None``.

    A ``data:image/...`` URI is returned unchanged (the core reads data URIs); a bare base64 string is returned
    as the decoded bytes.
    """
    if not isinstance(text, str):
        return None
    stripped = text.strip()
    if stripped.startswith("data:image/"):
        return stripped
    if len(stripped) < _MIN_BASE64_IMAGE_CHARS or len(stripped) % 4 != 0:
        return None
    # cheap check on a prefix first, so ordinary text never pays for a full decode
    head = stripped[:64]
    if not _BASE64_RE.match(head):
        return None
    try:
        if not _looks_like_image(base64.b64decode(head, validate=True)):
            return None
        if not _BASE64_RE.match(stripped):
            return None
        return base64.b64decode(stripped, validate=True)
    except (binascii.Error, ValueError):
        return None


def _first(metadata: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value = metadata.get(key)
        if value is not None and value != "" and value != []:
            return value
    return None


def document_to_item(document: Any) -> str | dict[str, Any]:
    """Turn a LangChain ``Document`` (or anything with ``page_content`` / ``metadata``) into a core item.

    Returns the plain text when the document has no media, otherwise a dict with ``text`` (if any), ``image``
    and/or ``video``.
    """
    text = getattr(document, "page_content", "")
    metadata = getattr(document, "metadata", None) or {}
    if text is None:
        text = ""

    image = _first(metadata, IMAGE_METADATA_KEYS)
    video = _first(metadata, VIDEO_METADATA_KEYS)
    if image is None and video is None:
        source = metadata.get("source")
        kind = media_kind(source, metadata.get("mime_type"))
        if kind == "image":
            image = source
        elif kind == "video":
            video = source

    if image is None:
        embedded = decode_base64_image(text)
        if embedded is not None:
            image = embedded
            text = ""
    elif isinstance(text, str) and decode_base64_image(text) is not None:
        # Chroma add_images + an image_path in metadata: the page content is the same image, not text
        text = ""

    if image is None and video is None:
        return text
    item: dict[str, Any] = {}
    if isinstance(text, str) and text.strip():
        item["text"] = text
    if image is not None:
        item["image"] = image
    if video is not None:
        item["video"] = video
    return item
