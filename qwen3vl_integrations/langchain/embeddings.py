"""LangChain `Embeddings` backed by Qwen3-VL-Embedding (text, images, video in one vector space)."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Sequence

from langchain_core.embeddings import Embeddings
from pydantic import AliasChoices, ConfigDict, Field, PrivateAttr, model_validator

from qwen3vl_integrations.core.async_calls import embedding_threads
from qwen3vl_integrations.core.inputs import input_list
from qwen3vl_integrations.core.prompts import DEFAULT_QUERY_INSTRUCTION

from ._core import DtypeNames, attach_core, build_embedder, lazy_core, to_float_lists

if TYPE_CHECKING:
    from qwen3vl_integrations.core.embedder import Qwen3VLEmbedder

__all__ = ["Qwen3VLEmbeddings"]

class Qwen3VLEmbeddings(DtypeNames, Embeddings):
    """Qwen3-VL-Embedding as a LangChain `Embeddings`, with image and video methods.

    Text queries (`embed_query`) get `query_instruction`; documents, images and videos get `document_instruction`
    (``None``: the model's default ``"Represent the user's input."``), as the model's authors use it.

    Constructing it loads nothing and touches no network: the core embedder is created on first use and its
    weights are loaded through the core's process-wide registry, so this object, a LlamaIndex
    `Qwen3VLEmbedding` and a core `Qwen3VLEmbedder` with the same model, device and dtype share one
    copy of the model.

    Example:
        ```python
        from qwen3vl_integrations.langchain import Qwen3VLEmbeddings

        emb = Qwen3VLEmbeddings(model_name="Qwen/Qwen3-VL-Embedding-2B")
        doc_vectors = emb.embed_documents(["A cat on a sofa.", "A bowl of ramen."])
        query_vector = emb.embed_query("Which picture shows a pet?")
        image_vectors = emb.embed_image(uris=["data/cat.jpg"])    # vector stores call it this way
        video_vectors = emb.embed_video(uris=["data/clip.mp4"])
        ```
    """

    model_config = ConfigDict(
        extra="forbid", protected_namespaces=(), populate_by_name=True, arbitrary_types_allowed=True
    )

    # `model=` works too; type checkers see `model_name=` (an `alias` would make them accept `model=` only)
    model_name: str = Field(default="Qwen/Qwen3-VL-Embedding-2B",
                            validation_alias=AliasChoices("model_name", "model"))
    """Hugging Face model id or local checkpoint folder."""
    device: str | None = None
    """Torch device (``None``: the core picks CUDA, then MPS, then CPU)."""
    dtype: Any = None
    """Torch dtype or its name (``None``: the core's default for the device)."""
    dimensions: int | None = None
    """Matryoshka (MRL) output size: the vectors are truncated to this many dimensions and re-normalized."""
    query_instruction: str | None = DEFAULT_QUERY_INSTRUCTION
    """Instruction for `embed_query` (``None``: the model's default instruction)."""
    document_instruction: str | None = None
    """Instruction for documents, images and videos (``None``: the model's default instruction)."""
    batch_size: int | None = None
    """Items per forward pass (``None``: the core's default)."""
    core_options: dict[str, Any] = Field(default_factory=dict)
    """Extra keyword arguments for the core `Qwen3VLEmbedder` (e.g. ``max_pixels``, ``fps``, ``max_frames``,
    ``attn_implementation``, ``allow_remote``)."""
    embedder: Any = Field(default=None, exclude=True)
    """An existing core `Qwen3VLEmbedder` to use instead of building one from the fields above."""

    _core: Any = PrivateAttr(default=None)
    _core_options: Any = PrivateAttr(default=None)

    @model_validator(mode="after")
    def _attach_embedder(self) -> "Qwen3VLEmbeddings":
        attach_core(self, "embedder", "embed")
        return self

    @property
    def core_embedder(self) -> Qwen3VLEmbedder:
        """The core `Qwen3VLEmbedder` (created on first access; creating it loads no weights)."""
        if self.embedder is not None:
            return self.embedder
        return lazy_core(self, build_embedder, self.model_name, self.device, self.dtype, self.batch_size,
                         self.core_options)

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _listed(values: Any, method: str) -> list[Any]:
        return input_list(values, f"{method}() takes a list; wrap a single input in a list")

    def _embed(self, items: list[Any], instruction: str | None) -> list[list[float]]:
        if not items:
            return []
        kwargs: dict[str, Any] = {"instruction": instruction}
        if self.dimensions is not None:
            kwargs["dimensions"] = self.dimensions
        if self.batch_size is not None:
            kwargs["batch_size"] = self.batch_size
        return to_float_lists(self.core_embedder.embed(items, **kwargs))

    # ------------------------------------------------------------------ Embeddings API
    def embed_documents(self, texts: list[str]) -> list[list[float]]:
        """Embed document texts (with `document_instruction`)."""
        return self._embed(self._listed(texts, "embed_documents"), self.document_instruction)

    def embed_query(self, text: str) -> list[float]:
        """Embed a query text (with `query_instruction`); use it to search texts, images and videos alike."""
        return self._embed([text], self.query_instruction)[0]

    async def aembed_documents(self, texts: list[str]) -> list[list[float]]:
        return await embedding_threads.run(self.embed_documents, texts)

    async def aembed_query(self, text: str) -> list[float]:
        return await embedding_threads.run(self.embed_query, text)

    # ------------------------------------------------------------------ images, video, mixed
    def embed_image(self, uris: Sequence[Any]) -> list[list[float]]:
        """Embed images given as paths or URLs (also ``data:`` URIs, bytes, PIL images).

        Image-aware vector stores (``Chroma.add_images``, ``similarity_search_by_image``, LanceDB) call this as
        ``embed_image(uris=[...])``.
        """
        return self._embed([{"image": uri} for uri in self._listed(uris, "embed_image")], self.document_instruction)

    def embed_images(self, uris: Sequence[Any]) -> list[list[float]]:
        """Alias of `embed_image`."""
        return self.embed_image(uris=uris)

    def embed_video(self, uris: Sequence[Any]) -> list[list[float]]:
        """Embed videos given as file paths or URLs (or lists of frames)."""
        return self._embed([{"video": uri} for uri in self._listed(uris, "embed_video")], self.document_instruction)

    def embed_multimodal(self, items: list[Any], *, instruction: str | None = None) -> list[list[float]]:
        """Embed mixed items: plain strings (text) or dicts with ``text`` / ``image`` / ``video``.

        ``instruction`` defaults to `document_instruction`; a dict's own ``"instruction"`` key wins. To embed a
        multimodal *query*, pass ``instruction=emb.query_instruction``.
        """
        return self._embed(self._listed(items, "embed_multimodal"),
                           instruction if instruction is not None else self.document_instruction)

    async def aembed_image(self, uris: Sequence[Any]) -> list[list[float]]:
        return await embedding_threads.run(self.embed_image, uris)

    async def aembed_video(self, uris: Sequence[Any]) -> list[list[float]]:
        return await embedding_threads.run(self.embed_video, uris)

    async def aembed_multimodal(self, items: list[Any], *, instruction: str | None = None) -> list[list[float]]:
        return await embedding_threads.run(self.embed_multimodal, items, instruction=instruction)
