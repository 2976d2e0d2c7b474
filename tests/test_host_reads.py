"""Host read-backs inside the model's forward pass: each one is a GPU synchronisation (the CPU waits for all queued
work, then the GPU waits for the CPU). Counted on CPU by watching the tensor operations that read values back."""
from __future__ import annotations

import collections
import traceback
from pathlib import Path

import pytest
import torch
from PIL import Image
from torch.overrides import TorchFunctionMode

from qwen3vl_integrations import Qwen3VLReranker

READS = {"__bool__", "item", "tolist", "__int__", "__float__", "__index__", "nonzero", "masked_select", "numpy", "cpu"}


class HostReads(TorchFunctionMode):
    """Records where tensor values are read back to Python: conversions, data-dependent shapes, boolean masks."""

    def __init__(self) -> None:
        super().__init__()
        self.places: collections.Counter[str] = collections.Counter()

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = getattr(func, "__name__", "")
        read = name in READS
        if name == "repeat_interleave" and len(args) > 1 and torch.is_tensor(args[1]):
            read = kwargs.get("output_size") is None
        if name in ("__getitem__", "__setitem__") and len(args) > 1:
            index = args[1] if isinstance(args[1], tuple) else (args[1],)
            read = any(torch.is_tensor(i) and i.dtype == torch.bool for i in index)
        if read:
            frame = [f for f in traceback.extract_stack() if "/torch/" not in f.filename and f.filename != __file__][-1]
            self.places[f"{name} in {Path(frame.filename).name}: {frame.line}"] += 1
        return func(*args, **kwargs)


def reads_in_forward(model, call) -> collections.Counter[str]:
    """The read-backs of every backbone forward pass that `call` makes (preprocessing outside them is CPU work)."""
    backbone = model.load().backbone
    mode = HostReads()
    handles = [backbone.register_forward_pre_hook(lambda module, args: mode.__enter__() and None),
               backbone.register_forward_hook(lambda module, args, output: mode.__exit__(None, None, None) and None)]
    try:
        call()
    finally:
        for handle in handles:
            handle.remove()
    return mode.places


def test_the_counter_sees_a_read_back():
    mode = HostReads()
    with mode:
        x = torch.arange(4)
        _ = x[x > 1]
        _ = x.tolist()
        _ = bool(x.any())
    assert sum(mode.places.values()) == 3


@pytest.mark.parametrize("share", [True, False])
def test_text_batches_read_nothing_back(tiny_embedder, tiny_reranker_path, tiny_core_kwargs, share):
    """Padded text batches (and a reranker's rows after a shared query part): no read-back at all."""
    reranker = Qwen3VLReranker(str(tiny_reranker_path), share_query_prefix=share, **tiny_core_kwargs)
    texts = ["a b c", "d e f g h i j k", "x", "a longer text " * 9]
    assert reads_in_forward(tiny_embedder, lambda: tiny_embedder.embed(texts)) == {}
    assert reads_in_forward(reranker, lambda: reranker.score("a query", texts)) == {}


def test_image_batches_read_back_only_between_tower_and_language_model(tiny_embedder):
    """The vision tower's layout comes computed with the batch, so the tower reads nothing back. What is left is where
    the tower's output meets the language model (and so waits for the tower anyway): transformers' split of the
    features per image and its placeholder check, and the visual positions of the deep-stack step, found once per
    pass (the stock step did boolean-mask indexing twice in each of 3 layers). The count does not grow with the
    number of images."""
    image = Image.new("RGB", (96, 64), (200, 30, 30))
    for count in (2, 6):
        items = [{"image": image}, {"image": image, "text": "red"}] * (count // 2)
        places = reads_in_forward(tiny_embedder, lambda: tiny_embedder.embed(items))
        assert sum(places.values()) == 3, places
        assert [n for place, n in places.items() if "vision_levers.py" in place] == [1], places  # visual positions
        assert not [place for place in places if "vision_utils.py" in place], places
        assert not [place for place in places if place.startswith(("__getitem__", "__setitem__"))], places
