"""``Qwen3VLRerank``: Qwen3-VL-Reranker as a LlamaIndex node postprocessor, for text, image and video nodes.

The query is ``query_bundle.query_str`` and/or ``query_bundle.image_path`` (an image, or a video recognised by its
file extension). Documents are read from the nodes exactly as the embedding adapter reads them
(:mod:`qwen3vl_integrations.llama_index.nodes`). All model work happens in the core
:class:`~qwen3vl_integrations.Qwen3VLReranker`.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Dict, Iterator, List, Optional

from llama_index.core.bridge.pydantic import ConfigDict, Field, PrivateAttr
from llama_index.core.callbacks import CBEventType, EventPayload
from llama_index.core.instrumentation import get_dispatcher
from llama_index.core.instrumentation.events.rerank import ReRankEndEvent, ReRankStartEvent
from llama_index.core.postprocessor.types import BaseNodePostprocessor
from llama_index.core.schema import NodeWithScore, QueryBundle
from pydantic import AliasChoices

from ..core.async_calls import reranking_threads
from ._core import HoldsCoreObject
from .nodes import name_the_nodes, node_to_item, query_bundle_to_item

if TYPE_CHECKING:
    from ..core.reranker import Qwen3VLReranker

DEFAULT_RERANKER_MODEL = "Qwen/Qwen3-VL-Reranker-2B"

dispatcher = get_dispatcher(__name__)

__all__ = ["Qwen3VLRerank", "DEFAULT_RERANKER_MODEL"]


@dataclass
class _Reranking:
    """One rerank in progress: what to score, the scores the model gave, then the nodes kept."""

    query: Any
    documents: List[Any]
    scores: Any = None
    kept: List[NodeWithScore] = field(default_factory=list)


class Qwen3VLRerank(HoldsCoreObject, BaseNodePostprocessor):
    """Rerank retrieved nodes (text, ``ImageNode``, ``Node`` with image/video resources, nodes whose metadata names
    an image or video file) with Qwen3-VL-Reranker.

    Args:
        model: Hugging Face id or local folder (default ``Qwen/Qwen3-VL-Reranker-2B``).
        top_n: how many nodes to keep (None keeps all, reordered).
        instruction: the task instruction (None: the model's default).
        keep_retrieval_score: copy each node's previous score to ``node.node.metadata["retrieval_score"]``.
        batch_size: query-document pairs per forward pass (None: the core's default).
        device, dtype: as for the core (None: picked on first use).
        core_options: other ``Qwen3VLReranker`` constructor options.
        reranker: an existing core ``Qwen3VLReranker`` to use instead.

    Scores are relevance probabilities in (0, 1), written to ``NodeWithScore.score``; nodes are sorted best first.
    Emits ``ReRankStartEvent`` / ``ReRankEndEvent`` and a ``CBEventType.RERANKING`` callback event.
    """

    # An unknown keyword is an error, not silently ignored (LlamaIndex's default): `model_name=` (LangChain's
    # spelling, also accepted here) fell back to the default model.
    model_config = ConfigDict(extra="forbid")

    model: str = Field(default=DEFAULT_RERANKER_MODEL, description="Hugging Face id or local path.",
                       validation_alias=AliasChoices("model", "model_name"))
    top_n: Optional[int] = Field(default=5, gt=0, description="Number of nodes to return (None: all).")
    instruction: Optional[str] = Field(default=None, description="Task instruction (None: the model default).")
    keep_retrieval_score: bool = Field(
        default=False, description="Keep the retriever's score in metadata['retrieval_score']."
    )
    batch_size: Optional[int] = Field(default=None, gt=0, description="Pairs per forward pass (None: core default).")
    device: Optional[str] = Field(default=None, description="Torch device; None picks one on first use.")
    dtype: Optional[str] = Field(default=None, description="Torch dtype name; None uses the core default.")
    core_options: Dict[str, Any] = Field(
        default_factory=dict, description="Other keyword arguments for the core Qwen3VLReranker."
    )

    core_attribute: ClassVar[str] = "reranker"
    _reranker: Any = PrivateAttr(default=None)
    _owns_reranker: bool = PrivateAttr(default=True)

    def __init__(self, *, reranker: Any = None, **kwargs: Any) -> None:
        if reranker is not None:
            kwargs.setdefault("model", str(reranker.model_name_or_path))
        super().__init__(**kwargs)
        if reranker is not None:
            self._reranker = reranker
            self._owns_reranker = False

    @classmethod
    def class_name(cls) -> str:
        return "Qwen3VLRerank"

    @property
    def reranker(self) -> Qwen3VLReranker:
        """The core ``Qwen3VLReranker`` (built on first access and when its options change; weights load on the first
        scoring call, once per process for all objects with the same model)."""
        from .. import Qwen3VLReranker

        return self._core_object(Qwen3VLReranker, self.model, batch_size=self.batch_size, device=self.device,
                                 dtype=self.dtype)

    def _postprocess_nodes(
        self,
        nodes: List[NodeWithScore],
        query_bundle: Optional[QueryBundle] = None,
    ) -> List[NodeWithScore]:
        with self._reranking(nodes, query_bundle) as rerank:
            if rerank.documents:
                rerank.scores = self._scores(rerank.query, rerank.documents, nodes)
        return rerank.kept

    async def _apostprocess_nodes(
        self,
        nodes: List[NodeWithScore],
        query_bundle: Optional[QueryBundle] = None,
    ) -> List[NodeWithScore]:
        """The model runs in a worker thread so that the event loop stays free; the nodes get their scores back on
        the loop, so that a call given up on (a timeout, a cancelled task) leaves them as they were, although its
        thread runs on to the end."""
        with self._reranking(nodes, query_bundle) as rerank:
            if rerank.documents:
                rerank.scores = await reranking_threads.run(self._scores, rerank.query, rerank.documents, nodes)
        return rerank.kept

    @contextlib.contextmanager
    def _reranking(self, nodes: List[NodeWithScore], query_bundle: Optional[QueryBundle]) -> Iterator[_Reranking]:
        """The reranking around its model work, which the block does (here or in a worker thread): the block gets the
        query and documents to score and sets their scores; on leaving, the nodes get them and `kept` holds the
        nodes kept. Events and callbacks span the block; an error in it leaves the nodes as they were."""
        top_n = self.top_n if self.top_n is not None else len(nodes)
        dispatcher.event(ReRankStartEvent(query=query_bundle, nodes=nodes, top_n=top_n, model_name=self.model))
        if query_bundle is None:
            raise ValueError("Missing query bundle in extra info.")
        if len(nodes) == 0:
            yield _Reranking(query=None, documents=[])
            dispatcher.event(ReRankEndEvent(nodes=[]))
            return

        rerank = _Reranking(query=query_bundle_to_item(query_bundle),
                            documents=[node_to_item(node_with_score.node)[1] for node_with_score in nodes])
        with self.callback_manager.event(
            CBEventType.RERANKING,
            payload={
                EventPayload.NODES: nodes,
                EventPayload.MODEL_NAME: self.model,
                EventPayload.QUERY_STR: query_bundle.query_str,
                EventPayload.TOP_K: top_n,
            },
        ) as event:
            yield rerank
            scores = rerank.scores
            if scores is None or len(scores) != len(nodes):  # pragma: no cover - a core contract violation
                raise RuntimeError(f"the reranker returned no score per node ({len(nodes)} nodes)")

            for node_with_score, score in zip(nodes, scores):
                if self.keep_retrieval_score:
                    node_with_score.node.metadata["retrieval_score"] = node_with_score.score
                node_with_score.score = float(score)

            rerank.kept = sorted(nodes, key=lambda n: n.get_score(raise_error=True), reverse=True)[:top_n]
            event.on_end(payload={EventPayload.NODES: rerank.kept})

        dispatcher.event(ReRankEndEvent(nodes=rerank.kept))

    def _scores(self, query: Any, documents: List[Any], nodes: List[NodeWithScore]) -> Any:
        try:
            return self.reranker.score(query, documents, instruction=self.instruction, batch_size=self.batch_size)
        except ValueError as error:  # Qwen3VLInputError: say which nodes it was
            name_the_nodes(error, [n.node.node_id for n in nodes], "reranking", role="document")
            raise
