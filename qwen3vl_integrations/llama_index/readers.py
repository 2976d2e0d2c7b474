"""File readers that let ``SimpleDirectoryReader`` hand images and videos to Qwen3-VL as media.

Without ``llama-index-readers-file``, ``SimpleDirectoryReader`` decodes a ``.png`` or ``.jpg`` as if it were text
(garbage documents, no ``ImageDocument``), and with it an ``.mp4`` goes to a Whisper transcription reader. Passing
``file_extractor=media_file_extractor()`` instead turns every image file into an ``ImageDocument`` (which node
parsers turn into ``ImageNode``) and every video file into a text-less ``Document`` whose metadata ``video_path``
names the file (on a non-local filesystem, whose ``video_resource`` holds its bytes), which
:class:`~qwen3vl_integrations.llama_index.Qwen3VLEmbedding` and
:class:`~qwen3vl_integrations.llama_index.Qwen3VLRerank` read as a video.
"""
from __future__ import annotations

import base64
from pathlib import Path
from typing import Any, Dict, List, Optional

from llama_index.core.readers.base import BaseReader
from llama_index.core.schema import Document, ImageDocument, MediaResource

from ..core.media import IMAGE_EXTENSIONS, VIDEO_EXTENSIONS

__all__ = ["Qwen3VLMediaReader", "media_file_extractor"]


class Qwen3VLMediaReader(BaseReader):
    """Reads an image file as an ``ImageDocument`` and a video file as a ``Document`` with ``metadata["video_path"]``.

    The file's metadata from ``SimpleDirectoryReader`` (``file_path``, ``file_name``, ...) is kept, and each
    document gets an empty ``text_resource`` so that its embed content is that metadata: LlamaIndex indexes drop
    documents whose embed content is empty ("Some nodes are missing content"), with or without a node parser.
    """

    def load_data(self, file: Any, extra_info: Optional[Dict[str, Any]] = None, fs: Any = None) -> List[Document]:
        path = Path(file)
        metadata = dict(extra_info or {})
        metadata.setdefault("file_path", str(path))
        suffix = path.suffix.lower()
        # SimpleDirectoryReader passes `fs` for non-local filesystems only (S3, GCS, ...): there the path means
        # nothing to the model later, so the document carries the file's bytes.
        if suffix in VIDEO_EXTENSIONS:
            if fs is not None:
                return [Document(video_resource=MediaResource(data=_read(fs, file)),
                                 text_resource=MediaResource(text=""), metadata=metadata)]
            metadata["video_path"] = str(path)
            return [Document(text_resource=MediaResource(text=""), metadata=metadata)]
        if suffix in IMAGE_EXTENSIONS:
            if fs is not None:
                return [ImageDocument(image=base64.b64encode(_read(fs, file)).decode(),
                                      text_resource=MediaResource(text=""), metadata=metadata)]
            return [ImageDocument(image_path=str(path), text_resource=MediaResource(text=""), metadata=metadata)]
        raise ValueError(f"Qwen3VLMediaReader reads image and video files, not {path.name!r}")


def _read(fs: Any, file: Any) -> bytes:
    with fs.open(str(file), "rb") as handle:
        return handle.read()


def media_file_extractor(images: bool = True, videos: bool = True) -> Dict[str, BaseReader]:
    """A ``file_extractor`` for ``SimpleDirectoryReader`` mapping image and/or video extensions to
    :class:`Qwen3VLMediaReader`: ``SimpleDirectoryReader("data", file_extractor=media_file_extractor())``."""
    reader = Qwen3VLMediaReader()
    extensions: tuple = ()
    if images:
        extensions += tuple(ext for ext in IMAGE_EXTENSIONS if ext != ".svg")
    if videos:
        extensions += VIDEO_EXTENSIONS
    return {ext: reader for ext in extensions}
