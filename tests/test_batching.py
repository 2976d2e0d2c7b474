"""Micro-batching: the plan (length-sorted, bounded by items and padded tokens), padding, and batch invariance."""
from __future__ import annotations

import itertools
import random
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from qwen3vl_integrations import Qwen3VLEmbedder
from qwen3vl_integrations.core import runner
from qwen3vl_integrations.core.batching import plan_batches
from qwen3vl_integrations.core.encoding import EncodedItem, collate

TINY = dict(device="cpu", min_pixels=4 * 32 * 32, max_pixels=64 * 32 * 32, total_pixels=256 * 32 * 32, max_frames=8)


# ------------------------------------------------------------------------------------------ plan_batches


def check_plan(costs, batch_size, max_batch_tokens, plan):
    flat = [p for batch in plan for p in batch]
    assert sorted(flat) == list(range(len(costs)))  # every position exactly once
    for batch in plan:
        assert 1 <= len(batch) <= batch_size
        padded = max(max(1, costs[p]) for p in batch) * len(batch)
        assert padded <= max_batch_tokens or len(batch) == 1  # only a single over-long item may exceed
    # Longest first, in one global order: sorted by cost, descending.
    ordered = [costs[p] for p in flat]
    assert ordered == sorted(ordered, reverse=True)


def test_plan_respects_batch_size_and_token_budget():
    rng = random.Random(0)
    for _ in range(200):
        costs = [rng.randint(1, 500) for _ in range(rng.randint(0, 40))]
        batch_size = rng.randint(1, 10)
        budget = rng.randint(1, 3000)
        check_plan(costs, batch_size, budget, plan_batches(costs, batch_size, budget))


def test_plan_examples():
    assert plan_batches([], 4, 100) == []
    assert plan_batches([5, 50, 10], 8, 1000) == [[1, 2, 0]]
    assert plan_batches([5, 50, 10], 2, 1000) == [[1, 2], [0]]
    # 50 + 10 padded to 2 x 50 = 100 tokens: fits a budget of 100, not of 99.
    assert plan_batches([5, 50, 10], 8, 100) == [[1, 2], [0]]
    assert plan_batches([5, 50, 10], 8, 99) == [[1], [2, 0]]
    # An item over the budget runs alone rather than failing.
    assert plan_batches([500, 1, 1], 8, 100) == [[0], [1, 2]]
    # Equal costs keep the input order (stable).
    assert plan_batches([7, 7, 7, 7], 2, 1000) == [[0, 1], [2, 3]]


def _plan_cost(costs, plan, overhead):
    return sum(len(batch) * max(max(1, costs[p]) for p in batch) + overhead for batch in plan)


def _best_cost_brute_force(costs, batch_size, budget, overhead):
    """Minimum of padded tokens + overhead per batch over every cut of the longest-first order."""
    order = sorted(range(len(costs)), key=lambda i: (-costs[i], i))
    best = None
    for mask in range(2 ** max(0, len(order) - 1)):
        plan, current = [], [order[0]] if order else []
        for k in range(1, len(order)):
            if mask >> (k - 1) & 1:
                plan.append(current)
                current = []
            current.append(order[k])
        if current:
            plan.append(current)
        if any(len(b) > batch_size or (len(b) > 1 and len(b) * max(max(1, costs[p]) for p in b) > budget)
               for b in plan):
            continue
        cost = _plan_cost(costs, plan, overhead)
        best = cost if best is None else min(best, cost)
    return best or 0


def test_min_padding_plan_is_optimal():
    rng = random.Random(1)
    for _ in range(300):
        costs = [rng.choice([rng.randint(1, 30), rng.randint(1, 400)]) for _ in range(rng.randint(0, 8))]
        batch_size, budget, overhead = rng.randint(1, 6), rng.randint(1, 1500), rng.choice([0, 16, 64, 1024])
        plan = plan_batches(costs, batch_size, budget, batch_overhead=overhead)
        check_plan(costs, batch_size, budget, plan)
        assert _plan_cost(costs, plan, overhead) == _best_cost_brute_force(costs, batch_size, budget, overhead)


def test_min_padding_plan_examples():
    # A small overhead: padding is a loss, so unequal items run alone and equal ones share a batch.
    assert plan_batches([10, 100, 10], 8, 10_000, batch_overhead=1) == [[1], [0, 2]]
    # A large overhead: one batch (300 padded tokens + 1000 beats 120 + 2000).
    assert plan_batches([10, 100, 10], 8, 10_000, batch_overhead=1000) == [[1, 0, 2]]
    # The limits still hold.
    assert plan_batches([10, 100, 10, 10], 2, 10_000, batch_overhead=1000) == [[1, 0], [2, 3]]
    assert plan_batches([10, 100, 10], 8, 150, batch_overhead=1000) == [[1], [0, 2]]


@pytest.mark.parametrize(("batch_size", "budget"), [(0, 10), (1, 0), (-1, 5)])
def test_plan_rejects_bad_limits(batch_size, budget):
    with pytest.raises(ValueError):
        plan_batches([1, 2], batch_size, budget)


# ------------------------------------------------------------------------------------------ collate


def test_collate_right_pads_and_points_at_the_last_real_token():
    a = EncodedItem(input_ids=torch.tensor([5, 6, 7]), mm_token_type_ids=torch.tensor([0, 1, 0]),
                    pixel_values=torch.ones(4, 3), image_grid_thw=torch.tensor([[1, 2, 2]]))
    b = EncodedItem(input_ids=torch.tensor([8]), mm_token_type_ids=torch.tensor([0]))
    c = EncodedItem(input_ids=torch.tensor([1, 2]), mm_token_type_ids=torch.tensor([0, 0]),
                    pixel_values=torch.zeros(8, 3), image_grid_thw=torch.tensor([[1, 2, 4]]))
    batch, last = collate([a, b, c], pad_token_id=99)
    assert batch["input_ids"].tolist() == [[5, 6, 7], [8, 99, 99], [1, 2, 99]]
    assert batch["attention_mask"].tolist() == [[1, 1, 1], [1, 0, 0], [1, 1, 0]]
    assert batch["mm_token_type_ids"].tolist() == [[0, 1, 0], [0, 0, 0], [0, 0, 0]]
    assert last.tolist() == [2, 0, 1]
    assert batch["pixel_values"].shape == (12, 3) and batch["pixel_values"][:4].eq(1).all()
    assert batch["image_grid_thw"].tolist() == [[1, 2, 2], [1, 2, 4]]
    assert "pixel_values_videos" not in batch and "video_grid_thw" not in batch


@pytest.mark.skipif(not torch.cuda.is_available(), reason="page-locked memory needs a CUDA driver")
def test_collate_into_page_locked_memory():
    a = EncodedItem(input_ids=torch.tensor([5, 6]), mm_token_type_ids=torch.tensor([1, 0]),
                    pixel_values=torch.randn(4, 3), image_grid_thw=torch.tensor([[1, 2, 2]]))
    b = EncodedItem(input_ids=torch.tensor([8]), mm_token_type_ids=torch.tensor([0]),
                    pixel_values=torch.randn(8, 3), image_grid_thw=torch.tensor([[1, 2, 4]]))
    plain, _ = collate([a, b], pad_token_id=0)
    pinned, _ = collate([a, b], pad_token_id=0, pin_memory=True)
    assert plain.keys() == pinned.keys()
    for key in plain:
        assert pinned[key].is_pinned() and torch.equal(pinned[key], plain[key]), key


@pytest.mark.parametrize("share_query_prefix", [True, False])
def test_every_batch_can_be_page_locked(tiny_embedder, tiny_reranker, media_dir, monkeypatch, share_query_prefix):
    """On CUDA each micro-batch is copied into page-locked memory with the same strides, and that copy refuses a
    tensor whose elements share memory (an expanded view): text positions made that way crashed the first GPU run."""
    seen: list[dict[str, torch.Tensor]] = []
    page_locked = runner.page_locked
    monkeypatch.setattr(runner, "page_locked", lambda loaded, batch: seen.append(batch) or page_locked(loaded, batch))
    monkeypatch.setattr(tiny_reranker, "share_query_prefix", share_query_prefix)
    texts = ["a short text", "a longer text about a red car in front of a white house"]
    tiny_embedder.embed(texts)
    tiny_embedder.embed([{"image": media_dir / "red.png"}, "and a text"])
    tiny_reranker.score("which car is red?", texts + [{"image": media_dir / "wide.png"}])
    tiny_reranker.score({"image": media_dir / "gray.png"}, texts)
    assert any("pixel_values" in batch for batch in seen) and any("pixel_values" not in batch for batch in seen)
    for batch in seen:
        for key, value in batch.items():
            assert torch._debug_has_internal_overlap(value) == 0, key


def test_page_locked_takes_views_whose_elements_share_memory(monkeypatch):
    """page_locked pins whatever a batch holds: an expanded view is made contiguous before the pinning copy."""
    def pin_as_cuda_does(tensor: torch.Tensor) -> torch.Tensor:  # a copy into a tensor of the same strides
        return torch.empty_strided(tensor.size(), tensor.stride(), dtype=tensor.dtype).copy_(tensor)

    monkeypatch.setattr(torch.Tensor, "pin_memory", pin_as_cuda_does)
    monkeypatch.setattr(torch.Tensor, "is_pinned", lambda tensor: False)
    batch = {"position_ids": torch.arange(5).expand(3, 2, 5), "input_ids": torch.ones(2, 5, dtype=torch.long),
             "pixel_values": torch.randn(4, 6).t()}
    pinned = runner.page_locked(SimpleNamespace(device=torch.device("cuda")), batch)
    assert pinned.keys() == batch.keys() and all(torch.equal(pinned[k], batch[k]) for k in batch)


# ------------------------------------------------------------------------------------------ batch invariance


@pytest.fixture(scope="module")
def emb(tiny_embedding_path) -> Qwen3VLEmbedder:
    return Qwen3VLEmbedder(str(tiny_embedding_path), **TINY)


@pytest.fixture(scope="module")
def mixed_items(media_dir):
    frames = [Image.new("RGB", (64, 48), (50 * i, 20, 200 - 50 * i)) for i in range(4)]
    return [
        "a",
        {"image": media_dir / "red.png"},
        "a considerably longer piece of text about a red car parked in front of a white house " * 3,
        {"video": media_dir / "clip.mp4", "text": "clip"},
        {"text": ["b", "c"], "instruction": "Find related passages"},
        {"image": media_dir / "wide.png", "text": "wide"},
        {"video": frames},
        {},
        {"image": [media_dir / "gray.png", media_dir / "rgba.png"]},
        "a",  # a duplicate
        "medium length text with a few more words",
    ]


@pytest.fixture(scope="module")
def one_by_one(emb, mixed_items) -> np.ndarray:
    return np.concatenate([emb.embed([item]) for item in mixed_items])


def test_one_call_equals_one_by_one(emb, mixed_items, one_by_one):
    together = emb.embed(mixed_items)
    assert together.shape == (len(mixed_items), 64)
    assert np.abs(together - one_by_one).max() <= 1e-5
    # Order restored: each row is closest to its own single-item vector (not just equal as a set).
    distances = np.abs(together[:, None] - one_by_one[None]).max(-1)
    for row in range(len(mixed_items)):
        same = [c for c in range(len(mixed_items)) if distances[row, c] <= 1e-5]
        assert row in same and all(mixed_items[c] == mixed_items[row] for c in same)
    np.testing.assert_allclose(together[0], together[9], atol=1e-6)


def test_batches_really_mix_lengths(emb, mixed_items, monkeypatch):
    """The invariance test above is only meaningful if rows of different lengths share a padded batch."""
    shapes = []
    original = emb._forward_last_hidden

    def spy(loaded, inputs, batch_size):
        shapes.append((inputs.last + 1).tolist())
        return original(loaded, inputs, batch_size)

    monkeypatch.setattr(emb, "_forward_last_hidden", spy)
    emb.embed(mixed_items)
    assert any(len(set(lengths)) > 1 for lengths in shapes)
    assert sum(len(lengths) for lengths in shapes) == len(mixed_items)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_padded_batches_need_no_padding_mask(tiny_embedding_path, tiny_reranker_path, mixed_items, attention,
                                             monkeypatch):
    """Rows are right-padded and attention is causal, so the model gets no padding mask; vectors and scores (whole
    pairs and after a shared query part, whose rows are padded too) equal those computed with the mask."""
    from qwen3vl_integrations import Qwen3VLReranker
    from qwen3vl_integrations.core import runner as runner_module

    options = {**TINY, "attn_implementation": attention, "batch_size": 4}
    emb = Qwen3VLEmbedder(str(tiny_embedding_path), **options)
    rerankers = [Qwen3VLReranker(str(tiny_reranker_path), share_query_prefix=share, **options)
                 for share in (True, False)]
    query, documents = {"text": "a red car", "image": mixed_items[1]["image"]}, [d for d in mixed_items if d != {}]
    masks = []
    backbones = {id(m.load().backbone): m.load().backbone for m in (emb, *rerankers)}.values()
    handles = [backbone.register_forward_pre_hook(
        lambda module, args, kwargs: masks.append(kwargs.get("attention_mask")), with_kwargs=True)
        for backbone in backbones]

    def run() -> list[np.ndarray]:
        return [emb.embed(mixed_items), *(np.asarray(r.score(query, documents)) for r in rerankers)]

    try:
        without = run()
        assert masks and all(mask is None for mask in masks)
        masks.clear()
        monkeypatch.setattr(runner_module, "SEND_PADDING_MASK", True)
        with_mask = run()
        assert any(mask is not None and not mask.all() for mask in masks)  # padded rows were really masked
    finally:
        for handle in handles:
            handle.remove()
    for got, expected in zip(without, with_mask):
        assert np.abs(got - expected).max() <= 1e-6


@pytest.mark.parametrize(("batch_size", "max_batch_tokens"), [(1, 16384), (2, 16384), (3, 400), (100, 100_000),
                                                              (32, 1)])
def test_batching_options_do_not_change_results(tiny_embedding_path, mixed_items, one_by_one, batch_size,
                                                max_batch_tokens):
    e = Qwen3VLEmbedder(str(tiny_embedding_path), batch_size=batch_size, max_batch_tokens=max_batch_tokens, **TINY)
    assert np.abs(e.embed(mixed_items) - one_by_one).max() <= 1e-5


def test_call_level_batch_size(emb, mixed_items, one_by_one):
    for batch_size in (1, 4):
        assert np.abs(emb.embed(mixed_items, batch_size=batch_size) - one_by_one).max() <= 1e-5


def test_shuffled_input_gives_shuffled_output(emb, mixed_items, one_by_one):
    order = [4, 10, 0, 7, 2, 9, 6, 1, 8, 3, 5]
    got = emb.embed([mixed_items[i] for i in order])
    assert np.abs(got - one_by_one[order]).max() <= 1e-5


def test_worker_threads_pad_the_batches(tiny_embedding_path, mixed_items, one_by_one, monkeypatch):
    """With preprocessing workers, the plain forward's batches are padded in those threads, not the model's."""
    import threading

    from qwen3vl_integrations.core import runner as runner_module

    threads = []
    original = runner_module.collate

    def spy(*args, **kwargs):
        threads.append(threading.current_thread().name)
        return original(*args, **kwargs)

    monkeypatch.setattr(runner_module, "collate", spy)
    emb = Qwen3VLEmbedder(str(tiny_embedding_path), **{**TINY, "batch_size": 2, "preprocess_workers": 2})
    together = emb.embed(mixed_items)
    assert len(threads) >= len(mixed_items) // 2
    assert all(name.startswith("qwen3vl-prep") for name in threads), threads
    assert np.abs(together - one_by_one).max() <= 1e-5


def test_vision_positions_come_with_the_batch(tiny_embedding_path, tiny_reranker_path, mixed_items, one_by_one,
                                             monkeypatch):
    """M-RoPE positions of image and video prompts are computed on the CPU with the batch, never inside the forward
    pass (on a GPU that costs several host synchronisations per image); the vectors and scores do not change."""
    from qwen3vl_integrations import Qwen3VLReranker

    emb = Qwen3VLEmbedder(str(tiny_embedding_path), **TINY)
    reranker = Qwen3VLReranker(str(tiny_reranker_path), share_query_prefix=False, **TINY)
    documents = mixed_items[:4]
    scores = reranker.score("a red car", documents)
    for backbone in (emb.load().backbone, reranker.load().backbone):
        def text_only(*args, original=backbone.compute_3d_position_ids, **kwargs):
            assert kwargs.get("image_grid_thw") is None and kwargs.get("video_grid_thw") is None, \
                "positions of a vision prompt computed inside the forward pass"
            return original(*args, **kwargs)  # text-only batches: None, the plain 0..L-1 positions

        monkeypatch.setattr(backbone, "compute_3d_position_ids", text_only)
    assert np.abs(emb.embed(mixed_items) - one_by_one).max() <= 1e-5
    np.testing.assert_array_equal(reranker.score("a red car", documents), scores)


@pytest.mark.parametrize("attention", ["sdpa", "eager"])
def test_vision_layout_comes_with_the_batch(tiny_embedding_path, tiny_reranker_path, mixed_items, attention,
                                            monkeypatch):
    """The vision tower's layout (attention chunks and their runs, rotary positions, position-embedding
    interpolation) of every image and video batch is computed with the batch and handed to the tower, which
    computes none of it; vectors and scores (shared query part on and off, image and video queries) are
    bit-identical."""
    from qwen3vl_integrations import Qwen3VLReranker
    from qwen3vl_integrations.core import runner as runner_module
    from qwen3vl_integrations.core import vision_layout as layout_module

    options = {**TINY, "attn_implementation": attention, "batch_size": 4}
    emb = Qwen3VLEmbedder(str(tiny_embedding_path), **options)
    rerankers = [Qwen3VLReranker(str(tiny_reranker_path), share_query_prefix=share, **options)
                 for share in (True, False)]
    queries = [{"text": "a red car", "image": mixed_items[1]["image"]}, {"video": mixed_items[6]["video"]}]
    documents = [d for d in mixed_items if d != {}]

    def run() -> list[np.ndarray]:
        scores = [np.asarray(r.score(query, documents)) for r in rerankers for query in queries]
        return [emb.embed(mixed_items), *scores]

    monkeypatch.setattr(runner_module, "VISION_LAYOUT_ON_HOST", False)
    computed_by_the_tower = run()
    monkeypatch.setattr(runner_module, "VISION_LAYOUT_ON_HOST", True)
    grids, tower_calls = [], []
    module = layout_module.layout_helpers(emb.load().backbone.visual)
    assert module is not None
    precomputed = dict(zip(layout_module.HELPERS, ("interp_indices", "position_ids", "cu_seqlens")))
    for name, key in precomputed.items():
        def spy(*args, original=getattr(module, name), key=key, **kwargs):
            if kwargs.get("kwargs") is not None:  # the tower's call: it must find the value precomputed
                tower_calls.append(key in kwargs["kwargs"])
            return original(*args, **kwargs)

        monkeypatch.setattr(module, name, spy)
    backbones = {id(m.load().backbone): m.load().backbone for m in (emb, *rerankers)}.values()
    handles = [backbone.visual.register_forward_pre_hook(
        lambda module, args, kwargs: grids.append((kwargs["grid_thw"], sorted(kwargs))), with_kwargs=True)
        for backbone in backbones]
    try:
        got = run()
    finally:
        for handle in handles:
            handle.remove()
    assert tower_calls and all(tower_calls), "a tower computed its own layout"
    frames = [int(grid[:, 0].max()) for grid, _ in grids]
    assert min(frames) == 1 and max(frames) > 1  # image batches and video batches
    for _, keys in grids:
        assert {"chunk_runs", "cu_seqlens", "interp_indices", "interp_weights", "position_ids"} <= set(keys), keys
    for a, b in zip(got, computed_by_the_tower):
        np.testing.assert_array_equal(a, b)


def test_the_vision_layout_joins_each_grids_own(tiny_embedding_path, monkeypatch):
    """A batch's per-patch layout, built from each grid's own (computed once per grid size and kept), equals the
    tower's helpers on the whole batch (images and videos of repeated and distinct sizes), also when the kept
    grids overflow their budget; the batch never holds the kept tensors themselves."""
    from qwen3vl_integrations.core import vision_layout as layout_module

    backbone = Qwen3VLEmbedder(str(tiny_embedding_path), **TINY).load().backbone
    visual = backbone.visual
    module = layout_module.layout_helpers(visual)
    grid = torch.tensor([[1, 4, 4], [2, 6, 4], [1, 4, 4], [1, 8, 2], [3, 4, 4], [1, 4, 4]])
    indices, weights = module.get_vision_interpolation_indices_and_weights(
        grid, num_grid_per_side=visual.num_grid_per_side, mode=visual.interpolation_mode,
        align_corners=visual.interpolation_align_corners, spatial_merge_size=visual.config.spatial_merge_size)
    expected = {"image_interp_indices": indices, "image_interp_weights": weights,
                "image_position_ids": module.get_vision_position_ids(grid, visual.spatial_merge_size),
                "image_cu_seqlens": module.get_vision_attention_seqlens(grid, visual.config)[0]}
    for budget in (layout_module.GRID_CACHE_PATCHES, 40):  # 40 patches: the cache is emptied on the way
        layout_module._grids.pop(visual, None)
        monkeypatch.setattr(layout_module, "GRID_CACHE_PATCHES", budget)
        for _ in range(2):  # computed, then found
            on_device, _ = layout_module.vision_layout(backbone, {"image_grid_thw": grid})
            assert on_device.keys() == expected.keys()
            for key, value in expected.items():
                assert torch.equal(on_device[key], value), key
        kept = layout_module._grids[visual]
        assert set(kept) <= {(1, 4, 4), (2, 6, 4), (1, 8, 2), (3, 4, 4)}
        assert budget < 100 or len(kept) == 4
        assert sum(len(entry[0]) for entry in kept.values()) <= budget
        pointers = {t.untyped_storage().data_ptr() for entry in kept.values() for t in entry}
        assert not pointers & {t.untyped_storage().data_ptr() for t in on_device.values()}
    layout_module._grids.pop(visual, None)
    monkeypatch.setattr(layout_module, "KEEP_GRID_LAYOUTS", False)  # the switch for comparisons: whole batches
    on_device, _ = layout_module.vision_layout(backbone, {"image_grid_thw": grid})
    assert all(torch.equal(on_device[key], value) for key, value in expected.items()) and visual not in \
        layout_module._grids


def test_vision_layout_is_left_to_other_towers():
    from qwen3vl_integrations.core.vision_layout import vision_layout

    batch = {"image_grid_thw": torch.tensor([[1, 4, 4]])}
    assert vision_layout(SimpleNamespace(visual=torch.nn.Linear(2, 2)), batch) == ({}, {})
    assert vision_layout(SimpleNamespace(), batch) == ({}, {})


def test_no_prefetch_workers(tiny_embedding_path, mixed_items, one_by_one):
    e = Qwen3VLEmbedder(str(tiny_embedding_path), preprocess_workers=0, batch_size=3, **TINY)
    assert np.abs(e.embed(mixed_items) - one_by_one).max() <= 1e-5


def test_try_embed_batching_with_gaps(emb, mixed_items, one_by_one):
    items = list(itertools.chain.from_iterable((item, 123) for item in mixed_items))  # a bad input after each
    result = emb.try_embed(items, batch_size=2)
    assert result.indices.tolist() == list(range(0, len(items), 2))
    assert [e.index for e in result.errors] == list(range(1, len(items), 2))
    assert np.abs(result.embeddings - one_by_one).max() <= 1e-5


def test_progress_bar_option(emb, mixed_items, one_by_one, capsys):
    got = emb.embed(mixed_items[:3], show_progress=True)
    assert np.abs(got - one_by_one[:3]).max() <= 1e-5


@pytest.mark.parametrize("queue_next", [True, False])
def test_an_output_is_read_after_the_next_batch_is_queued(tiny_embedding_path, tiny_reranker_path, mixed_items,
                                                          one_by_one, monkeypatch, queue_next):
    """With QUEUE_NEXT_BATCH, the forward loop queues micro-batch k+1 before it waits for micro-batch k's output (on
    a GPU the wait would otherwise leave it idle); without, it reads each output first. Either way every output
    lands in its own rows."""
    from qwen3vl_integrations import Qwen3VLReranker

    monkeypatch.setattr(runner, "QUEUE_NEXT_BATCH", queue_next)
    events: list[str] = []
    read = runner.HostCopy.result
    monkeypatch.setattr(runner.HostCopy, "result", lambda self: events.append("read") or read(self))
    emb = Qwen3VLEmbedder(str(tiny_embedding_path), batch_size=2, **TINY)
    reranker = Qwen3VLReranker(str(tiny_reranker_path), batch_size=2, **TINY)
    for model in (emb, reranker):
        forward = model._forward_last_hidden
        monkeypatch.setattr(model, "_forward_last_hidden",
                            lambda loaded, inputs, batch_size, forward=forward:
                            events.append("forward") or forward(loaded, inputs, batch_size))

    got = emb.embed(mixed_items)
    assert np.abs(got - one_by_one).max() <= 1e-5
    batches = events.count("forward")
    assert batches >= 4
    if queue_next:
        assert events == ["forward"] + ["forward", "read"] * (batches - 1) + ["read"]
    else:
        assert events == ["forward", "read"] * batches

    # The reranker's pairs of two queries, read while the next query's pairs are queued.
    events.clear()
    documents = mixed_items[:6]
    pairs = [("a red car", d) for d in documents] + [("a gray square", d) for d in documents]
    scores = reranker.score_pairs(pairs)
    monkeypatch.setattr(runner, "QUEUE_NEXT_BATCH", not queue_next)
    np.testing.assert_array_equal(scores, reranker.score_pairs(pairs))
    singles = [reranker.score(query, [document])[0] for query, document in pairs]
    assert np.abs(scores - np.asarray(singles)).max() <= 1e-5


def test_positions_are_reused_for_sequences_of_one_layout(emb, media_dir, monkeypatch):
    """Positions depend only on the token types and the vision grids: sequences alike in these reuse them, and
    sequences that differ in either (even with the same types) get the model's rule's own."""
    loaded = emb.load()
    monkeypatch.setattr(runner, "_positions", runner.weakref.WeakKeyDictionary())
    calls = []
    rule = loaded.backbone.get_rope_index
    monkeypatch.setattr(loaded.backbone, "get_rope_index", lambda *a, **k: calls.append(1) or rule(*a, **k))
    from qwen3vl_integrations.core.inputs import parse_item

    def encoded(item):
        return emb._encode_item(loaded, parse_item(item, emb.policy), None)

    tall, wide = Image.new("RGB", (64, 96), (200, 0, 0)), Image.new("RGB", (96, 64), (0, 200, 0))
    sequences = [encoded({"image": tall}), encoded({"image": Image.new("RGB", (64, 96))}), encoded({"image": wide}),
                 encoded({"image": tall, "text": "a"}), encoded({"video": media_dir / "clip.mp4"})]
    assert torch.equal(sequences[0].mm_token_type_ids, sequences[2].mm_token_type_ids)  # only the grids differ
    for item in sequences + sequences:
        expected, _ = rule(item.input_ids[None], mm_token_type_ids=item.mm_token_type_ids[None],
                           image_grid_thw=item.vision("image_grid_thw"), video_grid_thw=item.vision("video_grid_thw"))
        assert torch.equal(runner.whole_rope_positions(loaded.backbone, item), expected[:, 0])
    assert len(calls) == 4  # one per layout: the second tall image, and every sequence the second time, reuse
