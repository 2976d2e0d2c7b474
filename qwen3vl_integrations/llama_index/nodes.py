"""Turning LlamaIndex nodes and query bundles into core input items.

Shared by :class:`~qwen3vl_integrations.llama_index.Qwen3VLEmbedding` (node routing when it runs as a
transformation) and :class:`~qwen3vl_integrations.llama_index.Qwen3VLRerank` (documents and the query), so that a
node is seen the same way when it is indexed and when it is reranked.

Where a node's media is looked up, in this order (the first match wins):

1. an ``ImageNode`` with an image: base64 ``image``, then ``image_path``, then ``image_url``;
2. a generic ``Node`` with an ``image_resource`` and/or a ``video_resource`` (``data``, then ``path``, then ``url``);
3. metadata naming the media explicitly: ``video_path`` / ``video_url`` (a video), ``image_path`` / ``image_url``
   (an image);
4. metadata ``file_path`` ending in a video or image extension (or with a ``video/*`` / ``image/*`` ``file_type`` /
   ``mime_type``), **only when the node has no text of its own**. A text chunk whose ``file_path`` points at an
   image or video (an OCR page, a transcript chunk) keeps its text;
5. otherwise the node is text: ``node.get_content(metadata_mode=MetadataMode.EMBED)``.

A node with media is represented by its media alone; its text and metadata are not added to the item. This matches
``MultiModalVectorStoreIndex``, which embeds an ``ImageNode``'s image (not its file metadata) in its image store.
To embed text and media together, call ``Qwen3VLEmbedding.get_multimodal_embedding(text=..., image=...)``.
"""
from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any, Literal, Optional, Sequence, Tuple, Union

from llama_index.core.schema import BaseNode, ImageNode, MetadataMode, Node, QueryBundle

from ..core.errors import POSITIONS_SHOWN

from ..core.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS, has_extension

Modality = Literal["text", "image", "video"]
Item = Union[str, dict]

__all__ = [
    "Modality",
    "node_to_item",
    "node_modality",
    "query_bundle_to_item",
    "is_video_source",
    "IMAGE_EXTENSIONS",
    "VIDEO_EXTENSIONS",
]


def is_video_source(value: Any) -> bool:
    """True when `value` is a str/Path naming a video file or URL (by extension)."""
    return isinstance(value, (str, Path)) and has_extension(str(value), VIDEO_EXTENSIONS)


def _resource_source(resource: Any) -> Any:
    """What the core should read for a ``MediaResource``: raw bytes, a local path or a URL; None when empty."""
    if resource is None:
        return None
    if resource.data:
        # MediaResource keeps `data` base64-encoded (its validator encodes raw bytes).
        return base64.b64decode(resource.data)
    if resource.path is not None:
        return str(resource.path)
    if resource.url is not None:
        return str(resource.url)
    return None


def _image_node_source(node: ImageNode) -> Any:
    if node.image:
        return io.BytesIO(base64.b64decode(node.image))
    if node.image_path:
        return node.image_path
    if node.image_url:
        return node.image_url
    return None


def _kind_from_type(metadata: dict) -> Optional[str]:
    for key in ("mime_type", "file_type", "mimetype"):
        value = metadata.get(key)
        if isinstance(value, str):
            if value.startswith("video/"):
                return "video"
            if value.startswith("image/"):
                return "image"
    return None


def _own_text(node: BaseNode) -> str:
    try:
        return node.get_content(metadata_mode=MetadataMode.NONE)
    except Exception:  # pragma: no cover - exotic node types
        return ""


def node_media(node: BaseNode) -> Optional[dict]:
    """The node's media as a core item (``{"image": ...}``, ``{"video": ...}`` or both), or None for a text node."""
    if isinstance(node, ImageNode):
        source = _image_node_source(node)
        if source is not None:
            return {"image": source}
    if isinstance(node, Node):
        item = {}
        image = _resource_source(node.image_resource)
        video = _resource_source(node.video_resource)
        if image is not None:
            item["image"] = image
        if video is not None:
            item["video"] = video
        if item:
            return item
    metadata = node.metadata or {}
    for key, kind in (("video_path", "video"), ("video_url", "video"), ("image_path", "image"), ("image_url", "image")):
        value = metadata.get(key)
        if isinstance(value, (str, Path)) and str(value):
            return {kind: str(value)}
    file_path = metadata.get("file_path")
    if isinstance(file_path, (str, Path)) and str(file_path) and not _own_text(node).strip():
        file_path = str(file_path)
        if has_extension(file_path, VIDEO_EXTENSIONS):
            return {"video": file_path}
        if has_extension(file_path, IMAGE_EXTENSIONS):
            return {"image": file_path}
        file_kind = _kind_from_type(metadata)
        if file_kind is not None:
            return {file_kind: file_path}
    return None


def node_to_item(node: BaseNode) -> Tuple[Modality, Item]:
    """Classify a node and convert it to a core item.

    Returns ``("video", {"video": ...})`` (possibly with an ``"image"`` too, for a ``Node`` with both resources),
    ``("image", {"image": ...})`` or ``("text", "<the node's embed content>")``.
    """
    media = node_media(node)
    if media is None:
        return "text", node.get_content(metadata_mode=MetadataMode.EMBED)
    return ("video" if "video" in media else "image"), media


def node_modality(node: BaseNode) -> Modality:
    """``"text"``, ``"image"`` or ``"video"``: how the node is embedded and reranked."""
    return node_to_item(node)[0]


def query_bundle_to_item(query_bundle: QueryBundle) -> Item:
    """The reranker's query: ``query_str`` and/or ``image_path`` (a path or URL; a video file counts as video).

    Raises ValueError when the bundle has neither.
    """
    text = query_bundle.query_str or ""
    media = query_bundle.image_path
    if media is None or (isinstance(media, str) and not media):
        if not text.strip():
            raise ValueError("The query bundle has neither query_str nor image_path: nothing to rerank against "
                             "(image_query_bundle sets image_path for a path or URL, not for an in-memory image).")
        return text
    item: dict = {"video" if is_video_source(media) else "image": media}
    if text.strip():
        item["text"] = text
    return item


def name_the_nodes(error: BaseException, node_ids: Sequence[str], doing: str, role: Optional[str] = None) -> None:
    """Notes on a core input error whose indices point into `node_ids`: the node it names ("while <doing> node
    <id>") and the ids of the other bad nodes it reports. With `role`, only its errors are about nodes: an error
    that names another input first (the reranker's query) gets the ids of the bad nodes it also reports."""
    reported = [error, *getattr(error, "others", ())]
    about_nodes = [_node_id_at(getattr(each, "index", None), node_ids) for each in reported
                   if role is None or getattr(each, "role", None) == role]
    if role is not None and getattr(error, "role", None) != role:
        _note_nodes(error, "the bad nodes", about_nodes)
        return
    if about_nodes[0] is None:
        return
    error.add_note(f"while {doing} node {about_nodes[0]!r}")
    _note_nodes(error, "the other bad nodes", about_nodes[1:])


def _note_nodes(error: BaseException, what: str, node_ids: Sequence[Optional[str]]) -> None:
    shown = [repr(node_id) for node_id in node_ids if node_id is not None]
    if shown:
        etc = f" and {len(shown) - POSITIONS_SHOWN} more" if len(shown) > POSITIONS_SHOWN else ""
        error.add_note(f"{what}: {', '.join(shown[:POSITIONS_SHOWN])}{etc}")


def _node_id_at(index: Any, node_ids: Sequence[str]) -> Optional[str]:
    return node_ids[index] if isinstance(index, int) and 0 <= index < len(node_ids) else None
