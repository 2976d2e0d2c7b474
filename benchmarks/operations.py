"""Tensor operations the language model runs per text forward pass: on a GPU each is a kernel the host launches,
and launches bound the 2B model's texts on the H100 (benchmarks/README.md, run 7).

    python -m benchmarks.operations --model tiny

Counts, for the same texts and weights, the operations inside the language model's forward passes (views left out:
they launch nothing) of the official procedure (transformers' stock modules, chunks of 8) and of ours, and ours
again with each lever that changes the count switched off. The count per decoder layer does not depend on the
model's size, so the tiny checkpoint gives the 2B model's; per pass, the 2B has 28 layers where tiny has 2.

`--host-time` adds the time of one call on one short text, per setting, with a model of the tiny widths and the
2B model's 28 layers: its kernels take next to nothing, so this is the host's work per pass (Python, tensor
dispatch, the tokenizer), which a GPU adds its launches to and which bounds short texts there.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import statistics
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Sequence

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from benchmarks.corpora import TextMaker, log_uniform_lengths
from benchmarks.throughput import (CORE_SWITCHES, cache_folder, cached_checkpoint, checkpoint_paths, core_switch,
                                   stock_rms_norm)

# Levers compared with their other value here: those that change which operations a pass runs.
LEVERS = ("fused-projections", "text-rotary", "padding-mask", "pooled-last-layer")


def launches_kernel(func: Any, args: Sequence[Any], out: Any) -> bool:
    """Whether this dispatched operation ran a kernel. Operations whose schema lets them return their input's memory
    (views, and `to`, which returns its input itself when nothing changes) ran one only where the result has memory
    of its own; `_unsafe_view` (a reshape after a matrix product) never does, though its schema does not say so; and
    torch skips an in-place copy of a tensor onto itself."""
    name = func.overloadpacket.__name__
    if func.is_view or name == "_unsafe_view":
        result = out[0] if isinstance(out, (tuple, list)) else out
        return result.untyped_storage().data_ptr() != args[0].untyped_storage().data_ptr()
    return not (name == "copy_" and args[0].data_ptr() == args[1].data_ptr()
                and args[0].stride() == args[1].stride() and args[0].dtype == args[1].dtype)


class OperationCount(TorchDispatchMode):
    """Counts by name the operations that run a kernel while inside each scope (`inside` holds the scopes entered:
    `scopes` from the start, others while a module runs, `scope`), in this thread only: dispatch modes are
    thread-local, so preprocessing workers are not counted."""

    def __init__(self, scopes: Sequence[str] = ()) -> None:
        super().__init__()
        self.inside: set[str] = set(scopes)
        self.names: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
        self.calls: collections.Counter[str] = collections.Counter()

    def __torch_dispatch__(self, func: Any, types: Any, args: Sequence[Any] = (), kwargs: Any = None) -> Any:
        out = func(*args, **(kwargs or {}))
        if self.inside and launches_kernel(func, args, out):
            for scope in self.inside:
                self.names[scope][func.overloadpacket.__name__] += 1
        return out

    @contextlib.contextmanager
    def scope(self, name: str, module: torch.nn.Module) -> Iterator[None]:
        """Within this block, count what `module`'s calls run under `name`."""
        def enter(*args: Any, **kwargs: Any) -> None:
            self.inside.add(name)
            self.calls[name] += 1

        def leave(*args: Any, **kwargs: Any) -> None:
            self.inside.discard(name)

        handles = [module.register_forward_pre_hook(enter, with_kwargs=True),
                   module.register_forward_hook(leave, with_kwargs=True, always_call=True)]
        try:
            yield
        finally:
            for handle in handles:
                handle.remove()

    def total(self, name: str) -> int:
        return sum(self.names[name].values())

    def per_call(self, name: str) -> float:
        return self.total(name) / max(self.calls[name], 1)


def measure(backbone: Any, run: Callable[[], Any]) -> OperationCount:
    """The operations of `run()` per language model pass ("pass") and in its first decoder layer ("layer"; every
    layer but the last, which may run pooled, runs the same)."""
    count = OperationCount()
    with torch.inference_mode(), count, count.scope("pass", backbone.language_model), \
            count.scope("layer", backbone.language_model.layers[0]):
        run()
    return count


def settings(embedder: Any, texts: list[str]) -> list[tuple[str, Callable[[], Any]]]:
    """(label, call) for the official procedure, ours, and ours with each lever that changes the count off."""
    from benchmarks.official import official_embed, stock_forwards

    backbone = embedder.load().backbone

    def official() -> None:
        with stock_forwards(backbone):
            official_embed(embedder, texts)

    rows: list[tuple[str, Callable[[], Any]]] = [("official procedure (transformers' modules)", official),
                                                 ("ours", lambda: embedder.embed(texts))]
    for lever in LEVERS:
        def off(lever: str = lever) -> None:
            with core_switch(lever, on=False):
                embedder.embed(texts)
        rows.append((f"ours, {CORE_SWITCHES[lever][3]}", off))

    def stock_norms() -> None:
        with stock_rms_norm(backbone):
            embedder.embed(texts)
    rows.append(("ours, transformers' RMSNorm", stock_norms))
    return rows


def host_times(embedder: Any, text: str, calls: int, rounds: int) -> dict[str, float]:
    """Median milliseconds per call on `text` of each setting, the settings taken in turn `rounds` times (a shared
    machine drifts), `calls` calls each, on one thread."""
    times: dict[str, list[float]] = collections.defaultdict(list)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for _ in range(rounds):
            for label, run in settings(embedder, [text]):
                run()
                start = time.perf_counter()
                for _ in range(calls):
                    run()
                times[label].append((time.perf_counter() - start) / calls * 1e3)
    finally:
        torch.set_num_threads(threads)
    return {label: statistics.median(values) for label, values in times.items()}


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny, small (random checkpoints) or a folder")
    parser.add_argument("--texts", type=int, default=32, help="texts embedded, of 10 to --max-tokens tokens")
    parser.add_argument("--max-tokens", type=int, default=300)
    parser.add_argument("--dtype", default="bfloat16", help="bfloat16 (as on GPUs: the stock RMSNorm's float32 "
                        "casts are kernels) or float32 (where they return the tensor itself)")
    parser.add_argument("--host-time", action="store_true", help="also time one call on one short text per "
                        "setting, with the tiny widths and --host-layers layers (the host's work per pass)")
    parser.add_argument("--host-layers", type=int, default=28, help="layers of that model (the 2B has 28)")
    parser.add_argument("--host-calls", type=int, default=50, help="calls per setting and round")
    parser.add_argument("--host-rounds", type=int, default=5, help="rounds over the settings (median)")
    parser.add_argument("--cache-dir", default=None, help="where random checkpoints are kept")
    args = parser.parse_args(argv)

    from qwen3vl_integrations import Qwen3VLEmbedder

    cache_dir = cache_folder(args.cache_dir)
    dtype = getattr(torch, args.dtype)
    path, _, _ = checkpoint_paths(args.model, None, dtype, torch.device("cpu"), cache_dir, "disk")
    embedder = Qwen3VLEmbedder(model_name_or_path=path, device="cpu", dtype=args.dtype)
    loaded = embedder.load()
    backbone = loaded.backbone
    maker = TextMaker(loaded.tokenizer, seed=0)
    texts = [maker.text(n) for n in log_uniform_lengths(args.texts, 10, args.max_tokens, seed=1)]

    host: dict[str, float] = {}
    if args.host_time:
        deep = cached_checkpoint(cache_dir, "tiny", "embedding", args.dtype, text_layers=args.host_layers)
        host = host_times(Qwen3VLEmbedder(model_name_or_path=str(deep), device="cpu", dtype=args.dtype),
                          maker.text(16), args.host_calls, args.host_rounds)

    layers = len(backbone.language_model.layers)
    rows = []
    for label, run in settings(embedder, texts):
        count = measure(backbone, run)
        top = ", ".join(f"{name} {n / count.calls['layer']:.0f}" for name, n in count.names["layer"].most_common(6))
        row = (f"| {label} | {count.calls['pass']} | {count.per_call('pass'):.0f} | "
               f"{count.per_call('layer'):.0f} | {top} |")
        rows.append(row + (f" {host[label]:.2f} |" if host else ""))
        print(rows[-1], flush=True)
    text = "\n".join([
        f"Operations in the language model per text forward pass ({args.texts} texts of 10-{args.max_tokens} "
        f"tokens, `{args.model}` in {args.dtype}: {layers} decoder layers; views left out), torch {torch.__version__}"
        + (f"; host time: one call on one text of 16 tokens, tiny widths and {args.host_layers} layers, one CPU "
           f"thread, median of {args.host_rounds} rounds of {args.host_calls} calls" if host else ""),
        "", "| setting | passes | operations per pass | per decoder layer | most run in a layer |"
        + (" host ms per call |" if host else ""),
        "|---|---|---|---|---|" + ("---|" if host else ""), *rows])
    print(text)
    return text


if __name__ == "__main__":
    main()
