"""Calls that wait for the model while it is busy run their rows in one forward pass (core/joining.py)."""
from __future__ import annotations

import threading
import time
from typing import Any, Callable

import numpy as np
import pytest
import torch

from qwen3vl_integrations import Qwen3VLEmbedder
from qwen3vl_integrations.core import runner
from qwen3vl_integrations.core import pixels
from qwen3vl_integrations.core.joining import join_rows
from qwen3vl_integrations.core.runner import ModelInputs

TINY = dict(device="cpu", min_pixels=4 * 32 * 32, max_pixels=64 * 32 * 32, total_pixels=256 * 32 * 32, max_frames=8)

CALLS = [  # (inputs, options) of one call each: short texts, several instructions and output options
    (["a red circle"], {}),
    ([{"text": "find the slide about oceans", "instruction": "Find slides."}], {}),
    (["two", "texts in one call"], {"precision": "ubinary"}),
    (["a much longer query about a dog that plays on a beach at sunset with a ball"], {"normalize": False}),
    (["q"], {"instruction": "Retrieve passages."}),
]


def close(got: np.ndarray, expected: np.ndarray) -> bool:
    return got.shape == expected.shape and got.dtype == expected.dtype and bool(
        np.abs(got.astype(np.float64) - expected.astype(np.float64)).max() <= 1e-5)


class Passes:
    """Counts the backbone's forward passes and the rows each ran."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        self.rows: list[int] = []
        self._hook = backbone.register_forward_hook(lambda module, args, kwargs, out: self.rows.append(
            kwargs["input_ids"].shape[0]), with_kwargs=True)

    def close(self) -> None:
        self._hook.remove()


def while_busy(loaded: Any, calls: list[Callable[[], Any]], joining: int | None = None,
               settle: float = 0.0) -> tuple[list, Passes]:
    """Run each call in its own thread while the test holds the model, let the model go once `joining` calls (all,
    by default) wait to join and `settle` seconds more have passed, and return the calls' results and the forward
    passes they ran."""
    results: list = [None] * len(calls)
    failures: list[BaseException] = []

    def call(k: int) -> None:
        try:
            results[k] = calls[k]()
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failures.append(exc)

    passes = Passes(loaded.backbone)
    threads = [threading.Thread(target=call, args=(k,)) for k in range(len(calls))]
    try:
        with loaded.lock:  # the model is busy
            for thread in threads:
                thread.start()
            deadline = time.monotonic() + 60
            expected = len(calls) if joining is None else joining
            while loaded.joiner.waiting < expected and time.monotonic() < deadline:
                time.sleep(0.005)
            assert loaded.joiner.waiting == expected, "the calls did not all wait for the model"
            time.sleep(settle)
        for thread in threads:
            thread.join(timeout=120)
    finally:
        passes.close()
    if failures:
        raise failures[0]
    return results, passes


def embedding(embedders: list[Qwen3VLEmbedder], calls: list[tuple[list, dict]]) -> list[Callable[[], Any]]:
    """The calls, each as a function, taken by the embedders in turn."""
    return [lambda k=k, items=items, options=options: embedders[k % len(embedders)].embed(items, **options)
            for k, (items, options) in enumerate(calls)]


@pytest.fixture(scope="module")
def alone(tiny_embedder):
    return [tiny_embedder.embed(items, **options) for items, options in CALLS]


def test_waiting_calls_run_in_one_pass(tiny_embedder, alone):
    joined_before = tiny_embedder.load().joiner.joined
    results, passes = while_busy(tiny_embedder.load(), embedding([tiny_embedder], CALLS))
    assert passes.rows == [6]  # one pass ran the six rows of the five calls
    assert tiny_embedder.load().joiner.joined - joined_before == 4
    assert all(close(got, expected) for got, expected in zip(results, alone))  # each call's own output options
    assert not np.allclose(np.linalg.norm(results[3], axis=1), 1.0)  # normalize=False kept for its own call


def test_joined_rows_keep_every_callers_limits(tiny_embedding_path, tiny_embedder, alone):
    small_batches = Qwen3VLEmbedder(str(tiny_embedding_path), batch_size=2, **TINY)
    one_text_calls = [call for call in CALLS if len(call[0]) == 1]
    results, passes = while_busy(tiny_embedder.load(), embedding([small_batches], one_text_calls))
    assert passes.rows == [2, 2]  # 4 calls of one row, at most 2 rows per pass
    expected = [e for e, call in zip(alone, CALLS) if len(call[0]) == 1]
    assert all(close(r, e) for r, e in zip(results, expected))

    # A caller with a budget of 30 padded tokens joins nobody (each prompt is longer than 15 tokens).
    tight = Qwen3VLEmbedder(str(tiny_embedding_path), max_batch_tokens=30, **TINY)
    _, passes = while_busy(tiny_embedder.load(), embedding([tight, tiny_embedder], one_text_calls))
    assert len(passes.rows) >= 3 and sum(passes.rows) == 4


def test_joined_rows_keep_each_calls_own_batch_size(tiny_embedder, alone):
    """A call's batch_size (not only its object's) caps a joined pass: batch_size=1 saves memory, joined or not."""
    one_text_calls = [(items, {**options, "batch_size": 1}) for items, options in CALLS if len(items) == 1]
    results, passes = while_busy(tiny_embedder.load(), embedding([tiny_embedder], one_text_calls))
    assert passes.rows == [1, 1, 1, 1]  # the object's batch_size (32) let them run as one pass of 4
    expected = [e for e, call in zip(alone, CALLS) if len(call[0]) == 1]
    assert all(close(r, e) for r, e in zip(results, expected))


def test_a_failed_joined_pass_leaves_every_call_to_run_alone(tiny_embedder, alone, monkeypatch):
    forward = runner._last_token_states

    def no_joined_rows(loaded, inputs, *options):
        if len(inputs.last) > 2:
            raise RuntimeError("CUDA out of memory (simulated)")
        return forward(loaded, inputs, *options)

    monkeypatch.setattr(runner, "_last_token_states", no_joined_rows)
    results, passes = while_busy(tiny_embedder.load(), embedding([tiny_embedder], CALLS))
    assert sum(passes.rows) == 6 and max(passes.rows) <= 2  # (the hook sees the passes that ran)
    assert all(close(got, expected) for got, expected in zip(results, alone))


def test_only_rows_from_their_first_token_join(tiny_embedder, tiny_reranker, media_dir, monkeypatch):
    seen: list[bool] = []
    can_join = runner.can_join
    monkeypatch.setattr(runner, "can_join", lambda inputs: seen.append(can_join(inputs)) or seen[-1])
    tiny_embedder.embed(["text"])
    tiny_embedder.embed([{"image": media_dir / "red.png"}])
    tiny_reranker.score("a query", ["one document", "another document"])  # rows after a cached query part
    tiny_reranker.score("a query", ["one document"])  # one pair: it runs whole
    assert seen == [True, True, False, True]


MEDIA_CALLS = [  # (items, options): images of three sizes, two videos of frames, and a text, in their own calls
    ([{"image": "red.png"}], {}),
    ([{"video": "frames:4"}], {}),
    ([{"image": "gray.png", "text": "a gradient"}, {"image": "blue.jpg"}], {"instruction": "Find pictures."}),
    (["only text"], {}),
    ([{"video": "frames:6", "text": "a clip"}], {"dimensions": 64}),
    ([{"image": "red.png", "text": "the same picture"}], {"precision": "ubinary"}),
]


def media_calls(media_dir) -> list[tuple[list, dict]]:
    """MEDIA_CALLS with the files of `media_dir` and frames made up."""
    def item(value: Any) -> Any:
        if isinstance(value, dict):
            return {key: item(v) for key, v in value.items()}
        if isinstance(value, str) and value.startswith("frames:"):
            count = int(value.split(":")[1])
            return [np.full((64, 96, 3), 40 * k, dtype=np.uint8) for k in range(count)]
        if isinstance(value, str) and value.endswith((".png", ".jpg")):
            return str(media_dir / value)
        return value

    return [([item(x) for x in items], options) for items, options in MEDIA_CALLS]


@pytest.mark.parametrize("images_sent_as", ["float32", "uint8"])
def test_waiting_calls_with_images_and_videos_join_their_kind(tiny_embedder, media_dir, monkeypatch, images_sent_as):
    """Image calls run in one pass, video calls in another, the text call alone; each call's output as alone. Images
    are sent as 8-bit patches on GPUs and normalised there: the same here, with the CPU taken for such a device."""
    calls = media_calls(media_dir)
    alone = [tiny_embedder.embed(items, **options) for items, options in calls]
    sent: list[tuple[torch.dtype, int]] = []
    if images_sent_as == "uint8":
        monkeypatch.setattr(pixels, "DEVICE_TYPES", frozenset({"cuda", "cpu"}))
        normalize = runner.normalize_pixels
        monkeypatch.setattr(runner, "normalize_pixels", lambda processor, patches: sent.append(
            (patches.dtype, len(patches))) or normalize(processor, patches))
    results, passes = while_busy(tiny_embedder.load(), embedding([tiny_embedder], calls))
    assert sorted(passes.rows) == [1, 2, 4]  # 4 image rows, 2 video rows, 1 text row
    if images_sent_as == "uint8":  # one pass normalised the patches of all four images, sent as 8-bit values
        assert len(sent) == 1 and sent[0][0] == torch.uint8
    assert all(close(got, expected) for got, expected in zip(results, alone))


def test_reranking_calls_of_whole_pairs_join(tiny_reranker_path):
    """Pairs that run whole (GPUs' default for text queries) join like queries; the scores are each call's own."""
    from qwen3vl_integrations import Qwen3VLReranker

    reranker = Qwen3VLReranker(str(tiny_reranker_path), share_query_prefix=False, **TINY)
    calls = [("a red circle", ["a circle that is red", "a blue square"]), ("oceans", ["the sea", "a desert"]),
             ("q", ["one document"])]
    alone = [reranker.score(query, documents) for query, documents in calls]
    results, passes = while_busy(reranker.load(), [lambda call=call: reranker.score(*call) for call in calls])
    assert passes.rows == [5]
    assert all(close(got, expected) for got, expected in zip(results, alone))


def test_an_object_with_joining_off_runs_its_own_passes(tiny_embedding_path, tiny_embedder, alone):
    """`join_concurrent_calls=False`: that object's calls run alone, while other objects' calls still join."""
    apart = Qwen3VLEmbedder(str(tiny_embedding_path), join_concurrent_calls=False, **TINY)
    assert apart.load() is tiny_embedder.load()
    calls = embedding([apart, tiny_embedder], CALLS)  # calls 0, 2, 4 by `apart`: 1, 2 and 1 rows
    results, passes = while_busy(tiny_embedder.load(), calls, joining=2, settle=0.5)
    assert sorted(passes.rows) == [1, 1, 2, 2]  # calls 1 and 3 joined; 0, 2 and 4 ran alone
    assert all(close(r, e) for r, e in zip(results, alone))


def test_join_rows_pads_text_to_the_widest_row():
    def part(ids: list[list[int]]) -> ModelInputs:
        width = max(map(len, ids))
        input_ids = torch.tensor([row + [7] * (width - len(row)) for row in ids])
        return ModelInputs({"input_ids": input_ids, "mm_token_type_ids": torch.zeros_like(input_ids),
                            "position_ids": torch.arange(width).repeat(3, len(ids), 1)},
                           torch.tensor([len(row) - 1 for row in ids]))

    joined = ModelInputs(*join_rows([part([[1, 2, 3]]), part([[4, 5], [6]])], pad_token_id=9))
    assert joined.batch["input_ids"].tolist() == [[1, 2, 3], [4, 5, 9], [6, 7, 9]]
    assert joined.batch["position_ids"].shape == (3, 3, 3)
    assert joined.batch["position_ids"][0].tolist() == [[0, 1, 2], [0, 1, 0], [0, 1, 0]]
    assert joined.last.tolist() == [2, 1, 0]


def test_micro_batches_with_other_inputs_do_not_join():
    """Micro-batches built under different switches (here one with its padding mask) run in their own passes."""
    from qwen3vl_integrations.core.joining import ForwardJoiner, JoinLimits

    def part(masked: bool) -> ModelInputs:
        ids = torch.tensor([[1, 2, 3]])
        batch = {"input_ids": ids, "position_ids": torch.arange(3).repeat(3, 1, 1)}
        if masked:
            batch["attention_mask"] = torch.ones_like(ids)
        return ModelInputs(batch, torch.tensor([2]))

    joiner, lock, ran = ForwardJoiner(), threading.Lock(), []

    def forward(inputs: ModelInputs) -> torch.Tensor:
        ran.append(sorted(inputs.batch))
        return torch.zeros(len(inputs.last), 4)

    parts = [part(False), part(True), part(False)]
    join = lambda inputs: ModelInputs(*join_rows(inputs, pad_token_id=0))  # noqa: E731
    threads = [threading.Thread(target=joiner.run, args=(lock, p, JoinLimits(8, 1024), join, forward)) for p in parts]
    with lock:
        for thread in threads:
            thread.start()
        deadline = time.monotonic() + 30
        while joiner.waiting < 3 and time.monotonic() < deadline:
            time.sleep(0.005)
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(map(tuple, ran)) == [("attention_mask", "input_ids", "position_ids"), ("input_ids", "position_ids")]
    assert joiner.passes == 2 and joiner.joined == 1


def test_the_adapters_pass_the_option_through_core_options(tiny_embedding_path):
    from qwen3vl_integrations.langchain import Qwen3VLEmbeddings
    from qwen3vl_integrations.llama_index import Qwen3VLEmbedding

    options = {"join_concurrent_calls": False, **TINY}
    lc = Qwen3VLEmbeddings(model_name=str(tiny_embedding_path), core_options=options)
    li = Qwen3VLEmbedding(model_name=str(tiny_embedding_path), core_options=options)
    assert lc.core_embedder.join_concurrent_calls is False
    assert li.embedder.join_concurrent_calls is False
    assert Qwen3VLEmbedder(str(tiny_embedding_path), **TINY).join_concurrent_calls is True


def test_joined_micro_batches_are_page_locked_on_cuda(monkeypatch):
    """A joined micro-batch goes to a CUDA device by asynchronous copies, like any other: it is pinned."""
    from types import SimpleNamespace

    pinned: list[int] = []

    def pin(tensor: torch.Tensor) -> torch.Tensor:
        pinned.append(id(tensor))
        return tensor.clone()

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda tensor: False)

    def part(ids: list[int]) -> ModelInputs:
        input_ids = torch.tensor([ids])
        return ModelInputs({"input_ids": input_ids, "position_ids": torch.arange(len(ids)).repeat(3, 1, 1)},
                           torch.tensor([len(ids) - 1]))

    loaded = SimpleNamespace(device=torch.device("cuda"), pad_token_id=0, backbone=None)
    joined = runner.joined_inputs(loaded, [part([1, 2]), part([3])])
    assert joined.batch["input_ids"].tolist() == [[1, 2], [3, 0]] and len(pinned) == 2
