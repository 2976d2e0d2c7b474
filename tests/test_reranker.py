"""Core Qwen3VLReranker on the tiny reranker checkpoint (issue 3).

Every numeric check compares against an independent computation: the literal prompts of REFERENCE.md §5.3, the
tokenizer's own ids, and a re-enactment of the official pipeline (qwen-vl-utils `process_vision_info`, the
checkpoint's processor with do_resize=False, the *full* `Qwen3VLForConditionalGeneration` and
`sigmoid(logit_yes - logit_no)` at the last position).
"""
from __future__ import annotations

import base64
import io
import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import qwen3vl_integrations.core.reranker as reranker_module
from qwen3vl_integrations import Qwen3VLInputError, Qwen3VLReranker
from qwen3vl_integrations.core import media as media_module
from qwen3vl_integrations.core import vision as vision_module

# The tiny_reranker fixture's budgets (tests/conftest.py), repeated here so the re-enactment uses the same numbers.
MIN_PIXELS, MAX_PIXELS, TOTAL_PIXELS, MAX_FRAMES = 4 * 32 * 32, 64 * 32 * 32, 256 * 32 * 32, 8
K = dict(device="cpu", min_pixels=MIN_PIXELS, max_pixels=MAX_PIXELS, total_pixels=TOTAL_PIXELS,
         max_frames=MAX_FRAMES)

SYSTEM = ('Judge whether the Document meets the requirements based on the Query and the Instruct provided. '
          'Note that the answer can only be "yes" or "no".')
DEFAULT = "Given a search query, retrieve relevant candidates that answer the query."
README_INSTRUCTION = "Retrieve images or text relevant to the user's query."
IMG = "<|vision_start|><|image_pad|><|vision_end|>"
VID = "<|vision_start|><|video_pad|><|vision_end|>"
SUFFIX_TEXT = "<|im_end|>\n<|im_start|>assistant\n"
ATOL = 1e-5


# ------------------------------------------------------------------------------------------------ fixtures

@pytest.fixture(scope="module")
def rr(tiny_reranker_path):
    """Our own instance (tests monkeypatch its attributes); it shares the loaded model through the registry."""
    return Qwen3VLReranker(str(tiny_reranker_path), **K)


@pytest.fixture()
def fresh(tiny_reranker_path):
    """A reranker that has not loaded anything yet."""
    reranker = Qwen3VLReranker(str(tiny_reranker_path), **K)
    assert not reranker.is_loaded
    return reranker


@pytest.fixture(scope="module")
def tok(rr):
    return rr.load().tokenizer


@pytest.fixture(scope="module")
def suffix_ids(tok):
    ids = tok(SUFFIX_TEXT, add_special_tokens=False)["input_ids"]
    assert len(ids) == 5
    assert ids[0] == tok.convert_tokens_to_ids("<|im_end|>")
    assert ids[2] == tok.convert_tokens_to_ids("<|im_start|>")
    return ids


@pytest.fixture(scope="module")
def frames():
    """Five distinct 96x64 frames (an odd count: qwen-vl-utils pads it to six)."""
    out = []
    for i in range(5):
        image = Image.new("RGB", (96, 64), (40 * i, 200 - 30 * i, 90))
        image.paste((255, 255, 255), (10 * i, 20, 10 * i + 16, 36))
        out.append(image)
    return out


@pytest.fixture(scope="module")
def frame_paths(frames, tmp_path_factory):
    folder = tmp_path_factory.mktemp("frames")
    paths = []
    for i, frame in enumerate(frames):
        paths.append(folder / f"f{i}.png")
        frame.save(paths[-1])
    return paths


class Official:
    """The official pipeline, re-enacted without any of our code: full LM head, one pair per forward."""

    def __init__(self, path):
        from transformers import AutoProcessor, Qwen3VLForConditionalGeneration

        self.processor = AutoProcessor.from_pretrained(path, padding_side="left")
        self.model = Qwen3VLForConditionalGeneration.from_pretrained(path, dtype=torch.float32).eval()
        vocab = self.processor.tokenizer.get_vocab()
        self.yes, self.no = vocab["yes"], vocab["no"]
        self.special = torch.tensor(self.processor.tokenizer.all_special_ids)

    @staticmethod
    def _side(obj) -> list[dict]:
        """REFERENCE.md §3 for a dict with keys videos/images/texts (raw values): videos, images, texts, or NULL."""
        content = []
        for video in obj.get("videos", []):
            if isinstance(video, list):  # frame list: total_pixels, as the reference
                frames = ["file://" + str(f) if isinstance(f, (str, Path)) else f for f in video]
                content.append({"type": "video", "video": frames, "total_pixels": TOTAL_PIXELS})
            else:  # file: fps/max_frames, plus total_pixels (our documented deviation, REFERENCE.md §11 #2)
                content.append({"type": "video", "video": "file://" + str(video), "fps": obj.get("fps", 1.0),
                                "max_frames": obj.get("max_frames", MAX_FRAMES), "total_pixels": TOTAL_PIXELS})
        for image in obj.get("images", []):
            value = "file://" + str(image) if isinstance(image, (str, Path)) else image
            content.append({"type": "image", "image": value, "min_pixels": MIN_PIXELS, "max_pixels": MAX_PIXELS})
        content += [{"type": "text", "text": text} for text in obj.get("texts", [])]
        return content or [{"type": "text", "text": "NULL"}]

    def inputs(self, query: dict, document: dict, instruction: str | None = None):
        from qwen_vl_utils import process_vision_info

        user = [{"type": "text", "text": "<Instruct>: " + (instruction or DEFAULT)},
                {"type": "text", "text": "<Query>:"}] + self._side(query)
        user += [{"type": "text", "text": "\n<Document>:"}] + self._side(document)
        conversation = [{"role": "system", "content": [{"type": "text", "text": SYSTEM}]},
                        {"role": "user", "content": user}]
        text = self.processor.apply_chat_template(conversation, tokenize=False, add_generation_prompt=True)
        images, videos, video_kwargs = process_vision_info(conversation, image_patch_size=16,
                                                           return_video_metadata=True, return_video_kwargs=True)
        kwargs = {}
        if images:
            kwargs["images"] = images
        if videos:
            kwargs.update(videos=[v for v, _ in videos], video_metadata=[m for _, m in videos],
                          cap_pixels_per_frame=False, **video_kwargs)
        return self.processor(text=[text], return_tensors="pt", do_resize=False, truncation=False, **kwargs)

    def truncate(self, inputs, max_length: int):
        """REFERENCE.md §5.4 step 3, written out independently; mm_token_type_ids cut with the same mask."""
        ids = inputs["input_ids"][0]
        body = ids[:-5]
        if len(body) <= max_length:
            return inputs
        special = torch.isin(body, self.special)
        budget = max_length - int(special.sum())
        kept_text, keep = 0, []
        for is_special in special.tolist():
            if is_special:
                keep.append(True)
            else:
                keep.append(kept_text < budget)
                kept_text += 1
        keep = torch.tensor(keep + [True] * 5)
        out = dict(inputs)
        for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
            out[key] = inputs[key][:, keep]
        return out

    def score(self, query: dict, document: dict, instruction: str | None = None,
              max_length: int | None = None) -> float:
        inputs = self.inputs(query, document, instruction)
        if max_length is not None:
            inputs = self.truncate(inputs, max_length)
        with torch.no_grad():
            logits = self.model(**inputs).logits[0, -1]
        return float(torch.sigmoid(logits[self.yes] - logits[self.no]))


@pytest.fixture(scope="module")
def official(tiny_reranker_path):
    return Official(tiny_reranker_path)


class Spy:
    """Records what the reranker feeds the processor (prompt text, media) and the model (token sequences)."""

    def __init__(self, reranker, monkeypatch):
        self.texts, self.images, self.videos, self.sequences = [], [], [], []
        lock = threading.Lock()
        original_encode = reranker_module.encode
        from qwen3vl_integrations.core import runner

        original_inputs = runner.model_inputs  # a newer Spy replaces an older one rather than wrapping it

        def encode(processor, text, images, videos, raw_pixels=False):
            with lock:
                self.texts.append(text)
                self.images.append(list(images))
                self.videos.append(list(videos))
            return original_encode(processor, text, images, videos, raw_pixels)

        def model_inputs(loaded, sequences):  # pairs that run whole (not after a shared query part)
            with lock:
                self.sequences.extend(sequences)
            return original_inputs(loaded, sequences)

        monkeypatch.setattr(reranker_module, "encode", encode)
        monkeypatch.setattr(reranker_module, "model_inputs", model_inputs)


def image_tokens(width: int, height: int) -> int:
    from qwen_vl_utils.vision_process import smart_resize

    h, w = smart_resize(height, width, 32, MIN_PIXELS, MAX_PIXELS)
    return (h // 32) * (w // 32)


def prompt(query: str, document: str, instruction: str = DEFAULT) -> str:
    return (f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n<Instruct>: {instruction}<Query>:{query}"
            f"\n<Document>:{document}<|im_end|>\n<|im_start|>assistant\n")


# ------------------------------------------------------------------------------------ prompts and token ids

def test_readme_example_prompt_and_token_ids(rr, tok, suffix_ids, media_dir, monkeypatch):
    spy = Spy(rr, monkeypatch)
    query = "A woman playing with her dog on a beach at sunset."
    rr.score(query, [{"image": str(media_dir / "red.png")}], instruction=README_INSTRUCTION)
    expected = (
        "<|im_start|>system\n"
        'Judge whether the Document meets the requirements based on the Query and the Instruct provided. Note that '
        'the answer can only be "yes" or "no".<|im_end|>\n'
        "<|im_start|>user\n"
        "<Instruct>: Retrieve images or text relevant to the user's query.<Query>:A woman playing with her dog on a "
        "beach at sunset.\n"
        "<Document>:<|vision_start|><|image_pad|><|vision_end|><|im_end|>\n"
        "<|im_start|>assistant\n"
    )
    assert spy.texts == [expected]
    assert len(spy.images[0]) == 1 and spy.videos[0] == []
    # the ids the model sees: the same string with the placeholder expanded to the image's visual tokens
    n = image_tokens(160, 120)
    assert n == 20
    expanded = expected.replace("<|image_pad|>", "<|image_pad|>" * n)
    (sequence,) = spy.sequences
    ids = sequence.input_ids.tolist()
    assert ids == tok(expanded, add_special_tokens=False)["input_ids"]
    assert tok.decode(ids, skip_special_tokens=False) == expanded
    assert ids[-5:] == suffix_ids
    assert ids[-1] != tok.convert_tokens_to_ids("<|endoftext|>")
    assert tok.convert_tokens_to_ids("<|endoftext|>") not in ids
    assert sequence.mm_token_type_ids.shape == sequence.input_ids.shape
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert torch.equal(sequence.mm_token_type_ids != 0, sequence.input_ids == image_pad)


def test_default_instruction_and_null_document(rr, tok, suffix_ids, monkeypatch):
    spy = Spy(rr, monkeypatch)
    rr.score("What is the capital of France?", [{}], instruction=None)
    expected = ("<|im_start|>system\n" + SYSTEM + "<|im_end|>\n<|im_start|>user\n<Instruct>: Given a search query, "
                "retrieve relevant candidates that answer the query.<Query>:What is the capital of France?\n"
                "<Document>:NULL<|im_end|>\n<|im_start|>assistant\n")
    assert spy.texts == [expected]
    ids = spy.sequences[0].input_ids.tolist()
    assert ids == tok(expected, add_special_tokens=False)["input_ids"]
    assert ids[-5:] == suffix_ids


def test_empty_text_is_not_null_and_texts_join_without_separator(rr, monkeypatch):
    spy = Spy(rr, monkeypatch)
    rr.score({"text": ""}, [{"text": ["alpha", "beta"]}])
    assert spy.texts == [prompt("", "alphabeta")]


def test_instruction_is_verbatim(rr, monkeypatch):
    spy = Spy(rr, monkeypatch)
    instruction = "  find the dog, no period  "
    rr.score("q", ["d"], instruction=instruction)
    assert spy.texts == [prompt("q", "d", instruction)]
    assert "<Instruct>:   find the dog, no period  <Query>:q" in spy.texts[0]


def test_query_item_instruction_wins_over_the_call(rr, monkeypatch):
    # CONTRACT: item["instruction"] > the call's instruction= > the default; a document's own key is not used
    spy = Spy(rr, monkeypatch)
    rr.score({"text": "q", "instruction": "From the query"}, [{"text": "d", "instruction": "From the document"}],
             instruction="From the call")
    rr.score({"text": "q"}, [{"text": "d", "instruction": "From the document"}], instruction="From the call")
    rr.score({"text": "q", "instruction": None}, ["d"])
    assert spy.texts == [prompt("q", "d", "From the query"), prompt("q", "d", "From the call"), prompt("q", "d")]


def test_query_media_order_videos_images_texts(rr, tok, media_dir, monkeypatch):
    spy = Spy(rr, monkeypatch)
    red, clip, blue = media_dir / "red.png", media_dir / "clip.mp4", media_dir / "blue.jpg"
    # dict key order is text, image, video: the prompt order must still be videos, images, texts
    rr.score({"text": "tq", "image": str(red), "video": str(clip)}, [{"text": "td", "image": str(blue)}])
    assert spy.texts == [prompt(VID + IMG + "tq", IMG + "td")]
    # media lists follow prompt order: the query's image before the document's
    images, videos = spy.images[0], spy.videos[0]
    assert len(images) == 2 and len(videos) == 1
    assert images[0].size[0] * images[0].size[1] == image_tokens(160, 120) * 32 * 32
    assert images[1].size[0] * images[1].size[1] == image_tokens(224, 224) * 32 * 32
    ids = spy.sequences[0].input_ids
    video_pad, image_pad = tok.convert_tokens_to_ids("<|video_pad|>"), tok.convert_tokens_to_ids("<|image_pad|>")
    first_video = int((ids == video_pad).nonzero()[0])
    image_positions = (ids == image_pad).nonzero().flatten()
    marker = tok("\n<Document>:", add_special_tokens=False)["input_ids"]
    as_list = ids.tolist()
    marker_at = next(i for i in range(len(as_list)) if as_list[i:i + len(marker)] == marker)
    assert first_video < int(image_positions[0]) < marker_at < int(image_positions[-1])
    assert int((ids[:marker_at] == image_pad).sum()) == image_tokens(160, 120)
    assert int((ids[marker_at:] == image_pad).sum()) == image_tokens(224, 224)
    types = spy.sequences[0].mm_token_type_ids
    assert torch.equal(types == 1, ids == image_pad) and torch.equal(types == 2, ids == video_pad)


@pytest.mark.parametrize("form", ["image", "video", "frames", "two_videos", "two_frame_lists"])
def test_query_and_document_media_placeholders(rr, media_dir, frames, monkeypatch, form):
    spy = Spy(rr, monkeypatch)
    red, clip = str(media_dir / "red.png"), str(media_dir / "clip.mp4")
    value, rendered = {
        "image": ({"image": red}, IMG),
        "video": ({"video": clip}, VID),
        "frames": ({"video": frames[:2]}, VID),
        "two_videos": ({"video": [clip, clip]}, VID + VID),
        "two_frame_lists": ({"video": [frames[:2], frames[2:4]]}, VID + VID),
    }[form]
    rr.score(value, [value])
    assert spy.texts == [prompt(rendered, rendered)]
    n_videos = rendered.count(VID)
    assert len(spy.videos[0]) == 2 * n_videos and len(spy.images[0]) == 2 * rendered.count(IMG)


# ------------------------------------------------------------------------------------------- score formula

def test_score_head_is_float32_yes_minus_no(rr, official):
    loaded = rr.load()
    weight = official.model.lm_head.weight.detach().float()
    expected = weight[official.yes] - weight[official.no]
    assert loaded.score_weight.dtype == torch.float32
    assert loaded.score_weight.shape == expected.shape
    assert torch.allclose(loaded.score_weight.cpu(), expected, atol=0, rtol=0)
    vocab = loaded.tokenizer.get_vocab()
    assert (official.yes, official.no) == (vocab["yes"], vocab["no"])


def test_scores_equal_full_lm_head_reenactment(rr, official, media_dir, frames, frame_paths):
    red, blue, clip = media_dir / "red.png", media_dir / "blue.jpg", media_dir / "clip.mp4"
    # (our document, the same document for the re-enactment)
    cases = [
        ("a text document about a beach", {"texts": ["a text document about a beach"]}),
        ({"image": str(red)}, {"images": [red]}),
        ({"image": [str(red), str(blue)], "text": "two images"}, {"images": [red, blue], "texts": ["two images"]}),
        ({"video": str(clip)}, {"videos": [clip]}),
        ({"video": frames}, {"videos": [frames]}),
        ({"video": [str(p) for p in frame_paths[:4]], "text": "frames"}, {"videos": [frame_paths[:4]],
                                                                           "texts": ["frames"]}),
        ({}, {}),
    ]
    queries = [  # (query, its re-enactment, instruction, which cases); video queries: test_query_video_forms_agree
        ("a dog on a beach", {"texts": ["a dog on a beach"]}, None, cases),
        ({"image": str(red), "text": "like this"}, {"images": [red], "texts": ["like this"]}, README_INSTRUCTION,
         [cases[0], cases[1], cases[3]]),
    ]
    for query, official_query, instruction, pairs in queries:
        ours = rr.score(query, [doc for doc, _ in pairs], instruction=instruction)
        assert ours.dtype == np.float32 and ours.shape == (len(pairs),)
        assert np.all((ours > 0) & (ours < 1))
        expected = [official.score(official_query, doc, instruction) for _, doc in pairs]
        np.testing.assert_allclose(ours, expected, atol=ATOL, rtol=0)
        assert np.ptp(expected) > 1e-4  # the pairs really differ, so the comparison can fail


# --------------------------------------------------------------------------------- batching and ordering

@pytest.fixture(scope="module")
def mixed_documents(media_dir, frames):
    red, blue, wide, clip = (str(media_dir / n) for n in ("red.png", "blue.jpg", "wide.png", "clip.mp4"))
    return [
        "short",
        "a considerably longer text document " * 6,
        {"image": red},
        {"image": blue, "text": "a blue picture with a yellow triangle"},
        {"video": clip},
        "medium length text about dogs and beaches",
        {"video": frames[:3], "text": "frames"},
        {"image": [wide, red]},
        {},
        "x",
        {"image": str(media_dir / "rgba.png")},
        {"image": str(media_dir / "gray.png"), "text": "gray"},
    ]


def test_batch_invariance_and_caller_order(tiny_reranker_path, rr, mixed_documents, media_dir):
    query = {"image": str(media_dir / "red.png"), "text": "which one?"}
    batched = rr.score(query, mixed_documents)
    single = np.array([rr.score(query, [doc])[0] for doc in mixed_documents])
    assert np.max(np.abs(batched - single)) <= ATOL
    assert np.ptp(single) > 1e-4
    # max_batch_tokens=64 puts every pair in a batch of its own; batch_size=3 gives mixed-length batches
    tight = Qwen3VLReranker(str(tiny_reranker_path), **{**K, "max_batch_tokens": 64})
    np.testing.assert_allclose(tight.score(query, mixed_documents), single, atol=ATOL, rtol=0)
    np.testing.assert_allclose(rr.score(query, mixed_documents, batch_size=3), single, atol=ATOL, rtol=0)
    reversed_scores = rr.score(query, mixed_documents[::-1])
    np.testing.assert_allclose(reversed_scores[::-1], single, atol=ATOL, rtol=0)


def test_rank_best_first_and_top_n(rr, media_dir):
    documents = ["dogs on a beach", "a cat", {"image": str(media_dir / "red.png")}, "the sea", "sand and sun",
                 {"image": str(media_dir / "gray.png"), "text": "gray"}, "x"]
    scores = rr.score("dogs", documents)
    expected = [int(i) for i in np.argsort(-scores, kind="stable")]
    assert np.min(np.abs(np.diff(np.sort(scores)))) > 1e-6  # no near-ties: the order is well defined
    ranked = rr.rank("dogs", documents)
    assert [i for i, _ in ranked] == expected != list(range(len(documents)))
    np.testing.assert_allclose([s for _, s in ranked], scores[expected], atol=ATOL)
    assert all(type(i) is int and type(s) is float for i, s in ranked)
    assert [i for i, _ in rr.rank("dogs", documents, top_n=3)] == expected[:3]
    assert rr.rank("dogs", documents, top_n=0) == []
    assert [i for i, _ in rr.rank("dogs", documents, top_n=100)] == expected
    assert [i for i, _ in rr.rank("dogs", documents, top_n=None)] == expected


def test_rank_ties_keep_input_order(rr, monkeypatch):
    fixed = np.array([0.5, 0.9, 0.5, 0.1, 0.9], np.float32)
    monkeypatch.setattr(rr, "score", lambda *a, **k: fixed)
    assert rr.rank("q", list("abcde")) == [(1, pytest.approx(0.9)), (4, pytest.approx(0.9)),
                                           (0, pytest.approx(0.5)), (2, pytest.approx(0.5)),
                                           (3, pytest.approx(0.1))]
    assert [i for i, _ in rr.rank("q", list("abcde"), top_n=3)] == [1, 4, 0]


def test_score_pairs_with_different_queries(rr, media_dir):
    q1 = {"image": str(media_dir / "red.png")}
    q2 = "a text query"
    d1, d2, d3 = "doc one", {"image": str(media_dir / "blue.jpg")}, {"video": str(media_dir / "clip.mp4")}
    pairs = [(q1, d1), (q2, d1), (q1, d2), (q2, d3), (q1, d3), (q2, d2)]
    got = rr.score_pairs(pairs)
    s1, s2 = rr.score(q1, [d1, d2, d3]), rr.score(q2, [d1, d2, d3])
    expected = [s1[0], s2[0], s1[1], s2[2], s1[2], s2[1]]
    np.testing.assert_allclose(got, expected, atol=ATOL, rtol=0)
    assert np.max(np.abs(s1 - s2)) > 1e-5  # the two queries really give different scores


# ------------------------------------------------------------------------------------------- input forms

def _image_forms(path: Path) -> dict:
    data = path.read_bytes()
    pil = Image.open(path)
    pil.load()
    return {
        "str": str(path),
        "Path": path,
        "file_uri": "file://" + str(path),
        "data_uri": "data:image/png;base64," + base64.b64encode(data).decode(),
        "bytes": data,
        "BytesIO": io.BytesIO(data),
        "PIL": pil,
        "numpy": np.asarray(pil.convert("RGB")),
    }


def test_document_image_forms_agree(rr, official, media_dir):
    red = media_dir / "red.png"
    forms = _image_forms(red)
    documents = [{"image": value} for value in forms.values()]
    documents += [{"image": [str(red)]}, forms["PIL"]]  # a one-element list, and a bare PIL image
    scores = rr.score("query", documents)
    expected = official.score({"texts": ["query"]}, {"images": [red]})
    np.testing.assert_allclose(scores, expected, atol=ATOL, rtol=0, err_msg=str(list(forms) + ["list", "bare"]))


def test_document_video_forms_agree(rr, official, media_dir, frames, frame_paths):
    clip = media_dir / "clip.mp4"
    file_forms = [str(clip), clip, "file://" + str(clip), clip.read_bytes()]
    scores = rr.score("query", [{"video": value} for value in file_forms])
    np.testing.assert_allclose(scores, official.score({"texts": ["query"]}, {"videos": [clip]}), atol=ATOL, rtol=0)
    frame_forms = [frames, [str(p) for p in frame_paths], frame_paths,
                   [np.asarray(f) for f in frames], np.stack([np.asarray(f) for f in frames])]
    scores = rr.score("query", [{"video": value} for value in frame_forms])
    np.testing.assert_allclose(scores, official.score({"texts": ["query"]}, {"videos": [frames]}), atol=ATOL,
                               rtol=0)


def test_mixed_and_list_documents(rr, official, media_dir, frames):
    red, blue, clip = media_dir / "red.png", media_dir / "blue.jpg", media_dir / "clip.mp4"
    documents = [
        {"text": ["first ", "second"], "image": [str(red), blue], "video": str(clip)},
        {"video": [frames[:2], frames[2:4]], "text": "two frame lists"},
        {"text": "first second"},
    ]
    scores = rr.score("q", documents)
    expected = [
        official.score({"texts": ["q"]}, {"videos": [clip], "images": [red, blue], "texts": ["first ", "second"]}),
        official.score({"texts": ["q"]}, {"videos": [frames[:2], frames[2:4]], "texts": ["two frame lists"]}),
        official.score({"texts": ["q"]}, {"texts": ["first second"]}),
    ]
    np.testing.assert_allclose(scores, expected, atol=ATOL, rtol=0)
    # texts in a list concatenate with no separator (REFERENCE.md §3.9)
    np.testing.assert_allclose(rr.score("q", [{"text": ["first ", "second"]}]), expected[2], atol=ATOL)


def test_query_image_forms_agree(rr, official, media_dir):
    red = media_dir / "red.png"
    documents = ["a red square", {"image": str(media_dir / "blue.jpg")}]
    expected = [official.score({"images": [red]}, {"texts": ["a red square"]}),
                official.score({"images": [red]}, {"images": [media_dir / "blue.jpg"]})]
    forms = _image_forms(red)
    for name, value in list(forms.items()) + [("bare PIL", forms["PIL"])]:
        query = value if name == "bare PIL" else {"image": value}
        np.testing.assert_allclose(rr.score(query, documents), expected, atol=ATOL, rtol=0, err_msg=name)


def test_query_video_forms_agree(rr, official, media_dir, frames):
    clip = media_dir / "clip.mp4"
    documents = ["a moving square", {"image": str(media_dir / "red.png")}]
    expected = [official.score({"videos": [clip]}, {"texts": [d]}) if isinstance(d, str)
                else official.score({"videos": [clip]}, {"images": [media_dir / "red.png"]}) for d in documents]
    for value in (str(clip), clip, clip.read_bytes()):
        np.testing.assert_allclose(rr.score({"video": value}, documents), expected, atol=ATOL, rtol=0)
    expected_frames = official.score({"videos": [frames], "texts": ["and text"]}, {"texts": ["a moving square"]})
    np.testing.assert_allclose(rr.score({"video": frames, "text": "and text"}, ["a moving square"]),
                               [expected_frames], atol=ATOL, rtol=0)


# ------------------------------------------------------------------------------------------------ truncation

def test_truncation_keeps_special_tokens_and_suffix(tiny_reranker_path, rr, official, tok, suffix_ids, media_dir,
                                                    monkeypatch):
    short = Qwen3VLReranker(str(tiny_reranker_path), **{**K, "max_length": 48})
    red = media_dir / "red.png"
    query = {"image": str(red), "text": "what is shown"}
    long_doc = "the quick brown fox jumps over the lazy dog " * 20
    full_spy = Spy(rr, monkeypatch)
    rr.score(query, [long_doc])
    cut_spy = Spy(short, monkeypatch)
    score = short.score(query, [long_doc])
    (full,), (cut,) = full_spy.sequences, cut_spy.sequences
    assert len(full) > 48 + 5
    assert len(cut) <= 48 + 5
    assert cut.input_ids[-5:].tolist() == suffix_ids
    assert cut.mm_token_type_ids.shape == cut.input_ids.shape
    image_pad = tok.convert_tokens_to_ids("<|image_pad|>")
    assert torch.equal(cut.mm_token_type_ids == 1, cut.input_ids == image_pad)
    special = torch.tensor(tok.all_special_ids)
    full_body, cut_body = full.input_ids[:-5], cut.input_ids[:-5]
    # every special/vision token survives, in order; the kept text tokens are the first ones, in order
    assert cut_body[torch.isin(cut_body, special)].tolist() == full_body[torch.isin(full_body, special)].tolist()
    kept_text = cut_body[~torch.isin(cut_body, special)].tolist()
    assert kept_text == full_body[~torch.isin(full_body, special)].tolist()[: len(kept_text)]
    assert len(cut_body) == 48
    expected = official.score({"images": [red], "texts": ["what is shown"]}, {"texts": [long_doc]}, max_length=48)
    np.testing.assert_allclose(score, [expected], atol=ATOL, rtol=0)
    assert abs(expected - official.score({"images": [red], "texts": ["what is shown"]}, {"texts": [long_doc]})) > 1e-6


def test_long_query_pushes_out_the_document(tiny_reranker_path, official, media_dir, monkeypatch):
    short = Qwen3VLReranker(str(tiny_reranker_path), **{**K, "max_length": 48})
    spy = Spy(short, monkeypatch)
    query = "many words in a long query " * 20
    score = short.score(query, [{"image": str(media_dir / "red.png"), "text": "tail"}])
    (cut,) = spy.sequences
    decoded = short.load().tokenizer.decode(cut.input_ids, skip_special_tokens=False)
    assert "tail" not in decoded and "<Document>" not in decoded
    assert decoded.count("<|image_pad|>") == image_tokens(160, 120)  # the document's image stays
    expected = official.score({"texts": [query]}, {"images": [media_dir / "red.png"], "texts": ["tail"]},
                              max_length=48)
    np.testing.assert_allclose(score, [expected], atol=ATOL, rtol=0)


def test_vision_tokens_over_max_length_name_the_document(tiny_reranker_path, media_dir):
    short = Qwen3VLReranker(str(tiny_reranker_path), **{**K, "max_length": 48})
    big = str(media_dir / "blue.jpg")  # 49 visual tokens
    assert image_tokens(224, 224) > 48
    with pytest.raises(Qwen3VLInputError) as info:
        short.score("q", ["fine", "also fine", {"image": big}, "fine again"])
    assert info.value.role == "document" and info.value.index == 2
    assert "max_length" in info.value.cause and str(info.value).startswith("document 2: ")


def test_vision_tokens_over_max_length_in_the_query_name_the_query(tiny_reranker_path, media_dir):
    short = Qwen3VLReranker(str(tiny_reranker_path), **{**K, "max_length": 48})
    with pytest.raises(Qwen3VLInputError) as info:
        short.score({"image": str(media_dir / "blue.jpg")}, ["fine", "also fine"])
    assert info.value.role == "query" and info.value.index is None
    assert "max_length" in info.value.cause


# ------------------------------------------------------------------------------------------------- errors

def _bad_inputs(media_dir: Path) -> dict:
    return {
        "missing image": ({"image": str(media_dir / "nope.png")}, "not found"),
        "missing video": ({"video": str(media_dir / "nope.mp4")}, "not found"),
        "broken image": ({"image": str(media_dir / "broken.png")}, "unreadable image"),
        "text file as image": ({"image": media_dir / "doc.txt"}, "unreadable image"),
        "text file as video": ({"video": str(media_dir / "doc.txt")}, "unreadable video"),
        "unsupported type": (42, "unsupported input type"),
        "None": (None, "unsupported input type"),
        "unsupported image type": ({"image": 3.5}, "unsupported image type"),
        "empty frame list": ({"video": [[]]}, "empty frame list"),
        "empty frame array": ({"video": np.zeros((0, 8, 8, 3), np.uint8)}, "empty"),
        "broken frame": ({"video": [str(media_dir / "red.png"), str(media_dir / "broken.png")]}, "frame 1"),
        "non-string text": ({"text": 5}, "not str"),
        "non-string text in list": ({"text": ["ok", None]}, "not str"),
        "bad url scheme": ({"image": "ftp://example.com/a.png"}, "unsupported URL scheme"),
    }


BAD_NAMES = list(_bad_inputs(Path("/x")))


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_document_is_named_before_model_work(fresh, media_dir, name):
    bad, cause = _bad_inputs(media_dir)[name]
    with pytest.raises(Qwen3VLInputError) as info:
        fresh.score("q", ["fine", {"text": "also fine"}, bad, "fine again"])
    error = info.value
    assert (error.role, error.index) == ("document", 2)
    assert cause in error.cause and str(error) == f"document 2: {error.cause}"
    assert isinstance(error, ValueError)
    assert not fresh.is_loaded


@pytest.mark.parametrize("name", BAD_NAMES)
def test_bad_query_is_named_before_model_work(fresh, media_dir, name):
    bad, cause = _bad_inputs(media_dir)[name]
    with pytest.raises(Qwen3VLInputError) as info:
        fresh.score(bad, ["fine", "also fine"])
    error = info.value
    assert (error.role, error.index) == ("query", None)
    assert cause in error.cause and str(error) == f"query: {error.cause}"
    assert not fresh.is_loaded


def test_errors_through_rank_process_and_score_pairs(fresh, media_dir):
    missing = {"image": str(media_dir / "nope.png")}
    with pytest.raises(Qwen3VLInputError, match=r"^document 1: "):
        fresh.rank("q", ["a", missing])
    with pytest.raises(Qwen3VLInputError, match=r"^document 0: "):
        fresh.process({"query": {"text": "q"}, "documents": [missing, {"text": "a"}]})
    with pytest.raises(Qwen3VLInputError) as info:
        fresh.score("q", ["a", missing, "b", {"image": str(media_dir / "broken.png")}])
    assert info.value.index == 1 and "(and 1 more bad input: document 3;" in str(info.value)
    assert [(each.role, each.index) for each in info.value.errors] == [("document", 1), ("document", 3)]
    with pytest.raises(Qwen3VLInputError) as info:
        fresh.score_pairs([("q", "a"), ("q2", missing)])
    assert (info.value.role, info.value.index) == ("document", 1)
    # score_pairs names a bad query by the position of the first pair that uses it
    query = "shared query"
    with pytest.raises(Qwen3VLInputError) as info:
        fresh.score_pairs([(query, "a"), (query, "b"), (missing, "c"), (missing, "d")])
    assert (info.value.role, info.value.index) == ("query", 2)
    assert str(info.value).startswith("query 2: ")
    assert not fresh.is_loaded


def test_bad_queries_and_bad_documents_are_reported_together(fresh, media_dir):
    """A bad query was raised alone: the call's bad documents went unreported, and so did every bad query but the
    first. One error now holds them all, the queries first (each named by the first pair that uses it), then the
    documents; a document whose query is bad is judged alone."""
    missing = {"image": str(media_dir / "nope.png")}
    broken = {"image": str(media_dir / "broken.png")}
    with pytest.raises(Qwen3VLInputError) as info:
        fresh.score(missing, ["a", broken, "b", {"text": 5}])
    error = info.value
    assert (error.role, error.index) == ("query", None) and "not found" in error.cause
    assert [(each.role, each.index) for each in error.errors] == [("query", None), ("document", 1), ("document", 3)]
    assert str(error).startswith("query: image 0: file not found") and "(and 2 more bad inputs: documents 1, 3;" \
        in str(error)
    assert "unreadable image" in error.errors[1].cause and "not str" in error.errors[2].cause
    with pytest.raises(Qwen3VLInputError) as info:
        fresh.score_pairs([("good", "a"), (missing, "b"), (missing, broken), ("\ud83d", "c"), ("good", None),
                           ("\ud83d", "d")])
    assert [(each.role, each.index) for each in info.value.errors] == [
        ("query", 1), ("query", 3), ("document", 2), ("document", 4)]
    assert "(and 3 more bad inputs: query 3, document 2, document 4;" in str(info.value)
    assert "not valid Unicode" in info.value.errors[1].cause
    # a query too long for max_length, with a bad document of a good query
    short = Qwen3VLReranker(str(fresh.model_name_or_path), **{**K, "max_length": 48})
    big = {"image": str(media_dir / "blue.jpg")}  # 49 visual tokens
    with pytest.raises(Qwen3VLInputError) as info:
        short.score_pairs([("q", "a"), (big, "b"), ("q", missing)])
    assert [(each.role, each.index) for each in info.value.errors] == [("query", 1), ("document", 2)]
    assert "max_length" in info.value.cause
    assert not fresh.is_loaded and not short.is_loaded


def test_empty_inputs(fresh):
    scores = fresh.score("q", [])
    assert isinstance(scores, np.ndarray) and scores.dtype == np.float32 and scores.shape == (0,)
    assert fresh.rank("q", []) == []
    assert fresh.score_pairs([]).shape == (0,)
    assert fresh.process({"query": {"text": "q"}, "documents": []}) == []
    assert fresh.process({"query": {"text": "q"}}) == []
    for falsy in (None, "", {}):
        assert fresh.process({"query": falsy, "documents": [{"text": "d"}]}) == []
    assert not fresh.is_loaded
    with pytest.raises(TypeError):
        fresh.score("q", "a single string is not a list of documents")


# -------------------------------------------------------------------------------------------- process API

def test_process_matches_score_and_defaults(rr, official, media_dir):
    red = str(media_dir / "red.png")
    documents = [{"text": "a red square"}, {"image": red}, {"image": red, "text": "with text"}]
    default = rr.score("what is red?", documents)
    for instruction_keys in ({}, {"instruction": None}, {"instruction": DEFAULT}):
        got = rr.process({"query": {"text": "what is red?"}, "documents": documents, **instruction_keys})
        assert isinstance(got, list) and all(type(s) is float for s in got)
        np.testing.assert_allclose(got, default, atol=ATOL, rtol=0)
    custom = rr.process({"instruction": README_INSTRUCTION, "query": {"text": "what is red?"},
                         "documents": documents})
    np.testing.assert_allclose(custom, rr.score("what is red?", documents, instruction=README_INSTRUCTION),
                               atol=ATOL, rtol=0)
    np.testing.assert_allclose(custom[1], official.score({"texts": ["what is red?"]}, {"images": [red]},
                                                         README_INSTRUCTION), atol=ATOL)
    assert np.max(np.abs(np.array(custom) - default)) > 1e-6


def test_process_reads_what_the_official_code_reads(rr):
    """Only the top-level instruction counts: a query written for the embedder carries an instruction of its own,
    which the official reranker ignores (ours used it: other scores). Unknown keys are ignored, as upstream."""
    documents = [{"text": "a red square", "id": 7}, {"text": "a blue sky", "instruction": "Ignored."}]
    plain = ["a red square", "a blue sky"]
    query = {"text": "what is red?", "instruction": "Retrieve images or text relevant to the user's query.", "id": 1}
    for top_level, expected in ((README_INSTRUCTION, README_INSTRUCTION), (None, None)):
        got = rr.process({"query": query, "documents": documents, "instruction": top_level})
        np.testing.assert_allclose(got, rr.score("what is red?", plain, instruction=expected), atol=ATOL, rtol=0)
    own = rr.score({"text": query["text"], "instruction": query["instruction"]}, plain)
    assert np.max(np.abs(own - rr.score("what is red?", plain))) > 1e-6  # score() itself honours the query's own


def test_score_pairs_refuses_what_is_not_a_list_of_pairs(fresh):
    """A bare pair is iterable: score_pairs(("q1", "d1")) scored the pairs ("q", "1") and ("d", "1")."""
    for pairs, refusal in [(("q1", "d1"), "pair 0 must be a .query, document. tuple, got 'q1'"),
                           (["ab", "cd"], "pair 0 must be"), ([("q", "a"), ("q", "b", "c")], "pair 1 must be"),
                           ("qd", "takes a list of .query, document. pairs")]:
        with pytest.raises(TypeError, match=refusal):
            fresh.score_pairs(pairs)
    assert not fresh.is_loaded


def test_process_fps_and_max_frames_apply_to_every_video(rr, official, media_dir, monkeypatch):
    clip = str(media_dir / "clip.mp4")  # 2 s at 8 fps: fps 1 -> 4 frames (the minimum), fps 4 -> 8, capped to 6
    spy = Spy(rr, monkeypatch)
    got = rr.process({"query": {"video": clip}, "documents": [{"video": clip}, {"text": "t"}], "fps": 4.0,
                      "max_frames": 6})
    # The query's video is processed once (its pairs share the query part of the prompt), the document's once.
    assert sorted(len(v.frames) for call in spy.videos for v in call) == [6, 6]
    expected = official.score({"videos": [clip], "fps": 4.0, "max_frames": 6},
                              {"videos": [clip], "fps": 4.0, "max_frames": 6})
    np.testing.assert_allclose(got[0], expected, atol=ATOL)
    spy.videos.clear()
    default = rr.process({"query": {"video": clip}, "documents": [{"video": clip}]})
    assert [len(v.frames) for call in spy.videos for v in call] == [4, 4]
    assert abs(default[0] - got[0]) > 1e-6


# ------------------------------------------------------------------------------ query media decoded once

def test_query_image_decoded_once_per_call(rr, media_dir, monkeypatch):
    opened: list[str] = []
    lock = threading.Lock()
    original = media_module.ImageSource.open

    def counting_open(self, policy):
        with lock:
            opened.append(str(self.path))
        return original(self, policy)

    monkeypatch.setattr(media_module.ImageSource, "open", counting_open)
    red, blue = str(media_dir / "red.png"), str(media_dir / "blue.jpg")
    documents = ["one", "two", {"image": blue}, "four", {"image": blue, "text": "five"}]
    rr.score({"image": red, "text": "q"}, documents, batch_size=2)
    assert opened.count(red) == 1
    assert opened.count(blue) == 2
    opened.clear()
    rr.score_pairs([({"image": red}, d) for d in documents[:2]] + [("text query", d) for d in documents[2:]])
    assert opened.count(red) == 2  # two distinct query objects -> decoded once each


def test_query_video_decoded_once_per_call(rr, media_dir, monkeypatch):
    calls: list[str] = []
    original = vision_module.read_video_file

    def counting(source, *args, **kwargs):
        calls.append(str(source.path))
        return original(source, *args, **kwargs)

    monkeypatch.setattr(vision_module, "read_video_file", counting)
    clip = str(media_dir / "clip.mp4")
    rr.score({"video": clip}, ["a", "b", "c", {"text": "d"}, "e"], batch_size=2)
    assert calls == [clip]


def test_bad_call_instruction_is_refused_before_any_model_work(fresh):
    with pytest.raises(ValueError, match="instruction is not valid Unicode") as info:
        fresh.score("q", ["a"], instruction="Judge\udc00")
    assert not isinstance(info.value, Qwen3VLInputError)
    with pytest.raises(ValueError, match="instruction contains the reserved vision placeholder"):
        fresh.score_pairs([("q", "a")], instruction="<|video_pad|>")
    assert not fresh.is_loaded


def test_lone_surrogate_in_a_document_names_it(rr):
    """Text the tokenizer cannot take (a broken JSON escape) is one bad document, not a crash of the call."""
    with pytest.raises(Qwen3VLInputError, match=r"^document 1: text is not valid Unicode"):
        rr.score("q", ["a", "caf\udce9", "b"])

