"""The core embedder on the tiny checkpoint, against an independent re-enactment of the official procedure.

`Official` below re-does REFERENCE.md §3-§4 and §6 step by step with the upstream building blocks (the
checkpoint's processor, qwen-vl-utils' `process_vision_info`, `AutoModel`), with hand-written prompts; the only
deliberate difference from the reference is §11 #2 (`total_pixels` is applied to video files too).
"""
from __future__ import annotations

import contextlib
import functools
import http.server
import pickle
import threading
import unicodedata
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from qwen3vl_integrations import Qwen3VLEmbedder, Qwen3VLInputError
from qwen3vl_integrations.core import runner as runner_module

TINY = dict(device="cpu", min_pixels=4 * 32 * 32, max_pixels=64 * 32 * 32, total_pixels=256 * 32 * 32, max_frames=8)
REFERENCE_BOUNDS = dict(min_pixels=4096, max_pixels=1_843_200, total_pixels=7_864_320, fps=1.0, max_frames=64)
DEFAULT_INSTRUCTION = "Represent the user's input."
QUERY_INSTRUCTION = "Retrieve images or text relevant to the user's query."
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tiff", ".svg")


# ============================================================================== the official procedure


def official_instruction(instruction: str | None) -> str:
    text = (instruction or "").strip()
    if text and not unicodedata.category(text[-1]).startswith("P"):
        text += "."
    return text or DEFAULT_INSTRUCTION


def _is_video_input(video: Any) -> bool:
    if isinstance(video, str):
        return True
    if isinstance(video, list) and video:
        first = video[0]
        return isinstance(first, Image.Image) or (
            isinstance(first, str) and first.lower().split("?")[0].endswith(IMAGE_EXTENSIONS))
    return False


class Official:
    """REFERENCE.md §3-§4 re-enacted: conversation, process_vision_info, processor, AutoModel, last token."""

    def __init__(self, path: Path) -> None:
        from transformers import AutoModel, AutoProcessor

        self.processor = AutoProcessor.from_pretrained(str(path))
        self.model = AutoModel.from_pretrained(str(path), dtype=torch.float32).eval()
        tok = self.processor.tokenizer
        self.ids = {name: tok.convert_tokens_to_ids(name) for name in
                    ("<|endoftext|>", "<|im_start|>", "<|im_end|>", "<|image_pad|>", "<|video_pad|>",
                     "<|vision_start|>", "<|vision_end|>")}
        self.ids["assistant"] = tok.convert_tokens_to_ids("assistant")
        self.ids["\n"] = tok.encode("\n", add_special_tokens=False)[0]
        self.suffix = [self.ids["<|im_end|>"], self.ids["\n"], self.ids["<|im_start|>"], self.ids["assistant"],
                       self.ids["\n"], self.ids["<|endoftext|>"]]
        self.special_ids = set(tok.all_special_ids)

    def content(self, obj: dict, bounds: dict) -> list[dict]:
        text, image, video = obj.get("text"), obj.get("image"), obj.get("video")
        texts = [] if text is None else ([text] if isinstance(text, str) else list(text))
        images = [] if image is None else (list(image) if isinstance(image, list) else [image])
        videos = [] if video is None else ([video] if _is_video_input(video) else list(video))
        content = []
        for v in videos:
            if isinstance(v, list):
                if len(v) > bounds["max_frames"]:
                    v = [v[i] for i in np.linspace(0, len(v) - 1, bounds["max_frames"], dtype=int)]
                v = ["file://" + f if isinstance(f, str) else f for f in v]
                content.append({"type": "video", "video": v, "total_pixels": bounds["total_pixels"]})
            else:
                content.append({"type": "video", "video": v if v.startswith(("http://", "https://")) else "file://" + v,
                                "fps": obj.get("fps") or bounds["fps"],
                                "max_frames": obj.get("max_frames") or bounds["max_frames"],
                                "total_pixels": bounds["total_pixels"]})  # §11 #2: our deliberate fix
        for im in images:
            if isinstance(im, str) and not im.startswith(("http://", "https://")):
                im = "file://" + im
            content.append({"type": "image", "image": im, "min_pixels": bounds["min_pixels"],
                            "max_pixels": bounds["max_pixels"]})
        content += [{"type": "text", "text": t} for t in texts]
        return content or [{"type": "text", "text": "NULL"}]

    @staticmethod
    def prompt(system: str, content: list[dict]) -> str:
        user = ""
        for entry in content:
            if entry["type"] == "video":
                user += "<|vision_start|><|video_pad|><|vision_end|>"
            elif entry["type"] == "image":
                user += "<|vision_start|><|image_pad|><|vision_end|>"
            else:
                user += entry["text"]
        return (f"<|im_start|>system\n{system}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
                f"<|im_start|>assistant\n")

    def inputs(self, obj: dict, instruction: str | None = None, bounds: dict | None = None,
               truncation: bool = False) -> dict:
        from qwen_vl_utils import process_vision_info

        bounds = {**REFERENCE_BOUNDS, **(bounds or {})}
        instruction = obj.get("instruction") or instruction
        content = self.content(obj, bounds)
        conversation = [{"role": "system", "content": [{"type": "text", "text": official_instruction(instruction)}]},
                        {"role": "user", "content": content}]
        text = self.prompt(official_instruction(instruction), content)
        images, videos, video_kwargs = process_vision_info(
            conversation, image_patch_size=16, return_video_metadata=True, return_video_kwargs=True)
        kwargs: dict[str, Any] = dict(text=[text], images=images, padding=True, do_resize=False,
                                      return_tensors="pt", **video_kwargs)
        if truncation:
            kwargs.update(truncation=True, max_length=8192)
        if videos:
            frames, metadata = zip(*videos)
            kwargs.update(videos=list(frames), video_metadata=list(metadata),
                          cap_pixels_per_frame=False)  # no effect with do_resize=False; silences a v5 warning
        out = dict(self.processor(**kwargs))
        assert int(out["input_ids"][0, -1]) == self.ids["<|endoftext|>"]  # appended by the tokenizer
        return out

    @torch.no_grad()
    def hidden(self, inputs: dict) -> np.ndarray:
        return self.model(**inputs).last_hidden_state[0, -1].float().numpy()

    def embed(self, obj: dict, instruction: str | None = None, bounds: dict | None = None,
              normalize: bool = True) -> np.ndarray:
        h = self.hidden(self.inputs(obj, instruction, bounds))
        return h / np.linalg.norm(h) if normalize else h


def cut_text_tokens(inputs: dict, max_length: int, special_ids: set[int]) -> dict:
    """REFERENCE.md §11 #5 (the reranker's rule applied to the embedder): keep the 6-token suffix, every special or
    vision token of the body, and the first non-special body tokens in order; cut every per-token tensor alike."""
    ids = inputs["input_ids"][0].tolist()
    body = len(ids) - 6
    special = [i in special_ids for i in ids[:body]]
    budget = max_length - 6 - sum(special)
    keep, used = [], 0
    for is_special in special:
        keep.append(is_special or used < budget)
        used += 0 if is_special else 1
    keep += [True] * 6
    mask = torch.tensor(keep)
    out = dict(inputs)
    for key in ("input_ids", "attention_mask", "mm_token_type_ids"):
        out[key] = inputs[key][:, mask]
    return out


# ============================================================================== fixtures and helpers


@pytest.fixture(scope="module")
def official(tiny_embedding_path) -> Official:
    return Official(tiny_embedding_path)


@pytest.fixture(scope="module")
def emb(tiny_embedding_path) -> Qwen3VLEmbedder:
    """The same settings as conftest's tiny_embedder (so the same shared model)."""
    return Qwen3VLEmbedder(str(tiny_embedding_path), **TINY)


def fresh(path, **kwargs) -> Qwen3VLEmbedder:
    return Qwen3VLEmbedder(str(path), **{**TINY, **kwargs})


@contextlib.contextmanager
def capture_forward(embedder: Qwen3VLEmbedder):
    """Record the tensors each forward pass receives and the hidden states it returns."""
    loaded = embedder.load()
    backbone = loaded.backbone
    calls: list[dict] = []
    lasts: list[torch.Tensor] = []
    run_batch = embedder._forward_last_hidden

    def forward_last_hidden(loaded, inputs, batch_size):
        lasts.append(inputs.last.clone())  # the model gets no padding mask: each row's length comes from here
        return run_batch(loaded, inputs, batch_size)

    def before(module, args, kwargs):
        calls.append({"inputs": {k: v.detach().clone() for k, v in kwargs.items() if torch.is_tensor(v)},
                      "lengths": lasts.pop() + 1, "pad": loaded.pad_token_id})

    def after(module, args, kwargs, output):
        calls[-1]["hidden"] = output.last_hidden_state.detach().float().clone()

    handles = [backbone.register_forward_pre_hook(before, with_kwargs=True),
               backbone.register_forward_hook(after, with_kwargs=True)]
    embedder._forward_last_hidden = forward_last_hidden
    try:
        yield calls
    finally:
        del embedder._forward_last_hidden
        for handle in handles:
            handle.remove()


def rows(calls: list[dict]) -> list[list[int]]:
    """The real token ids of every row of every recorded forward; checks right padding."""
    out = []
    for call in calls:
        ids = call["inputs"]["input_ids"]
        for r, n in enumerate(call["lengths"].tolist()):
            assert (ids[r, n:] == call["pad"]).all(), "right padding expected"
            out.append(ids[r, :n].tolist())
    return out


def my_tokens(h: int, w: int, min_pixels: int, max_pixels: int) -> int:
    """Visual tokens of an h x w image, REFERENCE.md §6.2 by hand."""
    import math

    hb, wb = max(32, round(h / 32) * 32), max(32, round(w / 32) * 32)
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = math.floor(h / beta / 32) * 32, math.floor(w / beta / 32) * 32
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / 32) * 32, math.ceil(w * beta / 32) * 32
    return (hb // 32) * (wb // 32)


def write_mp4(path: Path, width: int, height: int, frames: int = 16, rate: int = 8) -> Path:
    import av

    yy, xx = np.mgrid[0:height, 0:width]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=rate)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(frames):
            rgb = np.stack([(xx * 255 // (width - 1)), (yy * 255 // (height - 1)),
                            np.full_like(xx, i * 255 // (frames - 1))], axis=-1).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(rgb, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


@pytest.fixture(scope="module")
def frames() -> list[Image.Image]:
    out = []
    for i in range(6):
        frame = Image.new("RGB", (80, 48), (30 * i, 200 - 30 * i, 120))
        frame.paste((255, 255, 255), (10 * i, 8, 10 * i + 14, 30))
        out.append(frame)
    return out


@pytest.fixture(scope="module")
def http_base(media_dir):
    class Quiet(http.server.SimpleHTTPRequestHandler):
        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0),
                                             functools.partial(Quiet, directory=str(media_dir)))
    server.daemon_threads = True
    threading.Thread(target=server.serve_forever, daemon=True).start()
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("NO_PROXY", "127.0.0.1,localhost")
        mp.setenv("no_proxy", "127.0.0.1,localhost")
        yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


# ============================================================================== token sequences


def test_suffix_and_pooled_token_ids(emb, official, media_dir, frames):
    tok = official.processor.tokenizer
    assert official.suffix == tok.convert_tokens_to_ids(
        ["<|im_end|>", "Ċ", "<|im_start|>", "assistant", "Ċ", "<|endoftext|>"])
    items = ["hello world", {"image": str(media_dir / "red.png")}, {"video": str(media_dir / "clip.mp4")},
             {"video": frames}, {}]
    for item in items:
        with capture_forward(emb) as calls:
            emb.embed([item])
        (ids,) = rows(calls)
        assert ids[-6:] == official.suffix, item
        assert ids.count(official.ids["<|endoftext|>"]) == 1  # appended once, by the tokenizer


@pytest.mark.parametrize("name", ["text", "image", "frames", "file", "mixed"])
def test_token_ids_equal_the_official_processor_output(emb, official, media_dir, frames, name):
    item = {
        "text": {"text": "A woman playing with her dog on a beach at sunset.", "instruction": QUERY_INSTRUCTION},
        "image": {"image": str(media_dir / "red.png"), "text": "What is in the picture?"},
        "frames": {"video": frames},
        "frames of close sizes": {"video": [frames[0], frames[1].resize((86, 52)), frames[2]]},  # same after rounding
        "file": {"video": str(media_dir / "clip.mp4")},
        "mixed": {"text": ["A", "B"], "image": [str(media_dir / "wide.png"), str(media_dir / "gray.png")],
                  "video": [str(media_dir / "clip.mp4"), frames]},
    }[name]
    with capture_forward(emb) as calls:
        emb.embed([item])
    expected = official.inputs(item, bounds=TINY)
    (ids,) = rows(calls)
    assert ids == expected["input_ids"][0].tolist()
    (call,) = calls
    for key in ("pixel_values", "image_grid_thw", "pixel_values_videos", "video_grid_thw", "mm_token_type_ids"):
        if key in expected:
            torch.testing.assert_close(call["inputs"][key], expected[key], rtol=0, atol=1e-6, msg=key)
        else:
            assert key not in call["inputs"], key


def test_image_pad_counts(emb, official, media_dir, tiny_embedding_path):
    pad = official.ids["<|image_pad|>"]
    for name, (w, h) in {"red.png": (160, 120), "wide.png": (300, 100), "blue.jpg": (224, 224),
                         "rgba.png": (64, 64)}.items():
        with capture_forward(emb) as calls:
            emb.embed([{"image": media_dir / name}])
        (ids,) = rows(calls)
        assert ids.count(pad) == my_tokens(h, w, TINY["min_pixels"], TINY["max_pixels"]), name
    assert my_tokens(120, 160, 4096, 65536) == 20 and my_tokens(100, 300, 4096, 65536) == 27
    # Default (reference) bounds: 224 x 224 -> 49 tokens (REFERENCE.md §6.2 table).
    default = Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu")
    with capture_forward(default) as calls:
        default.embed([{"image": media_dir / "blue.jpg"}, {"image": Image.new("RGB", (16, 16))}])
    counts = sorted(ids.count(pad) for ids in rows(calls))
    assert counts == [4, 49]


# ============================================================================== vectors against the reference


@pytest.fixture(scope="module")
def frame_paths(frames, tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("frames")
    paths = []
    for i, frame in enumerate(frames):
        frame.save(folder / f"frame{i}.png")
        paths.append(str(folder / f"frame{i}.png"))
    return paths


@pytest.fixture(scope="module")
def reference_items(media_dir, frames, frame_paths):
    red, clip = str(media_dir / "red.png"), str(media_dir / "clip.mp4")
    return {
        "text": "A woman playing with her dog on a beach at sunset.",
        "text+instruction": {"text": "A woman playing with her dog", "instruction": "Find images of pets"},
        "text list": {"text": ["first part, ", "second part"]},
        "image path": {"image": red},
        "image PIL": {"image": Image.open(media_dir / "wide.png")},
        "image+text": {"image": red, "text": "What is in the picture?"},
        "two images": {"image": [red, str(media_dir / "blue.jpg")], "text": "compare"},
        "frames": {"video": frames},
        "frames of close sizes": {"video": [frames[0], frames[1].resize((86, 52)), frames[2]]},  # same after rounding
        "frame paths": {"video": frame_paths[:3]},
        "video file": {"video": clip},
        "video file fps 4": {"video": clip, "fps": 4.0},
        "video file max_frames 6": {"video": clip, "fps": 8.0, "max_frames": 6},
        "two videos": {"video": [clip, frames], "text": "two clips"},
        "everything": {"video": frames, "image": red, "text": ["A", "B"], "instruction": "Classify the scene"},
        "empty": {},
        "empty string": {"text": ""},
    }


def test_vectors_equal_the_official_procedure(emb, official, reference_items):
    names = list(reference_items)
    items = [reference_items[n] if isinstance(reference_items[n], str) else dict(reference_items[n])
             for n in names]
    got = emb.embed(items)
    assert got.shape == (len(items), 64) and got.dtype == np.float32
    for row, name in enumerate(names):
        obj = {"text": items[row]} if isinstance(items[row], str) else items[row]
        np.testing.assert_allclose(got[row], official.embed(obj, bounds=TINY), atol=1e-5, err_msg=name)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-6)
    # The inputs really differ from each other (a constant output would pass the comparison above otherwise).
    assert np.abs(got[:, None] - got[None]).max(axis=-1)[np.triu_indices(len(items), 1)].min() > 1e-4


def test_unnormalized_vector_is_the_last_hidden_state(emb, official, media_dir):
    got = emb.embed(["some text", {"image": media_dir / "red.png"}], normalize=False)
    np.testing.assert_allclose(got[0], official.embed({"text": "some text"}, bounds=TINY, normalize=False),
                               atol=1e-5)
    np.testing.assert_allclose(got[1], official.embed({"image": str(media_dir / "red.png")}, bounds=TINY,
                                                      normalize=False), atol=1e-5)
    assert abs(np.linalg.norm(got[0]) - 1.0) > 1e-3


def test_pooling_takes_the_last_attended_token_of_each_row(emb, media_dir, monkeypatch):
    """With the last layer run at every position, the returned vectors are the hidden states of each row's last
    real token; with it run at those tokens only (the default), they are the same."""
    # Lengths a few tokens apart, so that any sensible planner puts them in one padded batch.
    items = ["red car", "red car red car", "red car red car red car red car"]
    pooled_in_layer = emb.embed(items, normalize=False, batch_size=8)
    monkeypatch.setattr(runner_module, "POOL_IN_LAST_LAYER", False)
    singles = []  # each item's tokens, run alone (no padding): the rows' true lengths, found independently
    for item in items:
        with capture_forward(emb) as calls:
            emb.embed([item])
        singles.append(calls[0]["inputs"]["input_ids"][0].tolist())
    with capture_forward(emb) as calls:
        got = emb.embed(items, normalize=False, batch_size=8)
    assert np.abs(got - pooled_in_layer).max() < 1e-5
    (call,) = calls  # one padded batch
    ids, hidden = call["inputs"]["input_ids"], call["hidden"]
    lengths = torch.tensor([next(len(s) for s in singles if ids[r, :len(s)].tolist() == s) for r in range(3)])
    assert len(set(lengths.tolist())) == 3  # three different lengths, so two rows are padded
    pooled = hidden[torch.arange(3), lengths - 1].numpy()
    # Match each returned vector to the pooled row it came from (rows are sorted by length inside a batch).
    for vector in got:
        assert np.abs(pooled - vector).max(axis=1).min() < 1e-6
    # ... and never the padded position.
    padded = [r for r in range(3) if lengths[r] < ids.shape[1]]
    for r in padded:
        assert np.abs(got - hidden[r, -1].numpy()).max(axis=1).min() > 1e-3


def test_instruction_precedence(emb, official):
    got = emb.embed([{"text": "x", "instruction": "Item task"}, "x", {"text": "x", "instruction": ""},
                     {"text": "x", "instruction": "  \n "}], instruction="Call task")
    np.testing.assert_allclose(got[0], official.embed({"text": "x"}, "Item task", TINY), atol=1e-5)
    np.testing.assert_allclose(got[1], official.embed({"text": "x"}, "Call task", TINY), atol=1e-5)
    np.testing.assert_allclose(got[2], got[1], atol=1e-5)  # a falsy item instruction falls back to the call's
    np.testing.assert_allclose(got[3], got[1], atol=1e-5)  # so does a blank one (it took the default)
    default = emb.embed(["x"])[0]
    np.testing.assert_allclose(default, official.embed({"text": "x"}, None, TINY), atol=1e-5)
    assert np.abs(default - got[1]).max() > 1e-4
    # The normalisation rule is applied: "Call task" == "Call task." == "  Call task  ".
    np.testing.assert_allclose(emb.embed(["x"], instruction="  Call task.  ")[0], got[1], atol=1e-5)


def test_custom_default_instruction(tiny_embedding_path, official):
    custom = fresh(tiny_embedding_path, default_instruction="Represent the user's input.")
    other = fresh(tiny_embedding_path, default_instruction="Embed this for retrieval.")
    a, b = custom.embed(["x"])[0], other.embed(["x"])[0]
    np.testing.assert_allclose(a, official.embed({"text": "x"}, None, TINY), atol=1e-5)
    np.testing.assert_allclose(b, official.embed({"text": "x"}, "Embed this for retrieval.", TINY), atol=1e-5)


def test_text_list_is_concatenated_without_separator(emb):
    v = emb.embed([{"text": ["a", "b"]}, {"text": "ab"}, {"text": ["a", " b"]}])
    np.testing.assert_allclose(v[0], v[1], atol=1e-6)
    assert np.abs(v[0] - v[2]).max() > 1e-4


def test_embed_empty_list(tiny_embedding_path):
    e = fresh(tiny_embedding_path)
    out = e.embed([])
    assert out.shape == (0, 64) and out.dtype == np.float32
    result = e.try_embed([])
    assert result.embeddings.shape == (0, 64) and len(result.indices) == 0 and result.errors == []
    assert not e.is_loaded
    assert e.embedding_dim == 64 and not e.is_loaded  # read from the config only


def test_embed_rejects_a_bare_item(emb):
    with pytest.raises(TypeError):
        emb.embed("just a string")
    with pytest.raises(TypeError):
        emb.embed({"text": "a dict"})


def test_tuple_and_generator_inputs(emb):
    expected = emb.embed(["a", "b"])
    np.testing.assert_allclose(emb.embed(("a", "b")), expected, atol=1e-6)
    np.testing.assert_allclose(emb.embed(x for x in ["a", "b"]), expected, atol=1e-6)


# ============================================================================== errors


def _bad_items(media_dir) -> dict[str, tuple[Any, str]]:
    return {
        "missing file": ({"image": "/no/such/file.png"}, "not found: '/no/such/file.png'"),
        "missing Path": ({"image": Path("/no/such/file.png")}, "not found"),
        "missing video": ({"video": "/no/such/clip.mp4"}, "not found"),
        "unreadable image": ({"image": str(media_dir / "broken.png")}, "unreadable image"),
        "text file as video": ({"video": str(media_dir / "doc.txt")}, "unreadable video"),
        "unsupported type": (42, "unsupported input type int"),
        "unsupported image type": ({"image": 3.5}, "unsupported image type float"),
        "empty frame list": ({"video": [[]]}, "empty frame list"),
        "empty array video": ({"video": np.zeros((0, 8, 8, 3), np.uint8)}, "empty video"),
        "non-string text": ({"text": 12}, "text 0 is int"),
        "non-string text in list": ({"text": ["ok", None]}, "text 1 is NoneType"),
        "failed URL": ({"image": "http://127.0.0.1:9/x.png"}, "could not fetch"),
        "unknown key": ({"text": "a", "images": "x.png"}, "unknown key"),
        "aspect ratio": ({"image": Image.new("RGB", (402, 2))}, "image 0: absolute aspect ratio"),
        "too narrow for max_pixels": ({"text": "a strip", "image": [Image.new("RGB", (64, 64)),
                                                                  Image.new("RGB", (6400, 32))]},
                                      "image 1: a 6400x32 image shrinks to 3616x0 pixels under max_pixels=65536"),
        "bad frame": ({"video": [Image.new("RGB", (32, 32)), "/no/such/frame.png"]}, "frame 1"),
        "vision placeholder in text": ("see <|image_pad|> here", "reserved vision placeholder '<|image_pad|>'"),
        "vision placeholder in instruction": ({"text": "x", "instruction": "<|video_pad|>"}, "reserved vision"),
        "lone surrogate (broken JSON escape)": ("caf\udce9", "text is not valid Unicode"),
        "None image alone": ({"image": None}, "image is None and the item has no other content"),
        "frames of different sizes": ({"video": [Image.new("RGB", (64, 48)), Image.new("RGB", (300, 60))]},
                                      "must have one size"),
    }


@pytest.mark.parametrize("case", list(_bad_items(Path("/media"))))
def test_bad_item_raises_before_any_model_work(tiny_embedding_path, media_dir, case):
    item, cause = _bad_items(media_dir)[case]
    e = fresh(tiny_embedding_path)
    with pytest.raises(Qwen3VLInputError) as info:
        e.embed(["fine", {"text": "also fine"}, item, "fine again"])
    error = info.value
    assert isinstance(error, ValueError)
    assert error.index == 2 and error.role == "item"
    assert str(error).startswith("item 2: ")
    assert cause in str(error) and cause in error.cause
    assert not e.is_loaded  # raised before the model was even loaded


def test_one_error_reports_every_bad_input(tiny_embedding_path, media_dir):
    """A list with several bad inputs fails once, for all of them: fixing one and running again must not be the way
    to find the next (it was: the message said only "and 2 more bad input(s)")."""
    e = fresh(tiny_embedding_path)
    items = ["fine", {"image": str(media_dir / "nope.png")}, "ok", {"image": str(media_dir / "broken.png")},
             "caf\udce9"]
    with pytest.raises(Qwen3VLInputError) as info:
        e.embed(items)
    error = info.value
    assert [(each.index, each.role) for each in error.errors] == [(1, "item"), (3, "item"), (4, "item")]
    assert error.errors[0] is error and "file not found" in error.cause
    assert "broken.png" in error.errors[1].cause and "not valid Unicode" in error.errors[2].cause
    assert str(error).startswith("item 1: ") and "(and 2 more bad inputs: items 3, 4;" in str(error)
    assert any("try_embed" in note for note in error.__notes__)
    assert not e.is_loaded
    skipped = e.try_embed(items)  # reports the same inputs, for the same causes
    assert [(each.index, each.cause) for each in skipped.errors] == [(each.index, each.cause) for each in error.errors]
    clone = pickle.loads(pickle.dumps(error))  # a worker process's error reaches its parent whole
    assert str(clone) == str(error) and clone.__notes__ == error.__notes__
    assert [(each.index, each.cause) for each in clone.errors] == [(each.index, each.cause) for each in error.errors]


def test_a_frame_list_reads_only_the_frames_max_frames_keeps(tiny_embedding_path, tmp_path):
    """The constructor's max_frames samples a frame list when it is resolved: frames it drops are never read."""
    red, blue = str(tmp_path / "red.png"), str(tmp_path / "blue.png")
    Image.new("RGB", (96, 64), (200, 30, 30)).save(red)
    Image.new("RGB", (96, 64), (30, 30, 200)).save(blue)
    e = fresh(tiny_embedding_path, max_frames=4)
    given = [red, "/never/read.png", "/never/read.png", blue] * 3  # sampled: 0, 3, 7, 11
    given[7], given[11] = red, blue
    np.testing.assert_allclose(e.embed([{"video": given}]), e.embed([{"video": [red, blue, red, blue]}]), atol=1e-6)


def test_the_message_names_a_bounded_number_of_other_bad_inputs():
    others = [Qwen3VLInputError("file not found", index=i) for i in range(1, 30)]
    error = Qwen3VLInputError("file not found", index=0, others=others)
    assert str(error).startswith("item 0: file not found (and 29 more bad inputs: items 1, 2, 3, 4, 5, 6, 7, 8, 9, "
                                 "10, ...;")
    assert len(error.errors) == 30
    moved = error.located(5, "document")
    assert moved.index == 5 and moved.errors[1:] == error.errors[1:]
    mixed = Qwen3VLInputError("no such file", index=None, role="query",
                              others=[Qwen3VLInputError("no such file", index=3, role="document")])
    assert str(mixed) == ("query: no such file (and 1 more bad input: document 3; each with its cause in this "
                          "error's .errors)")
    assert "(and 1 more bad input: query;" in str(Qwen3VLInputError("x", 1, "document", others=mixed.errors[:1]))


@pytest.mark.parametrize("instruction, error, cause", [
    ("Find\ud83d", ValueError, "instruction is not valid Unicode"),
    ("<|image_pad|> find", ValueError, "instruction contains the reserved vision placeholder"),
    (3, TypeError, "instruction must be a str or None, got int"),
])
def test_bad_call_instruction_is_refused_before_any_model_work(tiny_embedding_path, instruction, error, cause):
    """A call's instruction is no item's: its error names the instruction, not item 0 (it was "could not encode")."""
    e = fresh(tiny_embedding_path)
    with pytest.raises(error, match=cause) as info:
        e.embed(["fine"], instruction=instruction)
    assert not isinstance(info.value, Qwen3VLInputError)
    with pytest.raises(error, match="default_" + cause):
        fresh(tiny_embedding_path, default_instruction=instruction)
    assert not e.is_loaded


def test_decompression_bomb_cap(tiny_embedding_path, media_dir):
    e = fresh(tiny_embedding_path, max_image_pixels=10_000)
    with pytest.raises(Qwen3VLInputError, match=r"item 0: .*max_image_pixels") as info:
        e.embed([{"image": media_dir / "red.png"}, {"image": media_dir / "rgba.png"}])  # 19,200 px and 4,096 px
    assert info.value.index == 0 and not e.is_loaded


def test_several_bad_items_are_counted(tiny_embedding_path):
    e = fresh(tiny_embedding_path)
    with pytest.raises(Qwen3VLInputError, match=r"^item 1: .*and 2 more") as info:
        e.embed(["ok", 1, "ok", 2, {"image": "/nope.png"}])
    assert any("try_embed" in note for note in info.value.__notes__)


def test_try_embed_keeps_the_good_items(emb, media_dir, official):
    items = ["good 0", {"image": "/no/such.png"}, {"image": media_dir / "red.png"}, 17, {"text": ["x", "y"]},
             {"video": [[]]}]
    result = emb.try_embed(items)
    assert result.indices.tolist() == [0, 2, 4]
    assert len(result) == 3 and result.embeddings.shape == (3, 64)
    assert [e.index for e in result.errors] == [1, 3, 5]
    assert all(isinstance(e, Qwen3VLInputError) for e in result.errors)
    assert str(result.errors[0]).startswith("item 1: ") and "/no/such.png" in str(result.errors[0])
    np.testing.assert_allclose(result.embeddings, emb.embed([items[i] for i in (0, 2, 4)]), atol=1e-5)
    np.testing.assert_allclose(result.embeddings[1], official.embed({"image": str(media_dir / "red.png")},
                                                                    bounds=TINY), atol=1e-5)


def test_check_inputs_finds_what_embed_refuses_without_the_model(tiny_embedding_path, media_dir):
    """`check_inputs` runs embed's checks before model work, alone: the LlamaIndex adapter reports with it the bad
    inputs of the chunks it did not embed, so its errors must be the ones embed would raise."""
    e = fresh(tiny_embedding_path, max_length=64)
    items = ["fine", {"image": str(media_dir / "nope.png")}, {"image": [media_dir / "blue.jpg", media_dir / "red.png"]},
             {"text": 5}, "caf\udce9"]
    found = e.check_inputs(items)
    with pytest.raises(Qwen3VLInputError) as info:
        e.embed(items)
    assert [(each.index, each.role, each.cause) for each in found] == [
        (each.index, each.role, each.cause) for each in info.value.errors]
    assert [each.index for each in found] == [1, 2, 3, 4] and "max_length" in found[1].cause  # the token budget too
    assert e.check_inputs(["fine", {"image": media_dir / "red.png"}]) == []
    assert not e.is_loaded
    with pytest.raises(TypeError, match="wrap a single input in a list"):
        e.check_inputs("fine")


def test_try_embed_reports_errors_found_while_decoding(tiny_embedding_path, media_dir):
    """Errors that only show when decoding (a truncated file whose header is fine; vision tokens over
    max_length) are attributed to the right input position, and the other inputs survive."""
    data = (media_dir / "red.png").read_bytes()
    truncated = data[: len(data) // 2]
    e = fresh(tiny_embedding_path, max_length=64)
    items = ["ok", {"image": truncated}, {"text": 5}, {"image": [media_dir / "blue.jpg", media_dir / "red.png"]},
             "also ok"]
    result = e.try_embed(items)
    assert result.indices.tolist() == [0, 4]
    assert [err.index for err in result.errors] == [1, 2, 3]
    assert "max_length" in result.errors[2].cause
    np.testing.assert_allclose(result.embeddings, e.embed(["ok", "also ok"]), atol=1e-5)
    with pytest.raises(Qwen3VLInputError, match=r"^item 1: image 1: unreadable image"):  # which of the item's images
        fresh(tiny_embedding_path).embed(["ok", {"image": [media_dir / "blue.jpg", truncated]}])


# ============================================================================== Matryoshka


@pytest.fixture(scope="module")
def wide_path(tmp_path_factory) -> Path:
    """A tiny checkpoint with a 128-wide text model, so that Matryoshka truncation (64 < 128) is visible."""
    from transformers import Qwen3VLForConditionalGeneration

    from qwen3vl_integrations.testing import build_processor, build_tokenizer, random_checkpoint_config

    path = tmp_path_factory.mktemp("wide-embedding")
    tokenizer = build_tokenizer("embedding")
    config = random_checkpoint_config("tiny", tokenizer)
    config.text_config.hidden_size = 128
    config.text_config.intermediate_size = 256
    config.vision_config.out_hidden_size = 128
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(1)
        model = Qwen3VLForConditionalGeneration._from_config(config, dtype=torch.float32)
    build_processor(tokenizer).save_pretrained(path)
    model.save_pretrained(path)
    return path


def test_matryoshka_keeps_the_first_k_and_renormalises(wide_path, media_dir):
    e = Qwen3VLEmbedder(str(wide_path), **TINY)
    assert e.embedding_dim == 128
    items = ["a cat", {"image": media_dir / "red.png"}]
    full = e.embed(items)
    raw = e.embed(items, normalize=False)
    for k in (64, 100, 128):
        got = e.embed(items, dimensions=k)
        assert got.shape == (2, k) and got.dtype == np.float32
        want = raw[:, :k] / np.linalg.norm(raw[:, :k], axis=1, keepdims=True)
        np.testing.assert_allclose(got, want, atol=1e-6)
        np.testing.assert_allclose(got, full[:, :k] / np.linalg.norm(full[:, :k], axis=1, keepdims=True),
                                   atol=1e-6)
    assert np.abs(e.embed(items, dimensions=64) - full[:, :64]).max() > 1e-3  # really re-normalised
    np.testing.assert_allclose(e.embed(items, dimensions=64, normalize=False), raw[:, :64], atol=1e-6)
    for bad in (0, 32, 63, 129, 4096):
        with pytest.raises(ValueError):
            e.embed(items, dimensions=bad)
    result = e.try_embed(["ok", 3], dimensions=64)
    assert result.embeddings.shape == (1, 64)


def test_matryoshka_on_the_tiny_model(emb):
    full = emb.embed(["a", "b"])
    np.testing.assert_allclose(emb.embed(["a", "b"], dimensions=64), full, atol=1e-6)
    for bad in (63, 65):
        with pytest.raises(ValueError, match=str(bad)):
            emb.embed(["a"], dimensions=bad)


# ============================================================================== truncation


@pytest.fixture(scope="module")
def short(tiny_embedding_path) -> Qwen3VLEmbedder:
    return fresh(tiny_embedding_path, max_length=64)


LONG_TEXT = "the quick brown fox jumps over the lazy dog and runs into the forest " * 12


def test_long_text_keeps_the_suffix_and_pools_endoftext(short, official):
    with capture_forward(short) as calls:
        got = short.embed([LONG_TEXT, "short text"])
    long_ids = max(rows(calls), key=len)
    full = official.inputs({"text": LONG_TEXT}, bounds=TINY)
    full_ids = full["input_ids"][0].tolist()
    assert len(full_ids) > 100
    assert len(long_ids) == 64
    assert long_ids == full_ids[:58] + official.suffix  # the start of the prompt, then the whole suffix
    expected = official.hidden(cut_text_tokens(full, 64, official.special_ids))
    np.testing.assert_allclose(got[0], expected / np.linalg.norm(expected), atol=1e-5)
    np.testing.assert_allclose(got[1], official.embed({"text": "short text"}, bounds=TINY), atol=1e-5)


def test_truncation_never_cuts_vision_tokens(short, official, media_dir):
    item = {"image": str(media_dir / "red.png"), "text": LONG_TEXT}
    with capture_forward(short) as calls:
        got = short.embed([item])
    (ids,) = rows(calls)
    assert len(ids) == 64 and ids[-6:] == official.suffix
    assert ids.count(official.ids["<|image_pad|>"]) == 20
    vision = ids.index(official.ids["<|vision_start|>"])
    assert ids[vision + 21] == official.ids["<|vision_end|>"]
    full = official.inputs({"image": str(media_dir / "red.png"), "text": LONG_TEXT}, bounds=TINY)
    cut = cut_text_tokens(full, 64, official.special_ids)
    assert ids == cut["input_ids"][0].tolist()
    expected = official.hidden(cut)
    np.testing.assert_allclose(got[0], expected / np.linalg.norm(expected), atol=1e-5)


def test_video_tokens_survive_truncation(tiny_embedding_path, official, frames):
    e = fresh(tiny_embedding_path, max_length=400)
    item = {"video": frames[:2], "text": LONG_TEXT * 2}
    with capture_forward(e) as calls:
        e.embed([item])
    (ids,) = rows(calls)
    full = official.inputs(item, bounds=TINY)
    n_video = full["input_ids"][0].tolist().count(official.ids["<|video_pad|>"])
    assert n_video > 0 and ids.count(official.ids["<|video_pad|>"]) == n_video
    assert len(ids) == 400 and ids[-6:] == official.suffix
    assert ids == cut_text_tokens(full, 400, official.special_ids)["input_ids"][0].tolist()


def test_vision_tokens_over_max_length_is_an_input_error(short, media_dir):
    with pytest.raises(Qwen3VLInputError, match=r"^item 1: .*max_length") as info:
        short.embed(["ok", {"image": [media_dir / "blue.jpg", media_dir / "red.png"]}])  # 49 + 20 image tokens
    assert info.value.index == 1


def test_vision_tokens_over_max_length_is_caught_before_any_forward(short, media_dir):
    with capture_forward(short) as calls:
        with pytest.raises(Qwen3VLInputError):
            short.embed([LONG_TEXT * 10, {"image": [media_dir / "blue.jpg", media_dir / "red.png"]}], batch_size=1)
    assert calls == []


# ============================================================================== video budgets


@pytest.fixture(scope="module")
def big_clip(tmp_path_factory) -> Path:
    return write_mp4(tmp_path_factory.mktemp("video") / "big.mp4", 640, 360)


def test_total_pixels_is_applied_to_video_files(tiny_embedding_path, official, big_clip):
    from qwen_vl_utils import fetch_video

    total = 600 * 32 * 32
    bounds = dict(TINY, total_pixels=total, fps=4.0)
    e = fresh(tiny_embedding_path, total_pixels=total, fps=4.0)
    with capture_forward(e) as calls:
        got = e.embed([{"video": big_clip}])
    (ids,) = rows(calls)
    n_video = ids.count(official.ids["<|video_pad|>"])
    # qwen-vl-utils' own numbers, given total_pixels: 8 frames at 288x512 -> 4 groups x 144 tokens.
    video, _ = fetch_video({"video": str(big_clip), "fps": 4.0, "max_frames": 8, "total_pixels": total},
                           image_patch_size=16, return_video_metadata=True)
    t, _, h, w = video.shape
    assert (t, h, w) == (8, 288, 512)
    assert n_video == (t // 2) * (h // 32) * (w // 32) == 576
    assert n_video <= total // 1024
    # The reference (no total_pixels for files) would use 880 tokens here (REFERENCE.md §11 #2).
    ref, _ = fetch_video({"video": str(big_clip), "fps": 4.0, "max_frames": 8}, image_patch_size=16,
                         return_video_metadata=True)
    assert (ref.shape[0] // 2) * (ref.shape[2] // 32) * (ref.shape[3] // 32) == 880 > total // 1024
    np.testing.assert_allclose(got[0], official.embed({"video": str(big_clip)}, bounds=bounds), atol=1e-5)


def test_video_file_frame_count_follows_fps_and_max_frames(emb, official, media_dir):
    clip = str(media_dir / "clip.mp4")  # 2 s, 16 frames at 8 fps
    groups = {}
    for key, item in {"default fps 1": {"video": clip}, "fps 4": {"video": clip, "fps": 4},
                      "fps 8, max 4": {"video": clip, "fps": 8, "max_frames": 4}}.items():
        with capture_forward(emb) as calls:
            emb.embed([item])
        (ids,) = rows(calls)
        groups[key] = ids.count(official.ids["<|vision_start|>"]) - 1  # one per 2-frame group, plus the outer one
    # fps 1 -> 2 frames, raised to the 4-frame minimum; fps 4 -> 8 frames; max_frames 4 -> 4 frames.
    assert groups == {"default fps 1": 2, "fps 4": 4, "fps 8, max 4": 2}


# ============================================================================== official API


SEED_SNIPPET = '''
import torch

queries = [
    {"text": "A woman playing with her dog on a beach at sunset.",
     "instruction": "Retrieve images or text relevant to the user's query."},
    {"text": "Pet owner training dog outdoors near water.",
     "instruction": "Retrieve images or text relevant to the user's query."},
    {"text": "Woman surfing on waves during a sunny day.",
     "instruction": "Retrieve images or text relevant to the user's query."},
    {"text": "City skyline view from a high-rise building at night.",
     "instruction": "Retrieve images or text relevant to the user's query."},
]
documents = [
    {"text": "A woman shares a joyful moment with her golden retriever on a sun-drenched beach at sunset, as the dog "
             "offers its paw in a heartwarming display of companionship and trust."},
    {"image": IMAGE_URL},
    {"text": "A woman shares a joyful moment with her golden retriever on a sun-drenched beach at sunset, as the dog "
             "offers its paw in a heartwarming display of companionship and trust.",
     "image": IMAGE_URL},
]

model = Qwen3VLEmbedder(model_name_or_path=model_name_or_path)
inputs = queries + documents
embeddings = model.process(inputs)
similarity_scores = embeddings[:4] @ embeddings[4:].T
print(similarity_scores.tolist())
'''


def test_official_seed_snippet_runs_unchanged(tiny_embedding_path, official, http_base, capsys):
    namespace = {"Qwen3VLEmbedder": Qwen3VLEmbedder, "model_name_or_path": str(tiny_embedding_path),
                 "IMAGE_URL": f"{http_base}/red.png"}
    exec(compile("from qwen3vl_integrations import Qwen3VLEmbedder\n" + SEED_SNIPPET, "<model card>", "exec"),
         namespace)
    embeddings, scores = namespace["embeddings"], namespace["similarity_scores"]
    assert isinstance(embeddings, torch.Tensor) and embeddings.dtype == torch.float32
    assert tuple(embeddings.shape) == (7, 64) and tuple(scores.shape) == (4, 3)
    assert "[[" in capsys.readouterr().out
    expected = np.stack([official.embed(dict(item)) for item in namespace["inputs"]])  # reference bounds
    np.testing.assert_allclose(embeddings.numpy(), expected, atol=1e-5)
    np.testing.assert_allclose(scores.numpy(), expected[:4] @ expected[4:].T, atol=1e-5)


def test_process_matches_embed(emb):
    items = [{"text": "a"}, {"text": "b", "instruction": "Find it"}]
    out = emb.process(items)
    assert isinstance(out, torch.Tensor) and out.dtype == torch.float32 and tuple(out.shape) == (2, 64)
    np.testing.assert_allclose(out.numpy(), emb.embed(items), atol=1e-6)
    raw = emb.process(items, normalize=False)
    np.testing.assert_allclose(raw.numpy(), emb.embed(items, normalize=False), atol=1e-6)
    assert abs(float(raw[0].norm()) - 1.0) > 1e-3
    # as upstream, keys the official code does not read are ignored (an "id" kept next to the content)
    np.testing.assert_allclose(emb.process([{"text": "a", "id": 1}, {"text": "b", "instruction": "Find it", "x": 0}]),
                               out.numpy(), atol=1e-6)


# ============================================================================== construction and registry


def test_registry_shares_one_model(tiny_embedding_path):
    a = Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu")
    b = Qwen3VLEmbedder(model_name_or_path=str(tiny_embedding_path) + "/", device="cpu", dtype="float32",
                        max_pixels=32 * 32 * 32)
    c = Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu", torch_dtype=torch.float32)
    assert not a.is_loaded
    assert a.load() is b.load() is c.load()
    assert a.is_loaded and b.is_loaded
    half = Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu", dtype=torch.bfloat16)
    assert half.load() is not a.load()
    assert half.load().dtype == torch.bfloat16
    assert next(half.load().backbone.parameters()).dtype == torch.bfloat16
    assert np.isfinite(half.embed(["x"])).all() and half.embed(["x"]).dtype == np.float32


def test_one_folder_under_two_spellings_loads_once(tiny_embedding_path, tmp_path, monkeypatch):
    """On a case-insensitive disk (macOS, Windows) `Path.resolve()` keeps the case it is given, so `~/Models/X` and
    `~/models/x` are two names of one folder; stood in for here by a symlink that `resolve` does not follow, as
    `resolve` does not fold the case there."""
    import os

    from qwen3vl_integrations.core import loading

    other_spelling = tmp_path / "Tiny-Embedding"
    other_spelling.symlink_to(tiny_embedding_path, target_is_directory=True)
    monkeypatch.setattr(loading.Path, "resolve", lambda self, strict=False: loading.Path(os.path.abspath(self)))
    a = Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu")
    b = Qwen3VLEmbedder(str(other_spelling), device="cpu")
    assert a.load() is b.load()
    # a folder deleted since leaves its identity to whatever reuses its inode: that is another folder
    identity = (os.stat(tiny_embedding_path).st_dev, os.stat(tiny_embedding_path).st_ino)
    monkeypatch.setitem(loading._SPELLINGS, identity, str(tmp_path / "deleted-since"))
    assert loading._normalise_path(str(other_spelling)) == str(other_spelling)


def test_backbone_has_no_lm_head(emb):
    loaded = emb.load()
    assert type(loaded.backbone).__name__ == "Qwen3VLModel"
    assert not any("lm_head" in name for name, _ in loaded.backbone.named_parameters())


def test_constructor_options(tiny_embedding_path):
    e = Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu")
    assert e.model_name_or_path == str(tiny_embedding_path)
    assert e.dtype == torch.float32 and str(e.device) == "cpu" and e.max_length == 8192
    assert (e.limits.min_pixels, e.limits.max_pixels, e.limits.total_pixels) == (4096, 1_843_200, 7_864_320)
    assert (e.limits.fps, e.limits.max_frames) == (1.0, 64)
    assert e.default_instruction == "Represent the user's input."
    assert (e.batch_size, e.max_batch_tokens) == (None, 16384)  # None: 32 items per pass (more: below)
    assert Qwen3VLEmbedder(str(tiny_embedding_path), torch_dtype="bfloat16").dtype == torch.bfloat16
    with pytest.raises(TypeError):
        Qwen3VLEmbedder(str(tiny_embedding_path), num_frames=16)  # the notebooks' leftover kwarg
    with pytest.raises(TypeError):
        Qwen3VLEmbedder(str(tiny_embedding_path), dtype="float32", torch_dtype="bfloat16")
    with pytest.raises(ValueError):
        Qwen3VLEmbedder(str(tiny_embedding_path), min_pixels=10_000, max_pixels=5_000)
    with pytest.raises(ValueError):
        Qwen3VLEmbedder(str(tiny_embedding_path), dtype="int3")


def test_items_per_pass_default_to_32_and_to_256_for_texts_alone_on_cuda(tiny_embedding_path, tiny_reranker_path,
                                                                          monkeypatch):
    """batch_size left at None: 32 items per forward pass (a reranker: 16 pairs), and on CUDA 256 for an embedder's
    call of texts alone (short texts ran 1.67x on an H200); a batch_size given, the object's or the call's, wins."""
    from qwen3vl_integrations import Qwen3VLReranker

    runner = runner_module
    image = Image.new("RGB", (64, 64), "red")
    cuda = Qwen3VLEmbedder(str(tiny_embedding_path), device="cuda")  # built only: no model is loaded
    assert cuda._items_per_pass(None, texts_only=True) == runner.CUDA_TEXT_BATCH_SIZE == 256
    assert cuda._items_per_pass(None, texts_only=False) == 32 and cuda._items_per_pass(8, texts_only=True) == 8
    assert Qwen3VLEmbedder(str(tiny_embedding_path), device="cuda", batch_size=8).batch_size == 8
    cpu = Qwen3VLEmbedder(str(tiny_embedding_path), **TINY)
    assert cpu._items_per_pass(None, texts_only=True) == 32 == cpu._items_per_pass(None, texts_only=False)
    assert Qwen3VLReranker(str(tiny_reranker_path), device="cuda")._items_per_pass(None, texts_only=False) == 16

    asked, planned = [], []
    items_per_pass = Qwen3VLEmbedder._items_per_pass
    monkeypatch.setattr(Qwen3VLEmbedder, "_items_per_pass",
                        lambda self, size, texts_only: asked.append((size, texts_only)) or items_per_pass(
                            self, size, texts_only))
    plan = runner.plan_batches
    monkeypatch.setattr(runner, "plan_batches", lambda costs, size, *a, **k: planned.append(size) or plan(
        costs, size, *a, **k))
    cpu.embed(["a", "b"])
    cpu.embed(["a", {"image": image}])
    cpu.embed([{"text": "c", "image": image}], batch_size=3)
    assert asked == [(None, True), (None, False), (3, False)] and planned == [32, 32, 3]
