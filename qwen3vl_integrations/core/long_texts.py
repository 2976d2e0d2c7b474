"""Long texts cut, before they are tokenised, to a head that holds every token truncation can keep.

A 1 MB text is about 200k tokens, of which at most `max_length` survive truncation; tokenising it whole took 2.7 s of
CPU (once to plan the batches, once to encode), for tokens that are then dropped. `LongTextCut.cut` returns a head of
the text whose tokens are the whole text's tokens as far as truncation can keep them, so the kept ids are the same.

Exact, not estimated, for the tokenizer of every Qwen3-VL checkpoint (recognised by its pipeline: added tokens split
off the raw text, NFC, the Split regex `QWEN2_PIECES`, byte-level BPE on each piece), for these reasons:

1. *Added tokens* (special ones truncation keeps wherever they are): a text holding any is never cut.
2. *Normalisation*: the head ends with a character (ASCII, a CJK ideograph or a Hangul syllable) that starts a new
   NFC segment (it never composes with, nor is reordered with, what comes before). So whatever follows the head, in
   the whole text or in a prompt, NFC changes nothing before that last character.
3. *Pieces*: the regex finds pieces left to right, each from where the last ended; which piece it finds depends on the
   characters up to two past the piece's start or one past its end, or up to the end of the whitespace run the piece
   ends in. A piece boundary after a non-whitespace character, two or more characters before the normalised head's
   end, thus has the same pieces before it in the head, in the head cut there, in the whole text and in any prompt
   that holds the text (after its first pieces: the text's first piece may join the prompt's text before it; each
   later piece ends where the text's own does, so the two agree from the third piece on, and the first three count
   for no tokens here).
4. *BPE* runs on each piece alone: the same pieces give the same tokens.

So the tokens before that boundary are the whole text's, and when there are at least `max_length` of them,
truncation (which keeps the first text tokens up to its budget, and every special token) keeps none of the rest.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any

# Off: every text is tokenised whole (for comparisons).
CUT_LONG_TEXTS = True

# The pre-tokenizer regex of Qwen2's tokenizer (every Qwen3-VL checkpoint's); the reasoning above is about it alone.
QWEN2_PIECES = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+"
                r"|\s+(?!\S)|\s+")
PRE_TOKENIZER = {"type": "Sequence", "pretokenizers": [
    {"type": "Split", "pattern": {"Regex": QWEN2_PIECES}, "behavior": "Isolated", "invert": False},
    {"type": "ByteLevel", "add_prefix_space": False, "use_regex": False},
]}
# Texts shorter than this many characters per kept token are tokenised whole: a cut would save too little.
MIN_CHARS_PER_TOKEN = 12
# The first head tried holds this many characters per token needed (English runs about 4.5 per token).
FIRST_CHARS_PER_TOKEN = 5
# Pieces at the text's start that may differ inside a prompt (reason 3); their bytes bound their tokens.
LEADING_PIECES = 3
# Characters searched back from a planned end for one that starts an NFC segment (reason 2).
END_SEARCH = 4096


def starts_nfc_segment(character: str) -> bool:
    """Whether NFC never composes `character` with, nor reorders it against, the characters before it: ASCII, CJK
    unified ideographs (with extension A) and Hangul syllables, none of which is a combining character or the second
    of a canonical composition."""
    code = ord(character)
    return code < 0x80 or 0x3400 <= code <= 0x4DBF or 0x4E00 <= code <= 0x9FFF or 0xAC00 <= code <= 0xD7A3


@dataclass
class LongTextCut:
    """Cuts long texts for one tokenizer (`for_tokenizer`); its Rust backend is only read, never reconfigured."""

    backend: Any = field(repr=False)  # tokenizers.Tokenizer
    added: tuple[str, ...] = field(repr=False)  # the contents of the added tokens
    pieces: Any  # tokenizers.pre_tokenizers.Split with QWEN2_PIECES

    @classmethod
    def for_tokenizer(cls, tokenizer: Any) -> LongTextCut | None:
        """The cut for `tokenizer`, or None where its pipeline is not the one the reasoning above is about."""
        from .encoding import fast_backend

        backend = fast_backend(tokenizer)
        if backend is None:
            return None
        try:
            from tokenizers import Regex
            from tokenizers.pre_tokenizers import Split

            spec = json.loads(backend.to_str())
        except (ImportError, ValueError):
            return None
        pre_tokenizer = spec.get("pre_tokenizer") or {}
        for step in pre_tokenizer.get("pretokenizers", []):
            step.pop("trim_offsets", None)  # offsets only
        added = spec.get("added_tokens") or []
        if (spec.get("normalizer") != {"type": "NFC"} or pre_tokenizer != PRE_TOKENIZER
                or (spec.get("model") or {}).get("type") != "BPE"
                or any(token.get("normalized", True) for token in added)):  # split off the normalised text instead
            return None
        return cls(backend, tuple(token["content"] for token in added), Split(Regex(QWEN2_PIECES), "isolated"))

    def cut(self, text: str, tokens: int) -> str:
        """`text`, or a head of it whose first `tokens` text tokens are the whole text's, wherever it stands in a
        prompt. Long texts only (MIN_CHARS_PER_TOKEN); a text that holds an added token is kept whole."""
        if not self.is_long(text, tokens) or self.holds_added_token(text):
            return text
        planned = tokens * FIRST_CHARS_PER_TOKEN
        while planned < len(text) // 2:
            end = segment_end(text, planned)
            if end is None:
                return text
            found = self.settled_tokens(text[:end - 1])
            if found >= tokens:
                return text[:end]
            # Grow by the density found so far (at least 1.5x): two or three tries for any script.
            planned = int(planned * max(1.5, 1.2 * tokens / max(found, 1)))
        return text

    @staticmethod
    def is_long(text: str, tokens: int) -> bool:
        """Whether `cut` tries to cut `text` (MIN_CHARS_PER_TOKEN; never with CUT_LONG_TEXTS off)."""
        return CUT_LONG_TEXTS and len(text) >= tokens * MIN_CHARS_PER_TOKEN

    def holds_added_token(self, text: str) -> bool:
        """Whether an added token's text occurs in `text`; those whose first character does not are not searched
        for (Qwen's all begin with "<": one pass over most texts, not 26)."""
        firsts = {first for first in {added[:1] for added in self.added} if first in text}
        return any(added in text for added in self.added if added[:1] in firsts)

    def settled_tokens(self, head: str) -> int:
        """A lower bound on the tokens that `head` gives as the whole text does, wherever the text stands (reasons
        2-4): the tokens before `settled_end`, less an upper bound on those of the first pieces. `head` is followed,
        in the text, by a character that starts an NFC segment."""
        normalised = self.backend.normalizer.normalize_str(head)
        pieces = self.pieces.pre_tokenize_str(normalised)
        end = settled_end(normalised, pieces)
        if end == 0 or self.holds_added_token(normalised[:end]):
            return 0
        encode = getattr(self.backend, "encode_batch_fast", self.backend.encode_batch)  # without offsets where it can
        settled = encode([normalised[:end]], add_special_tokens=False)[0]
        return len(settled.ids) - sum(len(piece.encode()) for piece, _ in pieces[:LEADING_PIECES])


def settled_end(normalised: str, pieces: list[tuple[str, tuple[int, int]]]) -> int:
    """The last end of one of `pieces` (of `normalised`) after a non-whitespace character and two or more characters
    before the end of `normalised`: what follows cannot change the pieces before it (reason 3). 0 if none."""
    for _, (_, end) in reversed(pieces):
        if end + 2 <= len(normalised) and not normalised[end - 1].isspace():
            return end
    return 0


def segment_end(text: str, planned: int) -> int | None:
    """The largest end at or below `planned` (within END_SEARCH characters) whose last character starts an NFC
    segment, or None."""
    for end in range(planned, max(planned - END_SEARCH, 1), -1):
        if starts_nfc_segment(text[end - 1]):
            return end
    return None
