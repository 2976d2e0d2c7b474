"""The reranker's shared query prefix (issue 8): the part of the prompt that all pairs of a query begin with runs once.

Every check compares the shared path with scoring each pair whole (`share_query_prefix=False`), which
tests/test_reranker.py checks against the official procedure.
"""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

import qwen3vl_integrations.core.reranker as reranker_module
from qwen3vl_integrations import Qwen3VLReranker
from qwen3vl_integrations.core.encoding import EncodedItem
from qwen3vl_integrations.core.inputs import Item, parse_items
from qwen3vl_integrations.core.prefix import QueryPrefix, common_prefix_length
from qwen3vl_integrations.core.runner import model_inputs

K = dict(device="cpu", min_pixels=4 * 32 * 32, max_pixels=64 * 32 * 32, total_pixels=256 * 32 * 32, max_frames=8)
ATOL = 1e-5
RED = Image.new("RGB", (160, 120), (220, 20, 30))
GREEN = Image.new("RGB", (100, 90), (20, 200, 30))
FRAMES = [Image.new("RGB", (64, 64), (30 * i, 90, 0)) for i in range(4)]

DOCUMENTS = [
    "a red thing",
    "blue sky and some more words " * 6,
    {"image": GREEN},
    {"image": GREEN, "text": "green!"},
    {"video": FRAMES},
    "",  # scored as NULL
    '"quoted',  # may merge with the ':' of "<Document>:" into one token
    "\nstarts with a newline",
]
QUERIES = {
    "text": "what is red?",
    "text ending in a newline": "ends with a newline?\n",  # "?\n" merges with the marker's "\n"
    "image and text": {"image": RED, "text": "what is red?"},
    "image only": {"image": RED},
    "video and text": {"video": FRAMES, "text": "a moving square"},
    "own instruction": {"text": "red", "instruction": "Find red things."},
    "special token in text": {"image": RED, "text": "x <|vision_end|> y"},
}


@pytest.fixture(scope="module")
def shared(tiny_reranker_path) -> Qwen3VLReranker:
    return Qwen3VLReranker(str(tiny_reranker_path), **K)


@pytest.fixture(scope="module")
def whole(tiny_reranker_path) -> Qwen3VLReranker:
    return Qwen3VLReranker(str(tiny_reranker_path), share_query_prefix=False, **K)


def language_model_tokens(reranker: Qwen3VLReranker, call) -> list[tuple[int, int]]:
    """(rows, tokens per row) of every language-model pass during `call()`."""
    shapes: list[tuple[int, int]] = []

    def hook(module, args, kwargs):
        shapes.append(tuple(kwargs["inputs_embeds"].shape[:2]))

    handle = reranker.load().backbone.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        call()
    finally:
        handle.remove()
    return shapes


@pytest.mark.parametrize("name", list(QUERIES))
def test_scores_equal_whole_pairs(shared, whole, name):
    query = QUERIES[name]
    expected = whole.score(query, DOCUMENTS, batch_size=3)
    np.testing.assert_allclose(shared.score(query, DOCUMENTS, batch_size=3), expected, atol=ATOL, rtol=0)
    np.testing.assert_allclose(shared.score(query, DOCUMENTS), expected, atol=ATOL, rtol=0)


@pytest.mark.parametrize("name", ["image and text", "video and text", "special token in text"])
def test_pairs_built_after_the_query_media_equal_whole_encodings(shared, name):
    """Pairs reuse the query's encoded media; their tensors equal a whole-prompt encoding exactly."""
    loaded = shared.load()
    (query,), _ = parse_items([QUERIES[name]], shared.policy, role="query")
    documents, _ = parse_items(DOCUMENTS, shared.policy, role="document")
    media = shared._prepare_media(query)
    prefix = shared._query_prefix(loaded, query, media, None, None)
    assert prefix.head_text and prefix.head_length > 0
    for document in documents:
        joined = shared._encode_pair(loaded, query, media, document, None, prefix)
        direct = shared._encode_pair(loaded, query, media, document, None)
        assert joined.leading is prefix.item  # the query's vision inputs are shared, not copied into the pair
        for key in ("input_ids", "mm_token_type_ids", "pixel_values", "image_grid_thw", "pixel_values_videos",
                    "video_grid_thw"):
            a = getattr(joined, key) if key.endswith("ids") else joined.vision(key)
            b = getattr(direct, key)
            assert (a is None) == (b is None), key
            if a is not None:
                assert torch.equal(a, b), key


def test_query_part_runs_once(shared, whole):
    """The language model sees the shared tokens once instead of once per pair."""
    query, documents = QUERIES["text"], DOCUMENTS[:4]
    whole_tokens = sum(rows * width for rows, width in
                       language_model_tokens(whole, lambda: whole.score(query, documents, batch_size=1)))
    shapes = language_model_tokens(shared, lambda: shared.score(query, documents, batch_size=1))
    shared_tokens = sum(rows * width for rows, width in shapes)
    assert len(shapes) == len(documents) + 1  # the query part, then one pass per document
    # The system prompt and the instruction alone are more than 30 tokens.
    assert whole_tokens - shared_tokens >= 30 * (len(documents) - 1)


def test_image_query_goes_through_the_vision_tower_once(shared, whole):
    patches: list[int] = []
    visual = shared.load().backbone.visual
    handle = visual.register_forward_pre_hook(lambda module, args: patches.append(int(args[0].shape[0])))
    try:
        shared.score(QUERIES["image only"], ["one", "two", "three", "four"], batch_size=2)
        once = list(patches)
        patches.clear()
        whole.score(QUERIES["image only"], ["one", "two", "three", "four"], batch_size=2)
    finally:
        handle.remove()
    assert len(once) == 1
    assert sum(patches) == 4 * once[0]


def test_single_document_is_scored_whole(shared, monkeypatch):
    calls = []
    original = reranker_module.inputs_after_prefix
    monkeypatch.setattr(reranker_module, "inputs_after_prefix", lambda *a: calls.append(1) or original(*a))
    shared.score("a query", ["one document"])
    assert calls == []
    shared.score("a query", ["one document", "another"])
    assert calls


TEXT, IMAGE, VIDEO = Item(texts=["what is red?"]), Item(images=[RED]), Item(texts=["moving"], videos=[FRAMES])


@pytest.mark.parametrize(("option", "device", "query", "expected"), [
    (None, "cpu", TEXT, True), (None, "cuda", TEXT, False), (None, "cuda", IMAGE, True), (None, "cuda", VIDEO, True),
    (True, "cuda", TEXT, True), (False, "cpu", IMAGE, False),
])
def test_which_queries_share_their_part(tiny_reranker_path, option, device, query, expected):
    """The default (None) shares on CPU, and on GPUs only for queries with images or videos; True or False decide."""
    reranker = Qwen3VLReranker(str(tiny_reranker_path), share_query_prefix=option, **K)
    loaded = SimpleNamespace(device=torch.device(device))
    assert reranker._shares_query_part(loaded, query) is expected


@pytest.mark.parametrize("shares", [True, False])
def test_scoring_follows_the_sharing_rule(shared, whole, monkeypatch, shares):
    calls = []
    original = reranker_module.inputs_after_prefix
    monkeypatch.setattr(reranker_module, "inputs_after_prefix", lambda *a: calls.append(1) or original(*a))
    monkeypatch.setattr(Qwen3VLReranker, "_shares_query_part", lambda self, loaded, query: shares)
    scores = shared.score("a query", ["one document", "another"])
    assert bool(calls) is shares
    np.testing.assert_allclose(scores, whole.score("a query", ["one document", "another"]), atol=ATOL, rtol=0)


def test_truncated_query_text_still_matches(tiny_reranker_path):
    """A query longer than max_length loses text in some pairs: each batch shares only what its pairs share."""
    short = Qwen3VLReranker(str(tiny_reranker_path), max_length=40, **K)
    reference = Qwen3VLReranker(str(tiny_reranker_path), max_length=40, share_query_prefix=False, **K)
    for query, documents in [("word " * 100, ["x", "y y"]), ("a few words", ["x " * 50, "y y", "z"]),
                             ({"image": RED, "text": "word " * 60}, ["x", "y"])]:
        np.testing.assert_allclose(short.score(query, documents), reference.score(query, documents),
                                   atol=ATOL, rtol=0)


def test_a_long_query_part_runs_only_as_far_as_pairs_can_share(tiny_reranker_path, monkeypatch):
    """A query part longer than max_length keeps its first max_length tokens (pairs, truncated, share no more): its
    keys and values were computed for every token of the query, however long, and the scores are as before."""
    short = Qwen3VLReranker(str(tiny_reranker_path), max_length=40, share_query_prefix=True, **K)
    reference = Qwen3VLReranker(str(tiny_reranker_path), max_length=40, share_query_prefix=False, **K)
    lengths: list[int] = []
    original = QueryPrefix.keys_values

    def measured(self, loaded):
        lengths.append(len(self.item))
        return original(self, loaded)

    monkeypatch.setattr(QueryPrefix, "keys_values", measured)
    for query in ["word " * 100, {"image": RED, "text": "word " * 60}]:
        np.testing.assert_allclose(short.score(query, ["x", "y y", "z"]), reference.score(query, ["x", "y y", "z"]),
                                   atol=ATOL, rtol=0)
    assert lengths and max(lengths) == 40


def test_several_queries_each_run_once(shared, whole, monkeypatch):
    computed = []
    original = QueryPrefix.keys_values

    def counting(self, loaded):
        if self._keys_values is None:
            computed.append(self)
        return original(self, loaded)

    monkeypatch.setattr(QueryPrefix, "keys_values", counting)
    first, second = "first query", {"image": RED, "text": "second"}
    pairs = [(first, "d1"), (second, "d2"), (first, "d3 d3"), (second, {"image": GREEN}), ("alone", "d5")]
    np.testing.assert_allclose(shared.score_pairs(pairs, batch_size=1), whole.score_pairs(pairs, batch_size=1),
                               atol=ATOL, rtol=0)
    assert len(computed) == 2  # once per query with several documents; "alone" is scored whole
    assert all(prefix._keys_values is None for prefix in computed)  # released when the call ends


@pytest.mark.parametrize("views", [True, False])
def test_cache_of_each_batch_views_the_query_part(shared, whole, monkeypatch, views):
    """Each micro-batch's cache holds views of the query part's keys and values (no copy per batch) where the
    cache's layers exist up front; a cache that adds its layers as they come gets copies. Same scores."""
    import transformers

    import qwen3vl_integrations.core.prefix as prefix_module

    if not views:
        monkeypatch.setattr(prefix_module, "_new_cache", lambda loaded: transformers.DynamicCache())
    shares_memory = []
    original = QueryPrefix.cache

    def cache(self, loaded, rows, length):
        made = original(self, loaded, rows, length)
        shares_memory.append([layer.keys.untyped_storage().data_ptr() == keys.untyped_storage().data_ptr()
                              for layer, (keys, _) in zip(made.layers, self._keys_values)])
        assert len(made.layers) == len(self._keys_values) and made.get_seq_length() == length
        return made

    monkeypatch.setattr(QueryPrefix, "cache", cache)
    documents = ["a red thing", "blue sky " * 5, "green"]
    np.testing.assert_allclose(shared.score("what is red?", documents, batch_size=2),
                               whole.score("what is red?", documents, batch_size=2), atol=ATOL, rtol=0)
    assert len(shares_memory) == 2 and all(all(batch) is views and any(batch) is views for batch in shares_memory)


def _item(ids: list[int], types: list[int] | None = None) -> EncodedItem:
    return EncodedItem(torch.tensor(ids), torch.tensor(types or [0] * len(ids)))


def test_common_prefix_length():
    assert common_prefix_length(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 4, 5])) == 2
    assert common_prefix_length(torch.tensor([1, 2]), torch.tensor([1, 2, 3])) == 2
    assert common_prefix_length(torch.tensor([7]), torch.tensor([1])) == 0
    assert common_prefix_length(torch.tensor([], dtype=torch.long), torch.tensor([1])) == 0


def test_shared_length_keeps_the_query_media_whole():
    prefix = QueryPrefix(_item([1, 2, 9, 9, 3, 4], [0, 0, 1, 1, 0, 0]))
    assert prefix.shared_length([_item([1, 2, 9, 9, 3, 4, 5]), _item([1, 2, 9, 9, 3, 6])]) == 5
    assert prefix.shared_length([_item([1, 2, 9, 9, 8])]) == 4
    assert prefix.shared_length([_item([1, 2, 9, 8])]) == 0  # would cut through the query's image
    assert QueryPrefix(_item([1, 2])).shared_length([_item([3, 4])]) == 0


def test_option_reaches_the_core_from_the_adapters(tiny_reranker_path):
    pytest.importorskip("langchain_core")
    from qwen3vl_integrations.langchain import Qwen3VLRerank

    reranker = Qwen3VLRerank(model=str(tiny_reranker_path), core_options={**K, "share_query_prefix": False})
    assert reranker.core_reranker.share_query_prefix is False


def test_token_budget_counts_the_shared_query_part(tiny_reranker_path):
    """Each row of a batch holds its own copy of the query part's keys and values: a long query means fewer rows."""
    reranker = Qwen3VLReranker(str(tiny_reranker_path), max_batch_tokens=400, **K)
    shapes = language_model_tokens(reranker, lambda: reranker.score("word " * 100, ["a", "b", "c", "d"]))
    assert len(shapes) == 5  # the query part once, then one document per pass
    assert all(rows == 1 for rows, _ in shapes)
    roomy = Qwen3VLReranker(str(tiny_reranker_path), max_batch_tokens=2000, **K)
    shapes = language_model_tokens(roomy, lambda: roomy.score("word " * 100, ["a", "b", "c", "d"]))
    assert [rows for rows, _ in shapes] == [1, 4]


@pytest.mark.parametrize("name", ["image and text", "video and text"])
def test_pairs_built_after_the_query_media_also_run_whole(shared, name):
    """A pair that holds the query's vision inputs by reference still runs on the plain path (collate brings them)."""
    loaded = shared.load()
    (query,), _ = parse_items([QUERIES[name]], shared.policy, role="query")
    documents, _ = parse_items([{"image": GREEN}, {"video": FRAMES}, "text"], shared.policy, role="document")
    media = shared._prepare_media(query)
    prefix = shared._query_prefix(loaded, query, media, None, None)
    joined = [shared._encode_pair(loaded, query, media, d, None, prefix) for d in documents]
    direct = [shared._encode_pair(loaded, query, media, d, None) for d in documents]
    torch.testing.assert_close(shared._forward_last_hidden(loaded, model_inputs(loaded, joined), len(joined)),
                               shared._forward_last_hidden(loaded, model_inputs(loaded, direct), len(direct)),
                               atol=ATOL, rtol=0)


@pytest.mark.parametrize("share", [True, False])
def test_batches_are_prepared_in_the_worker_threads(tiny_reranker_path, share, monkeypatch):
    """Padding and M-RoPE positions of both paths (after a shared query part, and whole pairs) are made in the
    preprocessing threads, ahead of the model, not on the thread that runs it."""
    import threading

    threads = []
    for name in ("inputs_after_prefix", "model_inputs"):
        original = getattr(reranker_module, name)

        def spy(*args, original=original, name=name):
            threads.append((name, threading.current_thread().name))
            return original(*args)

        monkeypatch.setattr(reranker_module, name, spy)
    reranker = Qwen3VLReranker(str(tiny_reranker_path), share_query_prefix=share, batch_size=2, preprocess_workers=2,
                               **K)
    reranker.score({"image": RED, "text": "red"}, ["one", {"image": GREEN}, "three", "four", "five", "six"])
    assert {name for name, _ in threads} == {"inputs_after_prefix" if share else "model_inputs"}
    assert len(threads) == 3 and all(thread.startswith("qwen3vl-prep") for _, thread in threads), threads


@pytest.mark.parametrize("share", [True, False])
def test_the_query_media_are_processed_once_per_call(tiny_reranker_path, monkeypatch, share):
    """Whether or not its key/value cache is shared, a query's images go through the processor once per call (with
    the query part), not once per pair; the scores equal each pair scored on its own."""
    reranker = Qwen3VLReranker(str(tiny_reranker_path), share_query_prefix=share, **K)
    documents = ["a red thing", {"image": GREEN}, "x"]
    singles = [reranker.score({"image": RED, "text": "red?"}, [d])[0] for d in documents]
    images_per_call = []
    original = reranker_module.encode

    def encode(processor, text, images, videos, raw_pixels=False):
        images_per_call.append(len(images))
        return original(processor, text, images, videos, raw_pixels)

    monkeypatch.setattr(reranker_module, "encode", encode)
    scores = reranker.score({"image": RED, "text": "red?"}, documents)
    # the query part with its image first, then each pair (in batch order) with only its document's images
    assert images_per_call[0] == 1 and sorted(images_per_call[1:]) == [0, 0, 1]
    np.testing.assert_allclose(scores, singles, atol=ATOL, rtol=0)
