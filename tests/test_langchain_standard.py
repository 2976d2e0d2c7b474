"""langchain-tests standard suites for `Qwen3VLEmbeddings`.

The unit suite runs with the real model name and sockets disabled: construction must load and download nothing.
The integration suite runs against the tiny random checkpoint from the session fixture `tiny_embedding_path`;
the standard base classes read `embedding_model_params` from the test instance, so an autouse fixture stores the
checkpoint path on the instance before the suite's `model` fixture builds the embeddings.
"""
from __future__ import annotations

from typing import Any

import pytest

pytest.importorskip("langchain_tests")

from langchain_tests.integration_tests import EmbeddingsIntegrationTests  # noqa: E402
from langchain_tests.unit_tests import EmbeddingsUnitTests  # noqa: E402

from qwen3vl_integrations.langchain import Qwen3VLEmbeddings  # noqa: E402

TINY_OPTIONS = dict(min_pixels=4 * 32 * 32, max_pixels=64 * 32 * 32, total_pixels=256 * 32 * 32, max_frames=8)


class TestQwen3VLEmbeddingsUnit(EmbeddingsUnitTests):
    @pytest.fixture(autouse=True)
    def _no_network(self, socket_disabled):
        """Like partner packages' `pytest --disable-socket`: construction must not touch the network."""

    @property
    def embeddings_class(self) -> type[Qwen3VLEmbeddings]:
        return Qwen3VLEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_name": "Qwen/Qwen3-VL-Embedding-2B", "device": "cpu", "dimensions": 1024}


class TestQwen3VLEmbeddingsIntegration(EmbeddingsIntegrationTests):
    @pytest.fixture(autouse=True)
    def _tiny_checkpoint(self, tiny_embedding_path):
        self._tiny_path = str(tiny_embedding_path)

    @property
    def embeddings_class(self) -> type[Qwen3VLEmbeddings]:
        return Qwen3VLEmbeddings

    @property
    def embedding_model_params(self) -> dict[str, Any]:
        return {"model_name": self._tiny_path, "device": "cpu", "core_options": TINY_OPTIONS}
