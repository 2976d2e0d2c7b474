"""GPU-only choices, checked on the CPU with torch's CUDA and MPS queries stubbed (core/loading.py, core/runner.py).

Found by reading the CUDA and MPS paths, which no CPU run executes: automatic FlashAttention-2 in float32 or on a
pre-Ampere GPU (flash-attn raises on the first pass), the process-wide attention flags restored by whichever of two
overlapping passes ended first, a bare "cuda" loaded on GPU 0 by an async call's worker thread after
`torch.cuda.set_device(1)`, "mps" and "mps:0" loaded twice, bfloat16 chosen on macOS 13 (where MPS lacks it), and
a model loaded through host memory before moving to the GPU.
"""
from __future__ import annotations

import threading

import pytest
import torch

from qwen3vl_integrations import Qwen3VLEmbedder
from qwen3vl_integrations.core import loading, runner
from qwen3vl_integrations.core.loading import resolve_attention, resolve_device, resolve_dtype, usable_attention

CUDA = torch.device("cuda")


@pytest.fixture
def flash_attn_installed(monkeypatch):
    monkeypatch.setattr(loading, "_flash_attention_2_installed", lambda: True)


def test_automatic_attention_takes_flash_attention_only_in_half_precision(flash_attn_installed):
    assert resolve_attention(None, CUDA, torch.bfloat16) == "flash_attention_2"
    assert resolve_attention("auto", CUDA, torch.float16) == "flash_attention_2"
    assert resolve_attention(None, CUDA, torch.float32) == "sdpa"  # flash-attn: "only support fp16 and bf16"
    assert resolve_attention(None, torch.device("cpu"), torch.bfloat16) == "sdpa"
    with pytest.raises(ValueError, match="dtype bfloat16 or float16 .*dtype float32"):
        resolve_attention("flash_attention_2", CUDA, torch.float32)
    assert resolve_attention("flash_attention_2", CUDA, torch.bfloat16) == "flash_attention_2"


def test_automatic_attention_without_flash_attn_2_is_sdpa(monkeypatch):
    monkeypatch.setattr(loading, "_flash_attention_2_installed", lambda: False)
    assert resolve_attention(None, CUDA, torch.bfloat16) == "sdpa"
    with pytest.raises(ValueError, match="flash-attn 2 not installed"):
        resolve_attention("flash_attention_2", CUDA, torch.bfloat16)


def test_float32_object_on_cuda_does_not_take_flash_attention(flash_attn_installed, tiny_embedding_path):
    e = Qwen3VLEmbedder(str(tiny_embedding_path), device="cuda:1", dtype="float32")  # builds; touches no GPU
    assert e.attn_implementation == "sdpa"
    assert Qwen3VLEmbedder(str(tiny_embedding_path), device="cuda:1").attn_implementation == "flash_attention_2"


def test_flash_attention_chosen_automatically_falls_back_on_pre_ampere_gpus(flash_attn_installed, monkeypatch,
                                                                           tiny_embedding_path):
    capability = {"value": (7, 5)}  # a T4
    monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability["value"])
    assert usable_attention("flash_attention_2", CUDA, chosen_automatically=True) == "sdpa"
    assert usable_attention("flash_attention_2", CUDA, chosen_automatically=False) == "flash_attention_2"
    capability["value"] = (8, 0)
    assert usable_attention("flash_attention_2", CUDA, chosen_automatically=True) == "flash_attention_2"

    capability["value"] = (7, 0)  # a V100: the model loads with sdpa
    seen = []
    monkeypatch.setattr(runner, "load_shared", lambda path, role, device, dtype, attn, kwargs: seen.append(attn))
    Qwen3VLEmbedder(str(tiny_embedding_path), device="cuda:0").load()
    Qwen3VLEmbedder(str(tiny_embedding_path), device="cuda:0", attn_implementation="flash_attention_2").load()
    assert seen == ["sdpa", "flash_attention_2"]  # an explicit choice stays the user's


def test_bare_cuda_is_the_building_threads_current_device_once_cuda_is_initialised(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: False)
    monkeypatch.setattr(torch.cuda, "current_device", lambda: pytest.fail("would initialise CUDA"))
    assert resolve_device("cuda") == CUDA and resolve_device(None) == CUDA  # resolved when the model loads
    monkeypatch.setattr(torch.cuda, "is_initialized", lambda: True)  # torch.cuda.set_device(1) was called
    monkeypatch.setattr(torch.cuda, "current_device", lambda: 1)
    assert resolve_device("cuda") == torch.device("cuda", 1)
    assert resolve_device(None) == torch.device("cuda", 1)
    assert resolve_device("cuda:0") == torch.device("cuda", 0)


def test_mps_device_names_are_one_registry_entry():
    assert resolve_device("mps:0") == resolve_device("mps") == torch.device("mps")
    assert str(resolve_device(torch.device("mps", 0))) == "mps"


def test_mps_default_dtype_is_bfloat16_only_from_macos_14(monkeypatch):
    mps = torch.device("mps")
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: (major, minor) <= (13, 5))
    assert resolve_dtype(None, mps) == torch.float32  # "MPS BFloat16 is only supported on MacOS 14 or newer"
    assert resolve_dtype("bfloat16", mps) == torch.bfloat16  # asked for: the user's choice
    monkeypatch.setattr(torch.backends.mps, "is_macos_or_newer", lambda major, minor: True)
    assert resolve_dtype(None, mps) == torch.bfloat16


def test_overlapping_cuda_passes_keep_our_attention_kernels_until_the_last_one_ends():
    flags = (torch.backends.cuda.cudnn_sdp_enabled, torch.backends.cuda.flash_sdp_enabled,
             torch.backends.cuda.mem_efficient_sdp_enabled, torch.backends.cuda.math_sdp_enabled)
    before = [f() for f in flags]
    entered = threading.Barrier(2)
    first_done, during_second = threading.Event(), []

    def embedder_pass():
        with runner.attention_backends(CUDA):
            entered.wait()
        first_done.set()

    def reranker_pass():
        with runner.attention_backends(CUDA):
            entered.wait()
            first_done.wait()
            during_second.append(torch.backends.cuda.cudnn_sdp_enabled())  # the embedder's pass has ended

    threads = [threading.Thread(target=embedder_pass), threading.Thread(target=reranker_pass)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert during_second == [False]
    assert [f() for f in flags] == before  # restored once both ended, not left with cuDNN off


def test_forward_passes_run_with_the_models_gpu_current():
    guard = runner.device_guard(torch.device("cuda", 1))
    assert isinstance(guard, torch.cuda.device) and guard.idx == 1
    assert not isinstance(runner.device_guard(torch.device("cpu")), torch.cuda.device)


class _Loaded(Exception):
    pass


@pytest.mark.parametrize("device, expected", [(torch.device("cuda", 1), "cuda:1"), (torch.device("cpu"), None)])
def test_models_load_straight_onto_their_gpu(monkeypatch, tiny_embedding_path, device, expected):
    import transformers

    def from_pretrained(path, **kwargs):
        raise _Loaded(kwargs.get("device_map"))

    monkeypatch.setattr(transformers.AutoModel, "from_pretrained", from_pretrained)
    key = loading.ModelKey(str(tiny_embedding_path), "embedding", str(device), "float32", "sdpa")
    with pytest.raises(_Loaded) as info:
        loading._load(key, str(tiny_embedding_path), device, torch.float32, "sdpa", {})
    assert info.value.args[0] == expected
