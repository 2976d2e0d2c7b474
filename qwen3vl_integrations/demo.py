"""What ``make demo`` runs: multimodal search over the sample folder with the ``qwen3vl-search`` tool.

1. generate the sample folder (pictures, text files, two short videos; no downloads) in ``demo-output/samples``;
2. ``qwen3vl-search index`` it into ``demo-output/index`` (one LlamaIndex store for text, images and video);
3. ask three queries with reranking: text to image, text to video and image to image; each prints a ranked
   table and writes a picture of the results next to the index.

Usage::

    python -m qwen3vl_integrations.demo [--model real|tiny|NAME|PATH] [--reranker NAME|PATH] [--out DIR]

``--model real`` (the default) uses Qwen/Qwen3-VL-Embedding-2B and Qwen/Qwen3-VL-Reranker-2B; when they cannot be
loaded the demo says why and how to run offline. ``--model tiny`` runs everything on tiny random checkpoints built
locally: the pipeline is the same, the rankings are meaningless.
"""
from __future__ import annotations

import argparse
import shlex
import sys
from pathlib import Path
from typing import Sequence

from . import cli
from .cli.models import _is_tiny
from .sample_data import generate_sample_data

DEFAULT_OUT = "demo-output"

# (title, query text, sample file used as the query image or None)
QUERIES: tuple[tuple[str, str | None, str | None], ...] = (
    ("text to image", "a red circle", None),
    ("text to video", "a ball rolling across grass", None),
    ("image to image", None, "sunset_beach.jpg"),
)


def _say(command: Sequence[str]) -> None:
    print("\n$ " + " ".join(shlex.quote(str(c)) for c in ["qwen3vl-search", *command]), flush=True)


def run_demo(model: str = "real", *, reranker: str | None = None, out: str | Path = DEFAULT_OUT,
             device: str | None = None, top_k: int = 5) -> int:
    """Run the demo; returns the exit status of the first failing step, or 0."""
    if model == "real":
        model, reranker = cli.REAL_EMBEDDING_MODEL, reranker or cli.REAL_RERANKER_MODEL
    elif _is_tiny(model):
        model, reranker = cli.TINY, reranker or cli.TINY
    else:  # the user's embedding model: the reranker `qwen3vl-search query` picks for its index
        reranker = reranker or cli.REAL_RERANKER_MODEL
    out = Path(out)
    samples, index_dir = out / "samples", out / "index"

    print(f"Sample folder: {samples}", flush=True)
    paths = generate_sample_data(samples)
    kinds = {p.suffix.lower() for p in paths}
    print(f"{len(paths)} files: pictures, text documents and videos ({', '.join(sorted(kinds))})", flush=True)

    device_args = ["--device", device] if device else []
    command = ["index", str(samples), "--index-dir", str(index_dir), "--model", model, *device_args]
    _say(command)
    code = cli.main(command)
    if code:
        _offline_hint(model)
        return code

    pictures = []
    for title, text, image in QUERIES:
        command = ["query", str(index_dir)]
        if text:
            command.append(text)
        if image:
            command += ["--image", str(samples / image)]
        command += ["--top-k", str(top_k), "--rerank", "--reranker", reranker, *device_args]
        print(f"\n=== {title} ===", flush=True)
        _say(command)
        code = cli.main(command)
        if code:
            _offline_hint(reranker)
            return code
        pictures.append(cli.default_picture_path(index_dir, text, samples / image if image else None))

    print("\nDone. Results pictures (thumbnails with scores):")
    for p in pictures:
        print(f"  {p}")
    if _is_tiny(model):
        print("\n" + cli.TINY_WARNING)
    return 0


def _offline_hint(model: str) -> None:
    if _is_tiny(model) or Path(model).exists():
        return
    print("\nThe real models could not be loaded (see the message above). Options:\n"
          "  make demo MODEL=tiny          offline, tiny random checkpoints (the pipeline runs; rankings are "
          "meaningless)\n"
          "  make demo HF_HUB_OFFLINE=0    allow downloading the real models (needs network access and ~9 GB)",
          file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m qwen3vl_integrations.demo",
        description="Index the generated sample folder with qwen3vl-search and run three reranked queries "
        "(text to image, text to video, image to image).",
    )
    parser.add_argument("--model", default="real",
                        help="'real' (Qwen/Qwen3-VL-Embedding-2B + Qwen/Qwen3-VL-Reranker-2B, the default), 'tiny' "
                        "(tiny random checkpoints: offline, meaningless rankings), or an embedding model id/path")
    parser.add_argument("--reranker", default=None,
                        help="reranker id/path (default: the one that goes with --model)")
    parser.add_argument("--out", default=DEFAULT_OUT, help=f"output folder (default {DEFAULT_OUT}/)")
    parser.add_argument("--device", default=None, help="torch device (default: the best available)")
    parser.add_argument("--top-k", type=int, default=5, help="results per query (default 5)")
    args = parser.parse_args(argv)
    return run_demo(args.model, reranker=args.reranker, out=args.out, device=args.device, top_k=args.top_k)


if __name__ == "__main__":
    sys.exit(main())
