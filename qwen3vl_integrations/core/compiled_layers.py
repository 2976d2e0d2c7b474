"""The language model's decoder layers under `torch.compile`, for the forward passes of objects that ask for it.

Opt-in (`torch_compile=True`, or a dict of `torch.compile` options). On an H100 the 2B model's 256 benchmark texts
ran 1.16x faster with the decoder layers compiled (fused elementwise kernels, fewer launches) after about 40 s of
compilation; on CPUs the gain depends on the machine (1.075-1.10x on an Intel build machine, a loss on an AMD
one, `benchmarks/README.md`). The layers are alike, so they share the compiled code (their weights are
its inputs), and shapes are dynamic: a corpus of varied lengths compiles a few graphs, not one per batch shape.

Per forward pass, not per model: a loaded model is shared by every object that asks for the same checkpoint, so a
pass runs the compiled layers when the call that runs it asked for them, and the eager layers otherwise. Passes
that continue a cached query part (the reranker's shared prompt part) compile too: the cache's update and the
attention over it run outside the graph (`text_attention._attend_after_cache`; the pooled last layer's update:
`cached_keys_values`), since dynamo would guard on the cache's per-layer state and compile each layer anew, up to
torch's recompile limit.
"""
from __future__ import annotations

import contextlib
import weakref
from typing import Any, Callable, Iterator, Mapping

# torch.compile's keyword arguments a caller may set (dynamic defaults to True here).
COMPILE_ARGUMENTS = frozenset({"backend", "mode", "options", "dynamic", "fullgraph"})

# backbone -> {options key: each decoder layer's compiled call}
_compiled: weakref.WeakKeyDictionary[Any, dict[str, list[Callable[..., Any]]]] = weakref.WeakKeyDictionary()


def compile_options(value: bool | Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The `torch.compile` options of a `torch_compile` setting: None (off) for False or None, torch's defaults with
    dynamic shapes for True, or the mapping's own options over those."""
    if value is None or value is False:
        return None
    if value is True:
        return {"dynamic": True}
    if isinstance(value, Mapping):
        unknown = sorted(set(value) - COMPILE_ARGUMENTS)
        if unknown:
            raise TypeError(f"torch_compile: unknown torch.compile option(s) {unknown}; "
                            f"allowed: {sorted(COMPILE_ARGUMENTS)}")
        return {"dynamic": True, **value}
    raise TypeError(f"torch_compile must be True, False or a dict of torch.compile options, not {value!r}")


def _layer_calls(backbone: Any, options: dict[str, Any]) -> list[Callable[..., Any]]:
    """Each decoder layer's compiled call for `options`, made once per backbone and options (compiling itself
    happens in the first forward pass that runs them)."""
    import torch

    per_options = _compiled.setdefault(backbone, {})
    key = repr(sorted(options.items()))
    calls = per_options.get(key)
    if calls is None:
        calls = [torch.compile(layer._call_impl, **options) for layer in backbone.language_model.layers]
        per_options[key] = calls
    return calls


@contextlib.contextmanager
def compiled_decoder_layers(backbone: Any, options: dict[str, Any] | None) -> Iterator[None]:
    """Within this block (under the model lock) the language model's decoder layers run compiled with `options`;
    with None, as they are."""
    if options is None:
        yield
        return
    layers = list(backbone.language_model.layers)
    before = [layer._compiled_call_impl for layer in layers]  # a layer the user compiled keeps its own afterwards
    for layer, call in zip(layers, _layer_calls(backbone, options)):
        layer._compiled_call_impl = call
    try:
        yield
    finally:
        for layer, call in zip(layers, before):
            layer._compiled_call_impl = call
