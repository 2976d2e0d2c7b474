"""Host preprocessing per image: what the core's worker threads do for each image before the model runs.

    python -m benchmarks.preprocessing --images 64 --size 448 --runs 5

On a GPU the 448x448 images are bound by this work, not by the model (benchmarks/README.md), and it runs the same
on any host, so it is measured here, on one thread, with the model call left out: decoding and resizing, the
prompt, the image processor and the token ids (one item at a time, as the workers do), then padding a micro-batch
of `--batch` items (collation, M-RoPE positions, the vision tower's layout). Then the same work split over
`--parallel` threads, as the core's workers share it: its wall time per image shows how much of the work holds
the GIL, which no number of workers runs in parallel. Two settings: pixels normalised on the host (the CPU path)
and 8-bit patches (the CUDA path, core/pixels.py). A second table times each step the core does
its own way against the processor's or the model's way, on one image item (fastest of many calls: the passes above
spread by 20% on a shared machine, more than some of these steps weigh).
"""
from __future__ import annotations

import argparse
import os
import statistics
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, Callable, ContextManager, Sequence

import torch

from benchmarks.corpora import jpeg, synthetic_image
from benchmarks.throughput import attributes, cache_folder, checkpoint_paths, log


def patches_as_on_cuda(raw: bool) -> ContextManager[None]:
    """Within this block a CPU model gets 8-bit patches as a CUDA one does (`raw`), or normalised ones."""
    from qwen3vl_integrations.core import pixels

    devices = pixels.DEVICE_TYPES | {"cpu"} if raw else pixels.DEVICE_TYPES - {"cpu"}
    return attributes(pixels, DEVICE_TYPES=frozenset(devices))


def milliseconds_per_item(fn: Callable[[], Any], items: int) -> tuple[float, Any]:
    start = time.perf_counter()
    result = fn()
    return (time.perf_counter() - start) * 1e3 / items, result


def time_setting(embedder: Any, items: Sequence[Any], batch: int, runs: int, parallel: int) -> dict[str, float]:
    """Median milliseconds per item of each step, over `runs` passes after one warm-up pass; and of the whole work
    split over `parallel` threads (wall time), which only runs in parallel where it releases the GIL."""
    from qwen3vl_integrations.core.inputs import parse_items
    from qwen3vl_integrations.core.runner import model_inputs
    from qwen3vl_integrations.core.vision import prepare_image

    loaded = embedder.load()
    parsed, errors = parse_items(list(items), embedder.policy)
    assert not errors, errors
    steps: dict[str, list[float]] = {"decode and resize": [], "prompt, processor, token ids": [], "batch": [],
                                     "total": [], "threads": []}

    def whole_work(share: Sequence[Any]) -> list[Any]:
        sequences = [embedder._encode_item(loaded, p, None) for p in share]
        return [model_inputs(loaded, sequences[k:k + batch]) for k in range(0, len(sequences), batch)]

    shares = [parsed[k * len(parsed) // parallel:(k + 1) * len(parsed) // parallel] for k in range(parallel)]
    pool = ThreadPoolExecutor(parallel)  # kept: its threads' processor copies are made in the warm-up pass
    for run in range(runs + 1):
        decode, _ = milliseconds_per_item(
            lambda: [prepare_image(image, embedder.limits, embedder.policy) for p in parsed for image in p.images],
            len(parsed))
        encode, sequences = milliseconds_per_item(
            lambda: [embedder._encode_item(loaded, p, None) for p in parsed], len(parsed))
        pad, inputs = milliseconds_per_item(
            lambda: [model_inputs(loaded, sequences[k:k + batch]) for k in range(0, len(sequences), batch)],
            len(parsed))
        threads, _ = milliseconds_per_item(lambda: list(pool.map(whole_work, shares)), len(parsed))
        if run:  # the first pass warms caches
            steps["threads"].append(threads)
            steps["decode and resize"].append(decode)
            steps["prompt, processor, token ids"].append(encode - decode)  # _encode_item decodes too
            steps["batch"].append(pad)
            steps["total"].append(encode + pad)
    pool.shutdown()
    result = {name: statistics.median(values) for name, values in steps.items()}
    pixel_values = [i.batch["pixel_values"] for i in inputs]
    result["pixel bytes per item"] = sum(p.numel() * p.element_size() for p in pixel_values) / len(parsed)
    result["dtype"] = str(pixel_values[0].dtype).replace("torch.", "")
    return result


def fastest_ms(fn: Callable[[], Any], repeats: int) -> float:
    """The fastest of `repeats` calls, in milliseconds: the least disturbed by other work on a shared machine."""
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best * 1e3


def whole_batch_layout(backbone: Any, grid: torch.Tensor) -> Any:
    """The vision tower's layout of a batch as its helpers compute it from the whole batch's grids, every image's
    part again in every batch (the core's way before 2026-11-27, its switch KEEP_GRID_LAYOUTS off)."""
    from qwen3vl_integrations.core import vision_layout

    with attributes(vision_layout, KEEP_GRID_LAYOUTS=False):
        return vision_layout.vision_layout(backbone, {"image_grid_thw": grid})


def step_rows(embedder: Any, image_bytes: bytes, repeats: int, batch: int) -> list[str]:
    """Rows of the steps the core replaced, each timed the old way and the core's way on one image item."""
    from qwen3vl_integrations.core import runner
    from qwen3vl_integrations.core.encoding import image_patches, mm_token_types, token_ids
    from qwen3vl_integrations.core.inputs import parse_item
    from qwen3vl_integrations.core.pixels import RAW_IMAGE_KWARGS
    from qwen3vl_integrations.core.prompts import embedding_conversation, render
    from qwen3vl_integrations.core.vision import prepare_image
    from qwen3vl_integrations.core.vision_layout import vision_layout

    loaded = embedder.load()
    processor, backbone = loaded.processor, loaded.backbone  # one thread here
    item = parse_item({"image": image_bytes}, embedder.policy)
    conversation = embedding_conversation(item, None, embedder.default_instruction)
    image = prepare_image(item.images[0], embedder.limits, embedder.policy)
    with patches_as_on_cuda(True):
        sequence = embedder._encode_item(loaded, item, None)
    grid, ids, types = sequence.image_grid_thw, sequence.input_ids, sequence.mm_token_type_ids
    grids = grid.repeat(batch, 1)
    prompt = render(processor, conversation)
    two_slices = {**RAW_IMAGE_KWARGS, "temporal_patch_size": processor.image_processor.temporal_patch_size}
    runner.whole_rope_positions(backbone, sequence)  # the core's cache, filled (the prompt's by render above)
    steps = [
        ("chat template", lambda: processor.apply_chat_template(conversation, tokenize=False,
                                                                add_generation_prompt=True),
         lambda: render(processor, conversation), "rendered once, then reused"),
        ("token ids", lambda: processor.tokenizer([prompt], return_tensors="pt", padding=False, truncation=False,
                                                  return_token_type_ids=False),
         lambda: token_ids(processor.tokenizer, prompt), "the tokenizer's backend called directly"),
        ("token types", lambda: processor.create_mm_token_type_ids([ids.tolist()]),
         lambda: mm_token_types(processor, ids), "tensor operations"),
        ("image patches, 8-bit (CUDA path)", lambda: processor.image_processor([image], do_resize=False,
                                                                               return_tensors="pt", **two_slices),
         lambda: image_patches(processor.image_processor, [image], raw_pixels=True),
         "one temporal slice, cut in one copy"),
        ("image patches, float (CPU path)", lambda: processor.image_processor([image], do_resize=False,
                                                                              return_tensors="pt"),
         lambda: image_patches(processor.image_processor, [image], raw_pixels=False),
         "cut in one copy, then normalised"),
        ("M-RoPE positions", lambda: backbone.get_rope_index(ids[None], mm_token_type_ids=types[None],
                                                             image_grid_thw=grid),
         lambda: runner.whole_rope_positions(backbone, sequence), "reused for one layout"),
        (f"vision tower layout, a batch of {batch} images", lambda: whole_batch_layout(backbone, grids),
         lambda: vision_layout(backbone, {"image_grid_thw": grids}), "joined from each grid size's, kept"),
    ]
    return [f"| {name} | {fastest_ms(old, repeats):.3f} | {fastest_ms(new, repeats):.3f} | {how} |"
            for name, old, new, how in steps]


def main(argv: Sequence[str] | None = None) -> str:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="tiny", help="tiny or small (random checkpoints: the real processor "
                        "settings) or a checkpoint folder")
    parser.add_argument("--images", type=int, default=64, help="images per pass")
    parser.add_argument("--size", type=int, default=448, help="side of the square JPEG images, in pixels")
    parser.add_argument("--batch", type=int, default=32, help="items per micro-batch")
    parser.add_argument("--runs", type=int, default=5, help="timed passes per setting (median)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads (a worker thread's share)")
    parser.add_argument("--parallel", type=int, default=min(2, os.cpu_count() or 1),
                        help="worker threads sharing the work in the column of wall time (at most the cores)")
    parser.add_argument("--repeats", type=int, default=200, help="calls per step in the steps table (fastest)")
    parser.add_argument("--cache-dir", default=None, help="where random checkpoints are kept")
    args = parser.parse_args(argv)

    from qwen3vl_integrations import Qwen3VLEmbedder

    torch.set_num_threads(args.threads)
    cache_dir = cache_folder(args.cache_dir)
    path, _, _ = checkpoint_paths(args.model, None, torch.float32, torch.device("cpu"), cache_dir, "disk")
    items = [{"image": jpeg(synthetic_image(args.size, args.size, 7919 + k))} for k in range(args.images)]
    rows = []
    for label, raw in (("pixels normalised on the host (CPU path)", False), ("8-bit patches (CUDA path)", True)):
        with patches_as_on_cuda(raw):
            embedder = Qwen3VLEmbedder(path, device="cpu")
            result = time_setting(embedder, items, args.batch, args.runs, args.parallel)
        rows.append(f"| {label} | {result['total']:.2f} | {result['threads']:.2f} | "
                    f"{result['decode and resize']:.2f} | "
                    f"{result['prompt, processor, token ids']:.2f} | {result['batch']:.2f} | "
                    f"{result['pixel bytes per item'] / 2**20:.3g} ({result['dtype']}) |")
        log(rows[-1])
    steps = step_rows(embedder, items[0]["image"], args.repeats, args.batch)
    text = "\n".join([
        f"Host preprocessing per {args.size}x{args.size} JPEG image, {args.images} images, micro-batches of "
        f"{args.batch}, {args.threads} torch thread(s), median of {args.runs} passes, ms per image",
        "", f"| setting | total | total, {args.parallel} threads (wall) | decode and resize | "
        "prompt, processor, token ids | batch | pixel MiB per image |",
        "|---|---|---|---|---|---|---|", *rows, "",
        f"Steps the core replaced, one image item, fastest of {args.repeats} calls, ms",
        "", "| step | the processor's / model's way | the core's | how |", "|---|---|---|---|", *steps])
    print(text)
    return text


if __name__ == "__main__":
    main()
