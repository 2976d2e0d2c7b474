"""``Qwen3VLEmbedding``: Qwen3-VL-Embedding as a LlamaIndex ``MultiModalEmbedding``.

Text, images and video land in one vector space. Queries get a task instruction (``query_instruction``); documents
(text, images, video, nodes) get ``text_instruction`` (None: the model's default, "Represent the user's input.").
All model work happens in the core :class:`~qwen3vl_integrations.Qwen3VLEmbedder`.
"""
from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any, AsyncIterator, Callable, ClassVar, Dict, Iterator, List, Optional, Sequence

from llama_index.core.base.embeddings.base import Embedding
from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr, field_validator
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.embeddings import MultiModalEmbedding
from llama_index.core.schema import BaseNode, MetadataMode, QueryBundle

from ..core.async_calls import calls_stopped_together, embedding_threads, stop_if_given_up
from ..core.errors import Qwen3VLInputError, one_error, position_of
from ..core.prompts import DEFAULT_QUERY_INSTRUCTION
from ..core.quantization import check_dimensions
from ._core import HoldsCoreObject
from .embeddings_cache import SeparatedEmbeddingsCache, cache_namespace
from .nodes import name_the_nodes, node_to_item

if TYPE_CHECKING:
    from ..core.embedder import Qwen3VLEmbedder

DEFAULT_EMBEDDING_MODEL = "Qwen/Qwen3-VL-Embedding-2B"
# Items LlamaIndex hands to one core call. The core sorts a call's items by length and prepares the next micro-batch
# while the model runs; a call of a single micro-batch has neither (32 images of 448x448: about 0.12 s of model work
# on an H100, after about 0.1 s of host work that nothing overlaps).
DEFAULT_EMBED_BATCH_SIZE = 256

__all__ = ["Qwen3VLEmbedding", "image_query_bundle", "video_query_bundle", "DEFAULT_EMBEDDING_MODEL"]


_MODALITIES = ("text", "image", "video")  # the order in which a transformation embeds the node groups
_FAILED_INPUT = "_qwen3vl_failed_input"  # set on a chunk call's input errors: the input object each names
_UNMARKED = object()


@contextlib.contextmanager
def _naming_the_input(chunk: Sequence[Any]) -> Iterator[None]:
    """Around one chunk call: each input error carries the input object it names (`_in_callers_list` locates
    it)."""
    try:
        yield
    except Qwen3VLInputError as error:
        for each in error.errors:
            if isinstance(each.index, int) and 0 <= each.index < len(chunk):
                setattr(each, _FAILED_INPUT, chunk[each.index])
        raise


def _in_callers_list(error: Qwen3VLInputError, inputs: Sequence[Any]) -> Optional[Qwen3VLInputError]:
    """`error` from one chunk call of a ``get_*_batch`` method, its positions in the caller's list (None when an
    input it names is not there). LlamaIndex calls us per chunk of ``embed_batch_size`` (or per cache miss list), so
    an error's indices count within that chunk. Found by identity, each input an error names gets its position in
    the caller's list; an object there several times (an interned string) gets its places in order."""
    places: dict[int, list[int]] = {}
    for place, value in enumerate(inputs):
        places.setdefault(id(value), []).append(place)
    named: dict[int, int] = {}  # how many errors have named each object so far

    def position_of_input(each: Qwen3VLInputError) -> Optional[int]:
        failed = getattr(each, _FAILED_INPUT, _UNMARKED)
        found = places.get(id(failed)) if failed is not _UNMARKED else None
        if not found:
            return None
        times = named.get(id(failed), 0)
        named[id(failed)] = times + 1
        return found[min(times, len(found) - 1)]

    positions = [position_of_input(each) for each in error.errors]
    if any(position is None for position in positions):
        return None
    return _joined(error, [each.located(position, each.role) for each, position in zip(error.errors, positions)])


def _joined(error: Qwen3VLInputError, errors: Sequence[Qwen3VLInputError]) -> Qwen3VLInputError:
    """One error for all of `errors` (none of them dropped), in the caller's order: it names the first and keeps the
    notes of `error`, the one raised."""
    joined = one_error(sorted(errors, key=position_of))
    for note in getattr(error, "__notes__", ()):
        joined.add_note(note)
    return joined


def _image_items(images: Sequence[Any]) -> List[Any]:
    """Core items of LlamaIndex's image inputs (paths, URLs, bytes, PIL images ...)."""
    return [{"image": image} for image in images]


class Qwen3VLEmbedding(HoldsCoreObject, MultiModalEmbedding):
    """Qwen3-VL-Embedding for LlamaIndex: text, images and video in one space.

    Args:
        model_name: Hugging Face id or local folder (default ``Qwen/Qwen3-VL-Embedding-2B``).
        embed_batch_size: items per core call (the chunk size of LlamaIndex's ``get_*_batch`` methods, default
            256) and at most that many per forward pass, where the core's ``batch_size`` (default 32; on CUDA 256
            for a call of texts alone) also caps it.
        device: ``"cuda"``, ``"cpu"``, ... (None: the core picks the best available).
        dtype: ``"bfloat16"``, ``"float32"``, ... (None: the core's default for the device).
        dimensions: Matryoshka output size (None: the full hidden size).
        query_instruction: instruction for queries (``get_query_embedding``, text-to-image search in
            ``MultiModalVectorStoreIndex``, ``get_image_query_embedding``, ``get_video_query_embedding``).
        text_instruction: instruction for documents: text, images, video and nodes (None: the model's default).
        max_pixels: per-image pixel budget (None: the core's default).
        core_options: any other ``Qwen3VLEmbedder`` constructor options (``attn_implementation``, ``fps``, ...).
        embedder: an existing core ``Qwen3VLEmbedder`` to use instead of building one from the fields above.

    Nothing is loaded at construction; the model loads on first use, and adapters with the same model, device and
    dtype (LlamaIndex or LangChain) share one loaded copy.

    As a transformation (``IngestionPipeline``, ``index.insert_nodes`` after ``embed(nodes)``), it embeds an
    ``ImageNode`` or a ``Node`` with ``image_resource`` as an image, a node with a video (``video_resource``,
    metadata ``video_path``/``video_url``, or a text-less node whose ``file_path`` is a video) as a video, and every
    other node as text, one batch per modality. Nodes with media are embedded from their media alone (see
    :mod:`qwen3vl_integrations.llama_index.nodes`).
    """

    # An unknown keyword is an error, not silently ignored (LlamaIndex's default): `model=` or LangChain's
    # `document_instruction=` fell back to the defaults.
    model_config = ConfigDict(extra="forbid")

    model_name: str = Field(default=DEFAULT_EMBEDDING_MODEL, description="Hugging Face id or local path.")
    embed_batch_size: int = Field(
        default=DEFAULT_EMBED_BATCH_SIZE, gt=0, le=2048,
        description="Items per core call (LlamaIndex's batch chunks); also a cap on items per forward pass.",
    )
    device: Optional[str] = Field(default=None, description="Torch device; None picks one on first use.")
    dtype: Optional[str] = Field(default=None, description="Torch dtype name; None uses the core default.")
    dimensions: Optional[int] = Field(default=None, gt=0, description="Matryoshka output dimension.")
    query_instruction: Optional[str] = Field(
        default=DEFAULT_QUERY_INSTRUCTION, description="Instruction for queries (None: the model default)."
    )
    text_instruction: Optional[str] = Field(
        default=None, description="Instruction for documents: text, images, video (None: the model default)."
    )
    max_pixels: Optional[int] = Field(default=None, gt=0, description="Per-image pixel budget.")
    core_options: Dict[str, Any] = Field(
        default_factory=dict, description="Other keyword arguments for the core Qwen3VLEmbedder."
    )

    core_attribute: ClassVar[str] = "embedder"
    _embedder: Any = PrivateAttr(default=None)
    _owns_embedder: bool = PrivateAttr(default=True)

    def __init__(self, *, embedder: Any = None, **kwargs: Any) -> None:
        if embedder is not None:
            kwargs.setdefault("model_name", str(embedder.model_name_or_path))
        super().__init__(**kwargs)
        if embedder is not None:
            self._embedder = embedder
            self._owns_embedder = False

    @field_validator("embeddings_cache")
    @classmethod
    def _separate_cached_roles(cls, value: Any) -> Any:
        from llama_index.core.storage.kvstore.types import BaseKVStore

        if isinstance(value, BaseKVStore) and not isinstance(value, SeparatedEmbeddingsCache):
            return SeparatedEmbeddingsCache(value)
        return value  # LlamaIndex refuses what is not a BaseKVStore

    @classmethod
    def class_name(cls) -> str:
        return "Qwen3VLEmbedding"

    # ------------------------------------------------------------------ core access

    @property
    def embedder(self) -> Qwen3VLEmbedder:
        """The core ``Qwen3VLEmbedder`` (built on first access and when its options change; weights load on the first
        call, once per process for all objects with the same model)."""
        from .. import Qwen3VLEmbedder

        return self._core_object(Qwen3VLEmbedder, self.model_name, device=self.device, dtype=self.dtype,
                                 max_pixels=self.max_pixels)

    @property
    def embedding_dim(self) -> int:
        """Length of the vectors this adapter returns (``dimensions`` or the model's hidden size); reads the model's
        config, so a ``dimensions`` the model cannot give fails here, not later in a vector store."""
        return check_dimensions(self.dimensions, int(self.embedder.embedding_dim))

    def _embed(
        self, items: Sequence[Any], instruction: Optional[str], show_progress: bool = False
    ) -> List[Embedding]:
        if len(items) == 0:
            return []
        stop_if_given_up()  # a chunk of an async batch call that failed meanwhile: no work (see _every_bad_input_of)
        embedder = self.embedder
        core_batch = getattr(embedder, "batch_size", None)  # the core's own cap (its default, or core_options)
        vectors = embedder.embed(
            list(items),
            instruction=instruction,
            dimensions=self.dimensions,
            batch_size=min(self.embed_batch_size, core_batch) if isinstance(core_batch, int) else None,
            show_progress=show_progress,
        )
        return vectors.tolist()

    def _embed_with_event(
        self, items: Sequence[Any], chunks: Sequence[Any], instruction: Optional[str], show_progress: bool = False
    ) -> List[Embedding]:
        """One core call for media items, reported as one ``CBEventType.EMBEDDING`` callback event."""
        with self.callback_manager.event(
            CBEventType.EMBEDDING, payload={EventPayload.SERIALIZED: self.to_payload()}
        ) as event:
            embeddings = self._embed(items, instruction, show_progress=show_progress)
            event.on_end(payload={EventPayload.CHUNKS: list(chunks), EventPayload.EMBEDDINGS: embeddings})
        return embeddings

    # ------------------------------------------------------------------ every bad input of a batch call

    def _with_bad_inputs_among(self, error: Qwen3VLInputError, inputs: Sequence[Any],
                               as_items: Callable[[Sequence[Any]], List[Any]],
                               unchecked: Sequence[int]) -> Qwen3VLInputError:
        """`error` (positions in `inputs`) and the bad inputs among the positions `unchecked`, found by the core's
        checks before model work (:meth:`Qwen3VLEmbedder.check_inputs`: no model work, nothing embedded)."""
        if not unchecked:
            return error
        found = self.embedder.check_inputs(as_items([inputs[position] for position in unchecked]))
        if not found:
            return error
        return _joined(error, [*error.errors, *(each.located(unchecked[position_of(each)], each.role)
                                                for each in found)])

    @contextlib.contextmanager
    def _every_bad_input_of(self, inputs: Sequence[Any],
                            as_items: Callable[[Sequence[Any]], List[Any]]) -> Iterator[None]:
        """Around a sync ``get_*_batch`` method. LlamaIndex embeds the chunks one after another and stops at the
        first that raises; the inputs of the chunks after it are then checked (the core's checks before model work:
        no model work, nothing embedded), and one error reports every bad input found, by its position in `inputs`,
        the first first. The chunks before it were embedded: their inputs are good."""
        try:
            yield
        except Qwen3VLInputError as error:
            located = _in_callers_list(error, inputs)
            if located is None:
                raise
            size = self.embed_batch_size  # LlamaIndex's chunks: inputs[0:size], inputs[size:2 * size], ...
            after = range((min(position_of(each) for each in located.errors) // size + 1) * size, len(inputs))
            raise self._with_bad_inputs_among(located, inputs, as_items, after) from None

    @contextlib.asynccontextmanager
    async def _aevery_bad_input_of(self, inputs: Sequence[Any],
                                   as_items: Callable[[Sequence[Any]], List[Any]]) -> AsyncIterator[None]:
        """Around an async ``aget_*_batch`` method. LlamaIndex runs all the chunks at once and raises the first
        error; then the other chunks' calls stop before their next forward pass (a chunk not started yet does
        nothing): nothing waits for what they would compute. Every input the error does not name is then checked,
        as in :meth:`_every_bad_input_of` (in a worker thread: media may be fetched), and one error reports every
        bad input found. (Which chunks ran, and how far, is not known here; an object in several chunks, an
        interned string, makes even the failed chunk's place uncertain.)"""
        with calls_stopped_together() as stop:
            try:
                yield
            except BaseException as error:
                stop.set()
                if not isinstance(error, Qwen3VLInputError):
                    raise
                located = _in_callers_list(error, inputs)
                if located is None:
                    raise
                named = {position_of(each) for each in located.errors}
                others = [position for position in range(len(inputs)) if position not in named]
                raise await embedding_threads.run(self._with_bad_inputs_among, located, inputs, as_items,
                                                  others) from None

    # ------------------------------------------------------------------ LlamaIndex text / query

    @contextlib.contextmanager
    def _cached_as(self, role: str) -> Iterator[None]:
        """Where `embeddings_cache` keeps this call's vectors: apart for queries and documents, and per model, size
        and instruction (see `embeddings_cache.SeparatedEmbeddingsCache`)."""
        instruction = self.query_instruction if role == "query" else self.text_instruction
        with cache_namespace(role, self.model_name, self.dimensions, instruction):
            yield

    def get_query_embedding(self, query: str) -> Embedding:
        with self._cached_as("query"):
            return super().get_query_embedding(query)

    async def aget_query_embedding(self, query: str) -> Embedding:
        with self._cached_as("query"):
            return await super().aget_query_embedding(query)

    def get_text_embedding(self, text: str) -> Embedding:
        with self._cached_as("document"):
            return super().get_text_embedding(text)

    async def aget_text_embedding(self, text: str) -> Embedding:
        with self._cached_as("document"):
            return await super().aget_text_embedding(text)

    def _get_query_embedding(self, query: str) -> Embedding:
        return self._embed([query], self.query_instruction)[0]

    async def _aget_query_embedding(self, query: str) -> Embedding:
        return await embedding_threads.run(self._get_query_embedding, query)

    def _get_text_embedding(self, text: str) -> Embedding:
        return self._embed([text], self.text_instruction)[0]

    async def _aget_text_embedding(self, text: str) -> Embedding:
        return await embedding_threads.run(self._get_text_embedding, text)

    def _get_text_embeddings(self, texts: List[str]) -> List[Embedding]:
        with _naming_the_input(texts):
            return self._embed(texts, self.text_instruction)

    def get_text_embedding_batch(self, texts: List[str], show_progress: bool = False,
                                 **kwargs: Any) -> List[Embedding]:
        """LlamaIndex's chunked batch call; an input error reports every bad text of ``texts`` by its position there
        (see :meth:`_every_bad_input_of`)."""
        with self._every_bad_input_of(texts, list), self._cached_as("document"):
            return super().get_text_embedding_batch(texts, show_progress=show_progress, **kwargs)

    async def aget_text_embedding_batch(self, texts: List[str], show_progress: bool = False,
                                        **kwargs: Any) -> List[Embedding]:
        async with self._aevery_bad_input_of(texts, list):
            with self._cached_as("document"):
                return await super().aget_text_embedding_batch(texts, show_progress=show_progress, **kwargs)

    async def _aget_text_embeddings(self, texts: List[str]) -> List[Embedding]:
        return await embedding_threads.run(self._get_text_embeddings, texts)

    # ------------------------------------------------------------------ LlamaIndex images (document side)

    def get_image_embedding(self, img_file_path: Any) -> Embedding:
        """Embed one image (document side): a path or URL, ``pathlib.Path``, ``BytesIO``, bytes or ``PIL.Image``."""
        return super().get_image_embedding(img_file_path)

    async def aget_image_embedding(self, img_file_path: Any) -> Embedding:
        return await super().aget_image_embedding(img_file_path)

    def _get_image_embedding(self, img_file_path: Any) -> Embedding:
        return self._get_image_embeddings([img_file_path])[0]

    async def _aget_image_embedding(self, img_file_path: Any) -> Embedding:
        return await embedding_threads.run(self._get_image_embedding, img_file_path)

    def _get_image_embeddings(self, img_file_paths: List[Any]) -> List[Embedding]:
        """Images as str path / URL, ``pathlib.Path``, ``BytesIO``, bytes or ``PIL.Image``: one batched call."""
        with _naming_the_input(img_file_paths):
            return self._embed(_image_items(img_file_paths), self.text_instruction)

    def get_image_embedding_batch(self, img_file_paths: List[Any],
                                  show_progress: bool = False) -> List[Embedding]:
        """LlamaIndex's chunked batch call; an input error reports every bad image of ``img_file_paths`` by its
        position there (see :meth:`_every_bad_input_of`)."""
        with self._every_bad_input_of(img_file_paths, _image_items):
            return super().get_image_embedding_batch(img_file_paths, show_progress=show_progress)

    async def aget_image_embedding_batch(self, img_file_paths: List[Any],
                                         show_progress: bool = False) -> List[Embedding]:
        async with self._aevery_bad_input_of(img_file_paths, _image_items):
            return await super().aget_image_embedding_batch(img_file_paths, show_progress=show_progress)

    async def _aget_image_embeddings(self, img_file_paths: List[Any]) -> List[Embedding]:
        return await embedding_threads.run(self._get_image_embeddings, img_file_paths)

    # ------------------------------------------------------------------ video (VoyageEmbedding naming)

    def get_video_embedding(self, video_path: Any) -> Embedding:
        """Embed one video (document side): a file path, URL, bytes or a list of frames."""
        return self.get_video_embeddings([video_path])[0]

    def get_video_embeddings(self, video_paths: Sequence[Any]) -> List[Embedding]:
        """Embed videos (document side) in one batched call."""
        videos = list(video_paths)
        return self._embed_with_event([{"video": video} for video in videos], videos, self.text_instruction)

    async def aget_video_embedding(self, video_path: Any) -> Embedding:
        return await embedding_threads.run(self.get_video_embedding, video_path)

    async def aget_video_embeddings(self, video_paths: Sequence[Any]) -> List[Embedding]:
        return await embedding_threads.run(self.get_video_embeddings, video_paths)

    # ------------------------------------------------------------------ image / video / mixed queries

    def get_image_query_embedding(self, image: Any) -> Embedding:
        """Embed an image used as a *query* (with ``query_instruction``), for searching the shared space."""
        return self._embed_with_event([{"image": image}], [image], self.query_instruction)[0]

    def get_video_query_embedding(self, video: Any) -> Embedding:
        """Embed a video used as a *query* (with ``query_instruction``)."""
        return self._embed_with_event([{"video": video}], [video], self.query_instruction)[0]

    async def aget_image_query_embedding(self, image: Any) -> Embedding:
        return await embedding_threads.run(self.get_image_query_embedding, image)

    async def aget_video_query_embedding(self, video: Any) -> Embedding:
        return await embedding_threads.run(self.get_video_query_embedding, video)

    def get_multimodal_embedding(
        self,
        text: Optional[str] = None,
        image: Any = None,
        video: Any = None,
        instruction: Optional[str] = None,
    ) -> Embedding:
        """Embed one item made of any mix of text, image(s) and video(s).

        ``image`` / ``video`` may be a single source or a list. ``instruction`` defaults to ``text_instruction``
        (the document side); pass ``instruction=embed.query_instruction`` to embed a mixed *query*.
        """
        item: Dict[str, Any] = {}
        if text is not None:
            item["text"] = text
        if image is not None:
            item["image"] = image
        if video is not None:
            item["video"] = video
        if not item:
            raise ValueError("get_multimodal_embedding needs at least one of text, image or video.")
        chosen = self.text_instruction if instruction is None else instruction
        return self._embed_with_event([item], [item], chosen)[0]

    async def aget_multimodal_embedding(
        self,
        text: Optional[str] = None,
        image: Any = None,
        video: Any = None,
        instruction: Optional[str] = None,
    ) -> Embedding:
        return await embedding_threads.run(self.get_multimodal_embedding, text, image, video, instruction)

    # ------------------------------------------------------------------ node routing (transformation)

    def _route(self, nodes: Sequence[BaseNode]) -> Dict[str, List[tuple]]:
        groups: Dict[str, List[tuple]] = {kind: [] for kind in _MODALITIES}
        contentless = []
        for position, node in enumerate(nodes):
            kind, item = node_to_item(node)
            groups[kind].append((position, item))
            if kind != "text" and not node.get_content(metadata_mode=MetadataMode.EMBED).strip():
                contentless.append(f"{node.node_id} ({kind})")
        if contentless:
            # LlamaIndex indexes skip such nodes after they are embedded, saying only "Some nodes are missing content"
            warnings.warn(
                f"{len(contentless)} media node(s) have no embed content and LlamaIndex indexes will skip them: "
                f"{', '.join(contentless[:3])}{' ...' if len(contentless) > 3 else ''}. Give each some metadata and, "
                "for an ImageDocument or a generic Node, text_resource=MediaResource(text='') "
                "(media_file_extractor() does both)", UserWarning, stacklevel=3)
        return groups

    def _embed_media_group(self, group: List[tuple], show_progress: bool) -> List[Embedding]:
        items = [item for _, item in group]
        return self._embed_with_event(items, items, self.text_instruction, show_progress=show_progress)

    def _every_bad_node(self, error: Qwen3VLInputError, nodes: Sequence[BaseNode], groups: Dict[str, List[tuple]],
                        kind: str) -> Qwen3VLInputError:
        """`error`, raised by embedding the nodes of `groups[kind]` (its positions count in that group), with its
        positions in `nodes`, the bad nodes of the groups after it added (the core's checks before model work; no
        model work), and notes naming the bad nodes."""
        group = groups[kind]
        if not all(isinstance(each.index, int) and 0 <= each.index < len(group) for each in error.errors):
            name_the_nodes(error, [nodes[position].node_id for position, _ in group], "embedding")
            return error
        located = _joined(error, [each.located(group[position_of(each)][0], each.role) for each in error.errors])
        items: List[Any] = [None] * len(nodes)  # each routed node's core input, at the node's position
        for entries in groups.values():
            for position, item in entries:
                items[position] = item
        later = [position for other in _MODALITIES[_MODALITIES.index(kind) + 1:] for position, _ in groups[other]]
        every = self._with_bad_inputs_among(located, items, list, later)
        name_the_nodes(every, [node.node_id for node in nodes], "embedding")
        return every

    @staticmethod
    def _write(nodes: Sequence[BaseNode], groups: Dict[str, List[tuple]],
               embeddings: Dict[str, List[Embedding]]) -> Sequence[BaseNode]:
        # Only once every group has its vectors: a bad node leaves no node half-embedded.
        for kind, group in groups.items():
            for (position, _), embedding in zip(group, embeddings.get(kind, []), strict=True):
                nodes[position].embedding = embedding
        return nodes

    def __call__(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        """Embed nodes in place by modality (text, image, video), one batch per modality. An input error reports
        every bad node, by its position in `nodes` and (in notes) its id: once a modality fails, the nodes of the
        modalities after it are only checked (no model work)."""
        groups = self._route(nodes)
        show_progress = bool(kwargs.get("show_progress", False))
        embeddings: Dict[str, List[Embedding]] = {}
        for kind in _MODALITIES:
            if groups[kind]:
                try:
                    embeddings[kind] = (
                        self.get_text_embedding_batch([text for _, text in groups[kind]], **kwargs)
                        if kind == "text" else self._embed_media_group(groups[kind], show_progress))
                except Qwen3VLInputError as error:
                    raise self._every_bad_node(error, nodes, groups, kind) from None
        return self._write(nodes, groups, embeddings)

    async def acall(self, nodes: Sequence[BaseNode], **kwargs: Any) -> Sequence[BaseNode]:
        """Async :meth:`__call__`: the model runs in a worker thread; modalities are embedded one after another."""
        groups = await embedding_threads.run(self._route, nodes)  # decodes base64 images: 14-19 ms per 3 MB picture
        show_progress = bool(kwargs.get("show_progress", False))
        embeddings: Dict[str, List[Embedding]] = {}
        for kind in _MODALITIES:
            if groups[kind]:
                try:
                    embeddings[kind] = await (
                        self.aget_text_embedding_batch([text for _, text in groups[kind]], **kwargs)
                        if kind == "text" else embedding_threads.run(self._embed_media_group, groups[kind],
                                                                     show_progress))
                except Qwen3VLInputError as error:
                    raise await embedding_threads.run(self._every_bad_node, error, nodes, groups, kind) from None
        return self._write(nodes, groups, embeddings)


def _media_bundle(embed_model: Qwen3VLEmbedding, kind: str, media: Any, query_str: str) -> QueryBundle:
    if query_str:
        embedding = embed_model.get_multimodal_embedding(
            text=query_str, instruction=embed_model.query_instruction, **{kind: media}
        )
    elif kind == "image":
        embedding = embed_model.get_image_query_embedding(media)
    else:
        embedding = embed_model.get_video_query_embedding(media)
    path = str(media) if isinstance(media, (str, Path)) else None
    return QueryBundle(query_str=query_str, image_path=path, embedding=embedding)


def image_query_bundle(embed_model: Qwen3VLEmbedding, image: Any, query_str: str = "") -> QueryBundle:
    """A ``QueryBundle`` that searches an index by image: ``retriever.retrieve(image_query_bundle(embed, "q.jpg"))``.

    The bundle carries the image's query embedding, made with ``query_instruction`` (a vector retriever uses it as
    is), and, for a path or URL, ``image_path`` (so :class:`Qwen3VLRerank` reranks against the image too). With a
    ``query_str``, the embedding is of the text and the image together.
    """
    return _media_bundle(embed_model, "image", image, query_str)


def video_query_bundle(embed_model: Qwen3VLEmbedding, video: Any, query_str: str = "") -> QueryBundle:
    """Like :func:`image_query_bundle`, for a video query (``image_path`` is the only media slot a bundle has;
    :class:`Qwen3VLRerank` recognises a video there by its file extension)."""
    return _media_bundle(embed_model, "video", video, query_str)


async def aimage_query_bundle(embed_model: Qwen3VLEmbedding, image: Any, query_str: str = "") -> QueryBundle:
    """Async :func:`image_query_bundle`: the model runs in a worker thread, the event loop stays free."""
    return await embedding_threads.run(_media_bundle, embed_model, "image", image, query_str)


async def avideo_query_bundle(embed_model: Qwen3VLEmbedding, video: Any, query_str: str = "") -> QueryBundle:
    """Async :func:`video_query_bundle`."""
    return await embedding_threads.run(_media_bundle, embed_model, "video", video, query_str)
