"""Long texts cut before tokenising (core/long_texts.py): the kept token ids never change, the cut happens."""
from __future__ import annotations

import copy
import random

import numpy as np
import pytest

from qwen3vl_integrations import Qwen3VLEmbedder, Qwen3VLReranker
from qwen3vl_integrations.core import long_texts
from qwen3vl_integrations.core.inputs import Item
from qwen3vl_integrations.core.long_texts import LongTextCut

# Pieces of text that stress the tokenizer's pipeline where a cut lands: whitespace runs before words, digits and
# punctuation, newlines, contractions, combining marks that NFC composes or reorders, characters NFC maps to ASCII,
# scripts without spaces, full-width spaces, characters Python and the regex may class differently.
FRAGMENTS = [
    "the", " cat", " sat", "s", "ing", "'s", "'S", "'ll", "'re", "'", " don't", " ", "  ", "   ", "\t", "\n", "\n\n",
    "\r\n", " \n ", "\n  ", "1", "23", "456", ".", "!!", "...", ",", " (", ")", " -", "_", "—", "“", "”", "é",
    "e\u0301", "\u0301", "\u0316", "\u0301\u0316", "n\u0303", "A\u030a", "\u212b", "\u212a", "中文", "汉字测试",
    "。", "，", "한국어", "\u1100\u1161", "\u11a8", "日本語", "カタカナ", "カ\u3099", "\u3099", "😀", "\u200b",
    "\u00a0", "\u3000", "\u2028", "\x0b", "\x1c", "\x85", "ß", "İ", "ﬁ", "Ⅻ", "①", "٣", "Ω", "<", "|>", "<|",
    "Привет", " мир", "αβγ", "      ", " \n   \n  ", "\t \n\t ", "a\u0316\u0301\u0301", "\u0316\u0316",
]


def random_text(rng: random.Random, pieces: int) -> str:
    """Mostly words and spaces (as real text), with every fragment showing up often."""
    return "".join(rng.choice(FRAGMENTS) if rng.random() < 0.5 else rng.choice(FRAGMENTS[:3])
                   for _ in range(pieces))


def common_prefix(a: list[int], b: list[int]) -> int:
    return next((n for n, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


@pytest.fixture(scope="module")
def cut(tiny_embedder) -> LongTextCut:
    found = tiny_embedder.load().long_text_cut
    assert found is not None, "the tiny checkpoint's tokenizer is Qwen2's: it must be recognised"
    return found


@pytest.fixture(scope="module")
def rich_cut() -> LongTextCut:
    """The same pipeline with a BPE vocabulary trained here on the fragments (4,000 tokens): unlike the tiny
    checkpoint's few hundred merges, it joins whitespace runs, newlines, marks and words into single tokens, so a
    piece that comes out different changes the ids (about 1 s)."""
    from tokenizers import Regex, Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.normalizer = normalizers.NFC()
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(long_texts.QWEN2_PIECES), "isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    rng = random.Random(0)
    backend.train_from_iterator([random_text(rng, 200) for _ in range(2000)], trainers.BpeTrainer(
        vocab_size=4000, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), special_tokens=["<|im_start|>"],
        show_progress=False))
    found = LongTextCut.for_tokenizer(PreTrainedTokenizerFast(tokenizer_object=backend))
    assert found is not None and found.added == ("<|im_start|>",)
    return found


@pytest.fixture(params=["tiny", "rich"])
def any_cut(request) -> LongTextCut:
    return request.getfixturevalue("cut" if request.param == "tiny" else "rich_cut")


@pytest.mark.parametrize("seed", range(4))
def test_pieces_before_the_settled_end_are_the_whole_texts(any_cut, seed):
    """Reasons 2-4 of core/long_texts.py, at random ends and without slack: with `h` a head ending where
    `segment_end` allows and `n` its normalised text before that last character, `X + h + Y` and `X + text + Y`
    tokenise alike for as many tokens as `X + n[:settled_end]` has, whatever X and Y stand around it (Y often begins
    with combining marks, which NFC joins to what stands before them). And X costs the text no more tokens than
    the bytes of its first pieces (`settled_tokens`' bound)."""
    rng = random.Random(seed)
    checked = 0
    for case in range(300):
        text = random_text(rng, rng.randint(20, 400))
        end = long_texts.segment_end(text, rng.randint(2, len(text) - 1))
        if end is None:
            continue
        normalised = any_cut.backend.normalizer.normalize_str(text[:end - 1])
        pieces = any_cut.pieces.pre_tokenize_str(normalised)
        settled_end = long_texts.settled_end(normalised, pieces)
        settled = normalised[:settled_end]
        # Before the text's fourth piece, its pieces may join the text before it (reason 3).
        past_the_first_pieces = sum(end <= settled_end for _, (_, end) in pieces) > long_texts.LEADING_PIECES
        checked += past_the_first_pieces
        leading = sum(len(piece.encode()) for piece, _ in pieces[:long_texts.LEADING_PIECES])
        for attempt in range(4):
            before = random_text(rng, rng.randint(1, 3)) if attempt else ""
            after = random_text(rng, rng.randint(0, 3))
            whole = any_cut.backend.encode(before + text + after, add_special_tokens=False).ids
            head = any_cut.backend.encode(before + text[:end] + after, add_special_tokens=False).ids
            kept = any_cut.backend.encode(before + settled, add_special_tokens=False).ids
            if past_the_first_pieces or not before:
                assert common_prefix(whole, head) >= len(kept), (case, before, text[:end], text[end:], after)
            if past_the_first_pieces:
                alone = any_cut.backend.encode(settled, add_special_tokens=False).ids
                assert len(kept) >= len(alone) - leading, (case, before, settled)
    assert checked > 150


def test_a_head_never_ends_where_nfc_could_join_it_to_what_follows(cut):
    """Why the head's last character must start an NFC segment (reason 2): ended after the marks below, the head
    would vouch for "e" where the whole text has "é" (U+0301 composes with the "e" across the lower-class marks)."""
    text = "one two 3 four five e" + "\u0316" * 3 + "\u0301" + " six seven"
    end = len("one two 3 four five e") + 3
    assert long_texts.segment_end(text, end) == len("one two 3 four five e")  # back to the "e"
    whole = cut.backend.encode(text, add_special_tokens=False).ids
    head = cut.backend.encode(text[:end], add_special_tokens=False).ids
    normalised = cut.backend.normalizer.normalize_str(text[:end - 1])
    vouched = normalised[:long_texts.settled_end(normalised, cut.pieces.pre_tokenize_str(normalised))]
    assert vouched.endswith("five e")
    assert common_prefix(whole, head) < len(cut.backend.encode(vouched, add_special_tokens=False).ids)


def test_a_cut_text_keeps_its_first_tokens(any_cut):
    rng = random.Random(7)
    cuts = 0
    for case in range(100):
        k = rng.randint(16, 160)
        text = random_text(rng, rng.randint(k * 6, k * 30))
        head = any_cut.cut(text, k)
        if head is not text:
            cuts += 1
            assert text.startswith(head) and len(head) < len(text)
            whole = any_cut.backend.encode(text, add_special_tokens=False).ids
            assert common_prefix(whole, any_cut.backend.encode(head, add_special_tokens=False).ids) >= k
    assert cuts > 70


@pytest.mark.parametrize("max_length", [16, 24, 48])
def test_cut_texts_keep_the_same_token_ids(tiny_embedding_path, tiny_reranker_path, tiny_core_kwargs, cut,
                                           max_length):
    """Random texts, alone, after another text, with an instruction, as a reranker's query or document: the
    truncated prompt's ids are the same with the text cut as whole, and most texts are cut."""
    embedder = Qwen3VLEmbedder(str(tiny_embedding_path), **{**tiny_core_kwargs, "max_length": max_length})
    reranker = Qwen3VLReranker(str(tiny_reranker_path), **{**tiny_core_kwargs, "max_length": max_length})
    loaded, rerank_loaded = embedder.load(), reranker.load()
    rng = random.Random(max_length)
    cuts = 0
    for case in range(120):
        text = random_text(rng, rng.randint(max_length * 4, max_length * 40))
        before = random_text(rng, rng.randint(0, 3))
        item = Item(texts=[before, text] if case % 3 == 1 else [text],
                    instruction=random_text(rng, 3) if case % 5 == 0 else None)
        shorter = embedder._cut_long_texts([item])[0]
        cuts += shorter is not item
        whole = embedder._encode_item(loaded, item, None).input_ids
        assert embedder._encode_item(loaded, shorter, None).input_ids.tolist() == whole.tolist(), (case, text)

        query = Item(texts=[random_text(rng, 4)])
        as_query, as_document = reranker._cut_long_texts([item, Item(texts=[text])])
        for q, d, q_cut, d_cut in ((query, Item(texts=[text]), query, as_document), (item, query, as_query, query)):
            whole = reranker._encode_pair(rerank_loaded, q, ([], []), d, None).input_ids
            assert reranker._encode_pair(rerank_loaded, q_cut, ([], []), d_cut, None).input_ids.tolist() \
                == whole.tolist(), (case, text)
    assert cuts > 60


def test_a_long_text_is_tokenised_as_a_head_only(tiny_embedding_path, tiny_core_kwargs, monkeypatch):
    """A 2 MB text reaches the tokenizer as a few thousand characters, and its vector is the one of the whole text
    (the lever off)."""
    embedder = Qwen3VLEmbedder(str(tiny_embedding_path), **{**tiny_core_kwargs, "max_length": 64})
    rng = random.Random(0)
    text = " ".join(rng.choice(["retrieval", "of", "documents", "2024", "images,", "and\nvideos."])
                    for _ in range(300_000))
    assert len(text) > 2_000_000
    seen: list[int] = []
    tokenizer = embedder.load().tokenizer
    original = type(tokenizer._tokenizer).encode_batch_fast

    def counting(backend, texts, *args, **kwargs):
        seen.extend(len(t) for t in texts)
        return original(backend, texts, *args, **kwargs)

    monkeypatch.setattr(type(tokenizer._tokenizer), "encode_batch_fast", counting)
    inputs = [text, "short", {"text": ["A title.\n", text[1000:]]}]  # two long items: cut on threads
    vectors = embedder.embed(inputs)
    assert seen and max(seen) < 5_000  # the cut's and the planner's counts, on heads
    monkeypatch.setattr(long_texts, "CUT_LONG_TEXTS", False)
    seen.clear()
    np.testing.assert_array_equal(embedder.embed(inputs), vectors)
    assert max(seen) > 2_000_000


def test_the_planner_counts_a_long_text_at_most_max_length(tiny_embedding_path, tiny_reranker_path,
                                                           tiny_core_kwargs, monkeypatch):
    """Truncation's bound, not a text's whole length, decides its batch (a text of 100k tokens was planned as 100k,
    alone in its batch; cut or whole, a long text now gets the same plan, so the same vectors bit for bit)."""
    embedder = Qwen3VLEmbedder(str(tiny_embedding_path), **{**tiny_core_kwargs, "max_length": 64})
    reranker = Qwen3VLReranker(str(tiny_reranker_path), **{**tiny_core_kwargs, "max_length": 64})
    planned: list[list[int]] = []
    for core in (embedder, reranker):
        original = core._run

        def run(costs, *args, _original=original, **kwargs):
            planned.append(list(costs))
            return _original(costs, *args, **kwargs)

        monkeypatch.setattr(core, "_run", run)
    embedder.embed(["word " * 2000, "short"])
    reranker.score("query", ["word " * 2000, "short"])
    assert planned[0][0] == 64 and planned[0][1] < 64
    assert planned[1][0] == 64 + 5  # a pair: max_length and the 5 tokens of the chat suffix


def test_texts_the_cut_cannot_vouch_for_are_kept_whole(cut):
    rng = random.Random(1)
    text = random_text(rng, 20_000)
    assert len(cut.cut(text, 64)) < len(text)
    # An added token anywhere (truncation keeps special tokens wherever they stand).
    assert cut.cut(text + "<|im_start|>", 64) == text + "<|im_start|>"
    # Too short to gain from a cut.
    assert cut.cut(text[:64 * long_texts.MIN_CHARS_PER_TOKEN - 1], 64) == text[:64 * long_texts.MIN_CHARS_PER_TOKEN - 1]
    # No character that starts an NFC segment: a combining mark after every letter.
    accented = "e\u0301" * 20_000
    assert cut.cut(accented, 64) == accented
    # A text that is one piece: nothing before the cut is known to be the whole text's.
    letters = "Ω" * 5_000 + "a" * 20_000
    assert cut.cut(letters, 64) == letters


def test_unknown_tokenizer_pipelines_are_not_cut(tiny_embedder):
    from tokenizers import normalizers, pre_tokenizers

    tokenizer = tiny_embedder.load().tokenizer
    assert LongTextCut.for_tokenizer(tokenizer) is not None
    other = copy.deepcopy(tokenizer)
    other._tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    assert LongTextCut.for_tokenizer(other) is None
    other = copy.deepcopy(tokenizer)
    other._tokenizer.normalizer = normalizers.NFKC()
    assert LongTextCut.for_tokenizer(other) is None
    other = copy.deepcopy(tokenizer)
    other._tokenizer.no_truncation()
    other._tokenizer.enable_truncation(128)  # a backend the tokenizer's call would reconfigure
    assert LongTextCut.for_tokenizer(other) is None
