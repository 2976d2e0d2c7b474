"""Random, locally built Qwen3-VL checkpoints for tests and CPU benchmarks.

Nothing here downloads anything. Three sizes share one tokenizer and one processor:

* ``tiny``  - a ~277k-parameter model with the real preprocessing geometry (patch 16, merge 2, temporal 2).
  Built in a fraction of a second; this is the test fixture.
* ``small`` - a 35.6M-parameter model, large enough that model compute dominates preprocessing on a CPU.
* ``2b``    - the real Qwen3-VL-2B architecture with random weights (about 4 GB in bf16).

Each comes in two tokenizer flavours, mirroring the real checkpoints:

* ``embedding`` - the tokenizer appends ``<|endoftext|>`` to every encoded sequence;
* ``reranker``  - the tokenizer appends nothing.

Python API::

    from qwen3vl_integrations.testing import build_tiny_checkpoint, build_random_checkpoint
    build_tiny_checkpoint(path, kind="embedding", seed=0) -> Path
    build_random_checkpoint(path, size="small", kind="embedding", dtype=torch.bfloat16, seed=0,
                            text_layers=None) -> Path

Command line::

    python -m qwen3vl_integrations.testing build PATH --kind embedding --size tiny --seed 0

Builds are deterministic: the same arguments give byte-identical files.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import json
import os
import random
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from transformers import Qwen3VLConfig

__all__ = [
    "CHAT_TEMPLATE",
    "KINDS",
    "SIZES",
    "SPECIAL_TOKENS",
    "NON_SPECIAL_ADDED_TOKENS",
    "build_tiny_checkpoint",
    "build_random_checkpoint",
    "build_tokenizer",
    "build_processor",
    "random_checkpoint_config",
    "checkpoint_num_parameters",
    "main",
]

KINDS = ("embedding", "reranker")
SIZES = ("tiny", "small", "2b")

# The 14 special tokens, in the order of the real vocabulary (real ids 151643-151656).
SPECIAL_TOKENS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|object_ref_start|>",
    "<|object_ref_end|>",
    "<|box_start|>",
    "<|box_end|>",
    "<|quad_start|>",
    "<|quad_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|vision_pad|>",
    "<|image_pad|>",
    "<|video_pad|>",
)
# The 12 non-special added tokens that follow them (real ids 151657-151668).
NON_SPECIAL_ADDED_TOKENS = (
    "<tool_call>",
    "</tool_call>",
    "<|fim_prefix|>",
    "<|fim_middle|>",
    "<|fim_suffix|>",
    "<|fim_pad|>",
    "<|repo_name|>",
    "<|file_sep|>",
    "<tool_response>",
    "</tool_response>",
    "<think>",
    "</think>",
)

# Qwen2's pre-tokenizer split regex.
_SPLIT_REGEX = (
    r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"""
    r"""|\s+(?!\S)|\s+"""
)

# Compact chat template: renders the embedder and reranker layouts exactly.
CHAT_TEMPLATE = (
    "{%- set ns = namespace(img=0, vid=0) -%}\n"
    "{%- for m in messages -%}\n"
    "  {{- '<|im_start|>' + m['role'] + '\\n' -}}\n"
    "  {%- if m['content'] is string -%}{{- m['content'] -}}\n"
    "  {%- else -%}{%- for c in m['content'] -%}\n"
    "    {%- if c['type'] == 'image' or 'image' in c or 'image_url' in c -%}\n"
    "      {%- set ns.img = ns.img + 1 -%}\n"
    "      {%- if add_vision_id -%}{{- 'Picture ' ~ ns.img ~ ': ' -}}{%- endif -%}\n"
    "      {{- '<|vision_start|><|image_pad|><|vision_end|>' -}}\n"
    "    {%- elif c['type'] == 'video' or 'video' in c -%}\n"
    "      {%- set ns.vid = ns.vid + 1 -%}\n"
    "      {%- if add_vision_id -%}{{- 'Video ' ~ ns.vid ~ ': ' -}}{%- endif -%}\n"
    "      {{- '<|vision_start|><|video_pad|><|vision_end|>' -}}\n"
    "    {%- elif 'text' in c -%}{{- c['text'] -}}\n"
    "    {%- endif -%}\n"
    "  {%- endfor -%}{%- endif -%}\n"
    "  {{- '<|im_end|>\\n' -}}\n"
    "{%- endfor -%}\n"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}\n"
)

# Words of the synthetic training corpus. It includes the chat roles, the reranker answers and the words of the
# default prompts, so that real prompts tokenize into few tokens.
_WORDS = (
    # roles and answers
    "yes no system user assistant "
    # prompt words
    "Represent the user's input Given a search query retrieve relevant candidates that answer "
    "Retrieve images or text to Judge whether Document meets requirements based on Query and Instruct "
    "provided Note can only be NULL "
    # everyday words
    "cat dog red blue green yellow black white car house tree water sky sun book page picture "
    "photo video document table chart city road person man woman child animal "
    "food apple music story news paper report data model vector score rank "
    "small large big little new old good bad fast slow happy is are was of in with for at by from this "
    "what which how when where who why find show me please about"
).split()
_CORPUS_SEED = 20250101
_CORPUS_LINES = 4000
_PUNCT = ("", "", "", ".", ".", ",", "?", "!", ":")


def _corpus() -> list[str]:
    """A deterministic synthetic corpus: about 4,000 lines drawn from 114 common words."""
    rng = random.Random(_CORPUS_SEED)
    lines = []
    for _ in range(_CORPUS_LINES):
        n = rng.randint(1, 12)
        words = [rng.choice(_WORDS) for _ in range(n)]
        if rng.random() < 0.3:
            words[0] = words[0].capitalize()
        if rng.random() < 0.1:
            words.insert(rng.randrange(len(words) + 1), str(rng.randint(0, 999)))
        lines.append(" ".join(words) + rng.choice(_PUNCT))
    # Standalone lines: the answers and the chat roles must be single tokens without the leading-space marker.
    for word in ("yes", "no", "system", "user", "assistant"):
        lines.extend([word] * 50)
    return lines


@functools.lru_cache(maxsize=1)
def _trained_bpe() -> tuple[tuple[tuple[str, int], ...], tuple[tuple[str, str], ...]]:
    """Train the byte-level BPE once per process; returns (vocab items sorted by id, merges)."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(_SPLIT_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=1024,
        min_frequency=2,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        special_tokens=[],
        show_progress=False,
    )
    bpe.train_from_iterator(_corpus(), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab = tuple(sorted(model["vocab"].items(), key=lambda kv: kv[1]))
    pairs = (m.split(" ", 1) if isinstance(m, str) else m for m in model["merges"])
    merges = tuple((first, second) for first, second in pairs)
    return vocab, merges


def _fail(message: str) -> None:
    raise RuntimeError(f"tiny checkpoint self-check failed: {message}")


def build_tokenizer(kind: str = "embedding"):
    """The fixture tokenizer (a transformers ``Qwen2Tokenizer``) with the chat template set.

    ``kind="embedding"`` appends ``<|endoftext|>`` through a TemplateProcessing post-processor;
    ``kind="reranker"`` appends nothing.
    """
    _check_kind(kind)
    from tokenizers import AddedToken
    from tokenizers.processors import TemplateProcessing
    from transformers import Qwen2Tokenizer

    vocab_items, merges = _trained_bpe()
    vocab = dict(vocab_items)
    # Special tokens go into the vocab dict before wrapping, so their ids are contiguous and in the real order.
    for token in SPECIAL_TOKENS + NON_SPECIAL_ADDED_TOKENS:
        if token in vocab:  # pragma: no cover - the corpus has no '<' characters
            _fail(f"{token!r} was learnt by BPE")
        vocab[token] = len(vocab)

    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(m) for m in merges],
        unk_token=None,
        bos_token=None,
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=32768,
        clean_up_tokenization_spaces=False,
        additional_special_tokens=[AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS],
    )
    tok.add_tokens([AddedToken(t, special=False, normalized=False) for t in NON_SPECIAL_ADDED_TOKENS])
    tok.chat_template = CHAT_TEMPLATE
    if kind == "embedding":
        eot_id = tok.convert_tokens_to_ids("<|endoftext|>")
        tok.backend_tokenizer.post_processor = TemplateProcessing(
            single="$A <|endoftext|>",
            pair="$A $B <|endoftext|>",
            special_tokens=[("<|endoftext|>", eot_id)],
        )

    # Every added token kept the id we gave it (i.e. the order is the real one).
    for token in SPECIAL_TOKENS + NON_SPECIAL_ADDED_TOKENS:
        if tok.convert_tokens_to_ids(token) != vocab[token]:
            _fail(f"{token!r} has id {tok.convert_tokens_to_ids(token)}, expected {vocab[token]}")
    if len(tok) != len(vocab):
        _fail(f"len(tokenizer)={len(tok)} but the vocab has {len(vocab)} entries")
    # "yes", "no" and "assistant" are single vocab entries (no leading-space marker) and encode as one token,
    # so the reranker suffix <|im_end|> \n <|im_start|> assistant \n is 5 tokens as in the real model.
    for word in ("yes", "no", "assistant"):
        if word not in vocab or tok.encode(word, add_special_tokens=False) != [vocab[word]]:
            _fail(f"{word!r} is not a single token: {tok.encode(word, add_special_tokens=False)}")
    suffix = tok.encode("<|im_end|>\n<|im_start|>assistant\n", add_special_tokens=False)
    if len(suffix) != 5:
        _fail(f"the reranker suffix is {len(suffix)} tokens, expected 5")
    return tok


def _image_processor_kwargs() -> dict[str, Any]:
    return dict(
        patch_size=16,
        temporal_patch_size=2,
        merge_size=2,
        image_mean=[0.5, 0.5, 0.5],
        image_std=[0.5, 0.5, 0.5],
    )


def build_processor(tokenizer):
    """A ``Qwen3VLProcessor`` with the real geometry (patch 16, merge 2, temporal 2) and small default budgets."""
    from transformers import Qwen2VLImageProcessor, Qwen3VLProcessor, Qwen3VLVideoProcessor

    image_processor = Qwen2VLImageProcessor(
        size={"shortest_edge": 4 * 32 * 32, "longest_edge": 256 * 32 * 32}, **_image_processor_kwargs()
    )
    video_processor = Qwen3VLVideoProcessor(
        size={"shortest_edge": 4 * 32 * 32, "longest_edge": 1024 * 32 * 32},
        fps=2,
        min_frames=2,
        max_frames=16,
        **_image_processor_kwargs(),
    )
    return Qwen3VLProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        video_processor=video_processor,
        chat_template=CHAT_TEMPLATE,
    )


def _round_up(n: int, multiple: int) -> int:
    return -(-n // multiple) * multiple


def _token_ids(tokenizer) -> dict[str, int]:
    ids = {
        "bos_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "pad_token_id": tokenizer.convert_tokens_to_ids("<|endoftext|>"),
        "eos_token_id": tokenizer.convert_tokens_to_ids("<|im_end|>"),
        "image_token_id": tokenizer.convert_tokens_to_ids("<|image_pad|>"),
        "video_token_id": tokenizer.convert_tokens_to_ids("<|video_pad|>"),
        "vision_start_token_id": tokenizer.convert_tokens_to_ids("<|vision_start|>"),
        "vision_end_token_id": tokenizer.convert_tokens_to_ids("<|vision_end|>"),
    }
    if ids["pad_token_id"] != tokenizer.pad_token_id or ids["eos_token_id"] != tokenizer.eos_token_id:
        _fail("tokenizer pad/eos do not match <|endoftext|>/<|im_end|>")
    return ids


# Architecture of each size. vocab_size None means "len(tokenizer) rounded up to a multiple of 64".
_ARCH: dict[str, dict[str, dict[str, Any]]] = {
    "tiny": {
        "text": dict(
            vocab_size=None,
            hidden_size=64,
            intermediate_size=128,
            num_hidden_layers=2,
            num_attention_heads=4,
            num_key_value_heads=2,
            head_dim=16,
            max_position_embeddings=4096,
            mrope_section=[4, 2, 2],
        ),
        "vision": dict(
            depth=2,
            hidden_size=32,
            intermediate_size=64,
            num_heads=2,
            num_position_embeddings=256,
            deepstack_visual_indexes=[0, 1],
        ),
    },
    "small": {
        "text": dict(
            vocab_size=None,
            hidden_size=512,
            intermediate_size=1536,
            num_hidden_layers=8,
            num_attention_heads=8,
            num_key_value_heads=4,
            head_dim=64,
            max_position_embeddings=32768,
            mrope_section=[12, 10, 10],
        ),
        "vision": dict(
            depth=4,
            hidden_size=256,
            intermediate_size=1024,
            num_heads=4,
            num_position_embeddings=576,
            deepstack_visual_indexes=[1, 2, 3],
        ),
    },
    "2b": {
        "text": dict(
            vocab_size=151936,
            hidden_size=2048,
            intermediate_size=6144,
            num_hidden_layers=28,
            num_attention_heads=16,
            num_key_value_heads=8,
            head_dim=128,
            max_position_embeddings=262144,
            mrope_section=[24, 20, 20],
        ),
        "vision": dict(
            depth=24,
            hidden_size=1024,
            intermediate_size=4096,
            num_heads=16,
            num_position_embeddings=2304,
            deepstack_visual_indexes=[5, 11, 17],
        ),
    },
}


def random_checkpoint_config(size: str = "tiny", tokenizer=None, text_layers: int | None = None) -> "Qwen3VLConfig":
    """The ``Qwen3VLConfig`` of a random checkpoint of ``size`` ("tiny", "small" or "2b"), without any weights.

    Token ids come from ``tokenizer`` (default: the fixture tokenizer). ``text_layers`` replaces the size's number of
    language-model layers. Validates what a hand-made config gets wrong silently (mrope_section sum, deepstack
    indexes, out_hidden_size, vocab size).
    """
    if size not in _ARCH:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    from transformers import Qwen3VLConfig

    if tokenizer is None:
        tokenizer = build_tokenizer("reranker")
    arch = _ARCH[size]
    text = dict(arch["text"])
    if text_layers is not None:
        text["num_hidden_layers"] = int(text_layers)
    vision = dict(arch["vision"])
    ids = _token_ids(tokenizer)

    mrope_section = text.pop("mrope_section")
    vocab_size = text.pop("vocab_size") or _round_up(len(tokenizer), 64)
    if sum(mrope_section) != text["head_dim"] // 2:
        raise ValueError(f"mrope_section {mrope_section} must sum to head_dim // 2 = {text['head_dim'] // 2}")
    if any(not 0 <= i < vision["depth"] for i in vision["deepstack_visual_indexes"]) or len(
        vision["deepstack_visual_indexes"]
    ) > text["num_hidden_layers"]:
        raise ValueError(f"bad deepstack_visual_indexes {vision['deepstack_visual_indexes']}")
    if vocab_size < len(tokenizer):
        raise ValueError(f"vocab_size {vocab_size} < len(tokenizer) {len(tokenizer)}")

    text_config = dict(
        text,
        vocab_size=vocab_size,
        hidden_act="silu",
        rms_norm_eps=1e-6,
        attention_bias=False,
        rope_parameters={
            "rope_type": "default",
            "rope_theta": 5000000.0,
            "mrope_section": list(mrope_section),
            "mrope_interleaved": True,
        },
        tie_word_embeddings=True,
        bos_token_id=ids["bos_token_id"],
        pad_token_id=ids["pad_token_id"],
        eos_token_id=ids["eos_token_id"],
    )
    vision_config = dict(
        vision,
        patch_size=16,
        spatial_merge_size=2,
        temporal_patch_size=2,
        in_channels=3,
        out_hidden_size=text["hidden_size"],
        hidden_act="gelu_pytorch_tanh",
    )
    return Qwen3VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids["image_token_id"],
        video_token_id=ids["video_token_id"],
        vision_start_token_id=ids["vision_start_token_id"],
        vision_end_token_id=ids["vision_end_token_id"],
        tie_word_embeddings=True,
    )


def _check_config(config, tokenizer) -> None:
    ids = _token_ids(tokenizer)
    tc = config.text_config
    pairs = {
        "image_token_id": config.image_token_id,
        "video_token_id": config.video_token_id,
        "vision_start_token_id": config.vision_start_token_id,
        "vision_end_token_id": config.vision_end_token_id,
        "bos_token_id": tc.bos_token_id,
        "pad_token_id": tc.pad_token_id,
        "eos_token_id": tc.eos_token_id,
    }
    for name, value in pairs.items():
        if value != ids[name]:
            _fail(f"config {name}={value} but the tokenizer says {ids[name]}")
    if tc.vocab_size < len(tokenizer):
        _fail(f"vocab_size {tc.vocab_size} < len(tokenizer) {len(tokenizer)}")
    if config.vision_config.out_hidden_size != tc.hidden_size:
        _fail("vision out_hidden_size != text hidden_size")


def _check_kind(kind: str) -> None:
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")


def _resolve_dtype(dtype) -> "torch.dtype":
    import torch

    if isinstance(dtype, torch.dtype):
        return dtype
    names = {"float32": torch.float32, "fp32": torch.float32, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16,
             "float16": torch.float16, "fp16": torch.float16}
    if dtype not in names:
        raise ValueError(f"unsupported dtype {dtype!r}; use one of {sorted(names)}")
    return names[dtype]


def _build(path, size: str, kind: str, dtype, seed: int, text_layers: int | None = None) -> Path:
    _check_kind(kind)
    if size not in SIZES:
        raise ValueError(f"size must be one of {SIZES}, got {size!r}")
    import torch
    from transformers import Qwen3VLForConditionalGeneration

    dtype = _resolve_dtype(dtype)
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)

    tokenizer = build_tokenizer(kind)
    config = random_checkpoint_config(size, tokenizer, text_layers)
    _check_config(config, tokenizer)
    processor = build_processor(tokenizer)

    # Leave the caller's RNG state untouched; the weights depend only on `seed`.
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = Qwen3VLForConditionalGeneration._from_config(config, dtype=dtype)
    model.eval()
    if model.lm_head.weight.data_ptr() != model.model.language_model.embed_tokens.weight.data_ptr():
        _fail("lm_head is not tied to embed_tokens")

    processor.save_pretrained(path)
    with _quiet_progress_bars():
        model.save_pretrained(path)
    return path


@contextlib.contextmanager
def _quiet_progress_bars():
    """Hide transformers' "Writing model shards" bar for the duration of a save, then restore the setting."""
    from transformers.utils import logging as hf_logging

    previous = getattr(hf_logging, "_tqdm_active", None)
    if previous is not None:
        hf_logging._tqdm_active = False
    try:
        yield
    finally:
        if previous is not None:
            hf_logging._tqdm_active = previous


def build_tiny_checkpoint(path, kind: str = "embedding", seed: int = 0) -> Path:
    """Write the tiny random Qwen3-VL checkpoint to the folder ``path`` and return it.

    The folder holds config, fp32 safetensors weights (276,704 parameters), tokenizer, processor and chat template.
    It loads offline with ``AutoProcessor``, ``AutoModel`` (``Qwen3VLModel``) and
    ``Qwen3VLForConditionalGeneration`` with no missing or unexpected keys. ``kind="embedding"``: the tokenizer
    appends ``<|endoftext|>``; ``kind="reranker"``: it appends nothing. Same arguments give byte-identical files.
    """
    return _build(path, "tiny", kind, "float32", seed)


def build_random_checkpoint(
    path, size: str = "small", kind: str = "embedding", dtype="bfloat16", seed: int = 0, text_layers: int | None = None
) -> Path:
    """Write a random checkpoint of ``size`` ("small", "2b"; "tiny" also accepted) to ``path`` and return it.

    ``small``: text hidden 512 x 8 layers, vision 256 x 4 layers (35.6M parameters), for CPU benchmarks where
    model compute should dominate. ``2b``: the real Qwen3-VL-2B architecture (vocab 151,936; 2.13B parameters;
    about 4 GB in bf16 and 25-30 s to initialise on two cores). Weights are random (normal, std 0.02) and give
    finite outputs; they carry no meaning. The tokenizer and processor are the tiny fixture's. ``dtype`` is a
    ``torch.dtype`` or one of "float32", "bfloat16", "float16". Note: bf16 is only fast on CPUs with avx512_bf16.
    ``text_layers`` replaces the size's number of language-model layers (the tiny size's 2 end where its vision
    features are added, after layers 0 and 1).
    """
    return _build(path, size, kind, dtype, seed, text_layers)


def checkpoint_num_parameters(path) -> int:
    """Number of stored parameters of a checkpoint folder (tied weights counted once), read from the headers."""
    from safetensors import safe_open

    path = Path(path)
    files = sorted(path.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no .safetensors files in {path}")
    total = 0
    for file in files:
        with safe_open(str(file), framework="pt") as f:
            for key in f.keys():
                n = 1
                for dim in f.get_slice(key).get_shape():
                    n *= dim
                total += n
    return total


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m qwen3vl_integrations.testing",
        description="Build random Qwen3-VL checkpoints locally (no downloads) for tests and CPU benchmarks.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    build = sub.add_parser(
        "build",
        help="write a random checkpoint folder",
        description="Write a random, deterministic Qwen3-VL checkpoint (config, weights, tokenizer, processor, "
        "chat template) into PATH. It loads offline with transformers' AutoProcessor / AutoModel / "
        "Qwen3VLForConditionalGeneration.",
    )
    build.add_argument("path", metavar="PATH", help="output folder (created if missing; files are overwritten)")
    build.add_argument(
        "--kind",
        choices=KINDS,
        required=True,
        help="tokenizer flavour: 'embedding' appends <|endoftext|> to every sequence (like Qwen3-VL-Embedding); "
        "'reranker' appends nothing (like Qwen3-VL-Reranker)",
    )
    build.add_argument(
        "--size",
        choices=SIZES,
        default="tiny",
        help="'tiny': ~277k parameters, fp32, for tests (default); 'small': ~36M parameters, for CPU benchmarks; "
        "'2b': the real Qwen3-VL-2B architecture with random weights (~4 GB in bf16, slow)",
    )
    build.add_argument("--seed", type=int, default=0, help="torch seed for the random weights (default 0)")
    build.add_argument(
        "--dtype",
        choices=("float32", "bfloat16", "float16"),
        default=None,
        help="weight dtype; default float32 for tiny and bfloat16 for small and 2b",
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    if args.command == "build":
        dtype = args.dtype or ("float32" if args.size == "tiny" else "bfloat16")
        path = _build(args.path, args.size, args.kind, dtype, args.seed)
        print(path)
        print(f"parameters: {checkpoint_num_parameters(path):,}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
