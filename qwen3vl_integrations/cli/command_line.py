"""The ``qwen3vl-search`` command line: its argument parser and :func:`main`."""
from __future__ import annotations

import argparse
import codecs
import io
import os
import sys
import textwrap
import warnings
from pathlib import Path
from typing import Sequence

from .constants import DEFAULT_INDEX_DIR, MANIFEST_NAME, PROG, REAL_EMBEDDING_MODEL, REAL_RERANKER_MODEL
from .errors import CLIError, _one_line
from .indexing import build_index
from .pictures import default_picture_path, picture_subtitle, render_results_picture
from .searching import _describe_query, format_table, search


def _positive_int(value: str) -> int:
    try:
        n = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}") from None
    if n <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value!r}")
    return n


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description=textwrap.fill(
            "Multimodal search over a folder of pictures, text files and videos with Qwen3-VL-Embedding (one vector "
            "space for all three) and Qwen3-VL-Reranker. First `index` a folder, then `query` the index.", 79),
        epilog=textwrap.dedent(f"""\
            examples:
              {PROG} index photos/ --index-dir photos-index
              {PROG} query photos-index "a red circle" --rerank
              {PROG} query photos-index --image photos/sunset_beach.jpg --top-k 3
              {PROG} index photos/ --model tiny      # offline smoke run: tiny random models, meaningless ranks

            Models are Hugging Face ids or local folders; 'tiny' builds tiny random checkpoints locally.
            Set HF_HUB_OFFLINE=1 to never touch the network."""),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--debug", action="store_true",
                        help="show Python tracebacks instead of one-line error messages")
    # --debug also after the subcommand, where the error message's hint leads users to put it
    debug = argparse.ArgumentParser(add_help=False)
    debug.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                       help="show Python tracebacks instead of one-line error messages")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{index,query}")

    p = sub.add_parser(
        "index", parents=[debug],
        help="embed every image, text file and video of a folder and save a searchable index",
        description="Embed every image (png, jpg, gif, bmp, webp, tiff), text file (txt, md) and video (mp4, mov, "
        "avi, mkv, webm, m4v) under FOLDER, recursively, into one LlamaIndex VectorStoreIndex saved on disk with a "
        f"manifest ({MANIFEST_NAME}). Files that cannot be read are reported, skipped and counted.",
    )
    p.add_argument("folder", metavar="FOLDER", help="the folder to index (searched recursively; hidden files skipped)")
    p.add_argument("--index-dir", metavar="DIR", default=DEFAULT_INDEX_DIR,
                   help=f"where to save the index (created or replaced; default ./{DEFAULT_INDEX_DIR})")
    p.add_argument("--model", metavar="NAME|PATH", default=REAL_EMBEDDING_MODEL,
                   help=f"embedding model: a Hugging Face id, a local checkpoint folder, or 'tiny' for tiny random "
                   f"checkpoints (offline, meaningless rankings). Default {REAL_EMBEDDING_MODEL}")
    p.add_argument("--dimensions", metavar="K", type=_positive_int, default=None,
                   help="keep only the first K dimensions of each vector (Matryoshka; 64 <= K <= model size) for a "
                   "smaller index; queries then use K too. Default: the model's full size")
    p.add_argument("--batch-size", metavar="N", type=_positive_int, default=None,
                   help="files embedded per forward pass (default: the core's, 32); lower it if memory is short")
    p.add_argument("--device", metavar="D", default=None,
                   help="torch device, e.g. cpu, cuda, cuda:1, mps (default: the best available)")
    p.add_argument("--max-frames", metavar="N", type=_positive_int, default=None,
                   help="at most N frames sampled per video (default: the core's, 64)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")

    q = sub.add_parser(
        "query", parents=[debug], help="search an index with a text, an image and/or a video",
        description="Embed the query (text, --image, --video, or a combination) with the query instruction, "
        "retrieve the nearest files of the index, optionally rerank them, print a ranked table (rank, score, rerank "
        "score, modality, file) and write a picture of the results (thumbnails with scores).",
    )
    q.add_argument("index_dir", metavar="INDEX_DIR", help="a folder written by `index`")
    q.add_argument("text", metavar="TEXT", nargs="?", default=None,
                   help="the query text (optional when --image or --video is given)")
    q.add_argument("--image", metavar="P", default=None, help="query with this picture (alone or with TEXT)")
    q.add_argument("--video", metavar="P", default=None, help="query with this video (alone or with TEXT)")
    q.add_argument("--top-k", metavar="K", type=_positive_int, default=5, help="number of results to show (default 5)")
    q.add_argument("--rerank", action="store_true",
                   help="rerank the retrieved candidates with Qwen3-VL-Reranker (slower, more accurate)")
    q.add_argument("--reranker", metavar="NAME|PATH", default=None,
                   help=f"reranker model for --rerank: a Hugging Face id, a local folder or 'tiny' (default "
                   f"{REAL_RERANKER_MODEL}, or 'tiny' when the index was built with --model tiny)")
    q.add_argument("--candidates", metavar="N", type=_positive_int, default=None,
                   help="with --rerank: how many retrieved files are reranked (default max(20, 4 x top-k))")
    q.add_argument("--instruction", metavar="TEXT", default=None,
                   help="task instruction for the query (and the reranker); default \"Retrieve images or text "
                   "relevant to the user's query.\"")
    q.add_argument("--picture", metavar="OUT.png", default=None,
                   help="where to write the results picture (default INDEX_DIR/results-<query>.png)")
    q.add_argument("--no-picture", action="store_true", help="do not write the results picture")
    q.add_argument("--model", metavar="NAME|PATH", default=None,
                   help="the embedding model to query with; must be the one the index was built with (default: "
                   "read from the index)")
    q.add_argument("--dimensions", metavar="K", type=_positive_int, default=None,
                   help="must match the index's dimension (default: read from the index)")
    q.add_argument("--device", metavar="D", default=None, help="torch device (default: the best available)")
    q.add_argument("--no-progress", action="store_true", help="hide the reranking progress bar")
    return parser


def _run(args: argparse.Namespace) -> int:
    if args.command == "index":
        index_dir = Path(args.index_dir)
        build_index(args.folder, index_dir, model=args.model, dimensions=args.dimensions,
                    batch_size=args.batch_size, device=args.device, max_frames=args.max_frames,
                    progress=not args.no_progress)
        return 0
    hits, manifest = search(args.index_dir, args.text, image=args.image, video=args.video, top_k=args.top_k,
                            rerank=args.rerank, reranker=args.reranker, candidates=args.candidates,
                            instruction=args.instruction, model=args.model, dimensions=args.dimensions,
                            device=args.device, progress=not args.no_progress)
    query = _describe_query(args.text, args.image, args.video)
    how = " (reranked)" if args.rerank else ""
    print(f"\nQuery: {query}: top {len(hits)} of {manifest['counts']['indexed']} indexed files{how}")
    print(format_table(hits))
    if not args.no_picture:
        out = Path(args.picture) if args.picture else default_picture_path(args.index_dir, args.text, args.image,
                                                                          args.video)
        render_results_picture(hits, out, query_text=args.text, query_image=args.image, query_video=args.video,
                               subtitle=picture_subtitle(manifest))
        print(f"Results picture: {out}")
    return 0


def _escape_what_stdout_cannot_encode() -> None:
    """Windows writes a redirected stdout in its ANSI code page (cp1252) and raises on the rest: a folder, file name
    or query outside it failed the command after the work was done. Escape those characters instead."""
    out = sys.stdout
    if (isinstance(out, io.TextIOWrapper) and out.errors == "strict"
            and codecs.lookup(out.encoding).name not in ("utf-8", "utf-16", "utf-32")):
        out.reconfigure(errors="backslashreplace")


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``qwen3vl-search``; returns the exit status (0 on success)."""
    _escape_what_stdout_cannot_encode()
    parser = build_parser()
    args = parser.parse_args(argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        if args.debug:
            return _run(args)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", category=FutureWarning)
            return _run(args)
    except CLIError as exc:
        if args.debug:
            raise
        print(f"{PROG}: error: {exc}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # noqa: BLE001 - keep the promise of one-line errors; --debug shows the traceback
        if args.debug:
            raise
        print(f"{PROG}: error: {_one_line(exc)} (run with --debug for the traceback)", file=sys.stderr)
        return 1
