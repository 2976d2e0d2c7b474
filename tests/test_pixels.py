"""Image pixels normalised on the model's device (core/pixels.py): the same values as the processor's, and the
same vectors and scores, with the device path forced onto the CPU."""
from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from qwen3vl_integrations import Qwen3VLEmbedder, Qwen3VLReranker
from qwen3vl_integrations.core import pixels
from qwen3vl_integrations.core.encoding import EncodedItem, collate

TINY = dict(device="cpu", min_pixels=4 * 32 * 32, max_pixels=64 * 32 * 32, total_pixels=256 * 32 * 32, max_frames=8)


def noise(width: int, height: int, seed: int) -> Image.Image:
    rng = np.random.default_rng(seed)
    return Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture(scope="module")
def image_processor(tiny_embedding_path):
    return Qwen3VLEmbedder(str(tiny_embedding_path), **TINY).load().processor.image_processor


def test_normalised_patches_equal_the_processors(image_processor):
    """8-bit patches normalised by normalize_pixels equal, bit for bit, the processor's float patches of the same
    images (sizes grouped and not, every pixel value from 0 to 255)."""
    images = [noise(64, 96, 0), noise(448, 448, 1), noise(64, 96, 2), noise(32, 32, 3)]
    reference = image_processor(images, do_resize=False, return_tensors="pt")
    raw = image_processor(images, do_resize=False, return_tensors="pt", **pixels.RAW_IMAGE_KWARGS)
    assert raw["pixel_values"].dtype == torch.uint8 and reference["pixel_values"].dtype == torch.float32
    # one temporal slice of the 8-bit pixels: an eighth of the float patches' bytes
    assert raw["pixel_values"].nbytes * 8 == reference["pixel_values"].nbytes
    assert raw["pixel_values"].unique().numel() == 256
    assert torch.equal(raw["image_grid_thw"], reference["image_grid_thw"])
    normalized = pixels.normalize_pixels(image_processor, raw["pixel_values"])
    assert normalized.dtype == torch.float32 and torch.equal(normalized, reference["pixel_values"])
    assert pixels.normalize_pixels(image_processor, normalized) is normalized  # float patches pass through


SIZES = [(64, 96), (448, 448), (64, 96), (32, 32), (160, 32), (32, 224)]


def test_patches_cut_from_the_pixels_equal_the_processors(image_processor):
    """cut_patches gives, bit for bit, the processor's 8-bit patches and grids (RAW_IMAGE_KWARGS) of each image;
    joined and normalised, its float patches of the images together (sizes grouped and not, every value 0-255)."""
    images = [noise(width, height, seed) for seed, (width, height) in enumerate(SIZES)]
    for image in images:
        patches, grid = pixels.cut_patches(image_processor, image)
        expected = image_processor([image], do_resize=False, return_tensors="pt", **pixels.RAW_IMAGE_KWARGS)
        assert patches.dtype == torch.uint8 and patches.is_contiguous()
        assert torch.equal(patches, expected["pixel_values"]) and torch.equal(grid, expected["image_grid_thw"])
    reference = image_processor(images, do_resize=False, return_tensors="pt")
    joined = torch.cat([pixels.cut_patches(image_processor, image)[0] for image in images])
    assert joined.unique().numel() == 256
    assert torch.equal(pixels.normalize_pixels(image_processor, joined), reference["pixel_values"])


def transparent_red(image: Image.Image) -> Image.Image:
    """`image` with pure red declared transparent, as a PNG of RGB pixels with a tRNS chunk decodes."""
    image = image.copy()
    image.putpixel((0, 0), (255, 0, 0))
    image.info["transparency"] = (255, 0, 0)
    return image


@pytest.mark.parametrize("make", [lambda i: i.convert("RGBA"), lambda i: i.convert("L"), transparent_red,
                                  lambda i: np.asarray(i), lambda i: i.crop((0, 0, 48, 64))],
                         ids=["RGBA", "L", "RGB with a transparent colour", "array", "not a multiple of 32"])
# np.asarray(PIL image) is read-only, and the processor's torch.from_numpy warns about it: this test hands the array
# to the processor as it is (the package turns a caller's array into a PIL image before the processor sees it).
@pytest.mark.filterwarnings("ignore:The given NumPy array is not writable:UserWarning")
def test_images_only_the_processor_can_cut_are_left_to_it(image_processor, make):
    """Other modes, a transparent colour (which the processor's RGB conversion paints white), arrays and sizes the
    processor rejects are not cut here: encoding hands them to the processor, whose values (or error) they get."""
    from qwen3vl_integrations.core.encoding import image_patches

    image = make(noise(64, 96, 5))
    assert pixels.cut_patches(image_processor, image) is None
    for raw in (True, False):
        kwargs = pixels.RAW_IMAGE_KWARGS if raw else {}
        try:
            expected = image_processor([image], do_resize=False, return_tensors="pt", **kwargs)
        except Exception as exc:  # noqa: BLE001 - whatever the processor raises, encoding raises too
            with pytest.raises(type(exc)):
                image_patches(image_processor, [noise(32, 32, 6), image], raw)
            continue
        reference = image_processor([noise(32, 32, 6), image], do_resize=False, return_tensors="pt", **kwargs)
        patches, grid = image_patches(image_processor, [noise(32, 32, 6), image], raw)
        assert torch.equal(patches, reference["pixel_values"]) and torch.equal(grid, reference["image_grid_thw"])
    if make is transparent_red:  # the case that would differ: the processor paints the red pixel white
        white = image_processor([image], do_resize=False, return_tensors="pt", **pixels.RAW_IMAGE_KWARGS)
        assert [int(white["pixel_values"][0, channel * 256]) for channel in range(3)] == [255, 255, 255]


def test_rgb_images_are_encoded_without_the_image_processor(image_processor, monkeypatch):
    """The image processor's own call (its keyword checks, two more copies of each image) is skipped for RGB
    images on both paths, 8-bit patches and float ones, and their values are still the processor's."""
    from qwen3vl_integrations.core.encoding import image_patches

    images = [noise(64, 96, 7), noise(32, 32, 8)]
    expected = {raw: image_processor(images, do_resize=False, return_tensors="pt",
                                     **(pixels.RAW_IMAGE_KWARGS if raw else {})) for raw in (True, False)}
    monkeypatch.setattr(type(image_processor), "__call__", lambda *a, **k: pytest.fail("the processor ran"))
    for raw in (True, False):
        patches, grid = image_patches(image_processor, images, raw)
        assert torch.equal(patches, expected[raw]["pixel_values"])
        assert torch.equal(grid, expected[raw]["image_grid_thw"])
    monkeypatch.setattr(pixels, "CUT_PATCHES", False)  # the switch for comparisons: the processor's call again
    with pytest.raises(pytest.fail.Exception, match="the processor ran"):
        image_patches(image_processor, images, True)


def test_where_pixels_are_normalised_on_the_device(image_processor, monkeypatch):
    assert pixels.normalizes_on_device(image_processor, torch.device("cuda"))
    assert not pixels.normalizes_on_device(image_processor, torch.device("cpu"))
    assert not pixels.normalizes_on_device(SimpleNamespace(patch_size=16), torch.device("cuda"))  # not torch code
    from transformers import CLIPImageProcessor  # torch code, but another patch layout

    assert not pixels.normalizes_on_device(CLIPImageProcessor(), torch.device("cuda"))
    monkeypatch.setattr(pixels, "NORMALIZE_ON_DEVICE", False)
    assert not pixels.normalizes_on_device(image_processor, torch.device("cuda"))


def test_8_bit_and_normalised_patches_are_never_joined():
    def item(dtype: torch.dtype) -> EncodedItem:
        return EncodedItem(input_ids=torch.ones(4, dtype=torch.long), mm_token_type_ids=torch.zeros(4, dtype=torch.long),
                           pixel_values=torch.zeros(4, 768, dtype=dtype), image_grid_thw=torch.tensor([[1, 2, 2]]))

    with pytest.raises(RuntimeError, match="pixel_values"):
        collate([item(torch.uint8), item(torch.float32)], pad_token_id=0)
    with pytest.raises(RuntimeError, match="pixel_values"):
        EncodedItem(**{**vars(item(torch.float32)), "leading": item(torch.uint8)}).vision("pixel_values")
    assert collate([item(torch.uint8)] * 2, pad_token_id=0)[0]["pixel_values"].dtype == torch.uint8


def test_vectors_and_scores_equal_the_host_path(tiny_embedding_path, tiny_reranker_path, media_dir, monkeypatch):
    """With the device path forced onto the CPU, batches carry 8-bit patches, the backbone gets float32 ones, and
    vectors (images, several images, image and text, image and video) and scores (image query, shared query part
    or whole pairs; image documents) equal the host path's exactly."""
    items = [{"image": media_dir / "red.png"}, "a text", {"image": [media_dir / "gray.png", media_dir / "rgba.png"]},
             {"image": media_dir / "wide.png", "text": "wide"},
             {"image": media_dir / "blue.jpg", "video": media_dir / "clip.mp4"}, {"video": media_dir / "clip.mp4"}]
    query = {"image": media_dir / "blue.jpg", "text": "a blue square"}

    def outputs() -> tuple[np.ndarray, ...]:
        emb = Qwen3VLEmbedder(str(tiny_embedding_path), batch_size=2, **TINY)
        reranker = Qwen3VLReranker(str(tiny_reranker_path), batch_size=2, **TINY)
        whole = Qwen3VLReranker(str(tiny_reranker_path), batch_size=2, share_query_prefix=False, **TINY)
        return emb.embed(items), reranker.score(query, items), whole.score(query, items)

    host = outputs()
    monkeypatch.setattr(pixels, "DEVICE_TYPES", frozenset({"cuda", "cpu"}))
    sent, received = [], []
    on_device = pixels.normalize_pixels

    def spy(image_processor, pixel_values):
        sent.append(pixel_values.dtype)
        received.append(on_device(image_processor, pixel_values).dtype)
        return on_device(image_processor, pixel_values)

    from qwen3vl_integrations.core import runner

    monkeypatch.setattr(runner, "normalize_pixels", spy)
    device = outputs()
    assert set(sent) == {torch.uint8} and set(received) == {torch.float32}
    assert len(sent) >= 8  # embedder batches, the query part's pass, pairs of both rerankers
    for got, expected in zip(device, host):
        np.testing.assert_array_equal(got, expected)


def test_normalising_reads_nothing_back(image_processor, monkeypatch):
    """On a GPU a read-back (a tensor turned into a Python value, such as a check that no std is zero) or a copy of
    host values to the device would make the host wait for every batch already queued; after the first batch the
    normalisation does neither, even once transformers' shared cache of fused means and stds (10 entries for every
    processor in the process) has dropped this processor's."""
    from test_host_reads import HostReads

    raw = image_processor([noise(64, 96, 0)], do_resize=False, return_tensors="pt",
                          **pixels.RAW_IMAGE_KWARGS)["pixel_values"]
    first = pixels.normalize_pixels(image_processor, raw)  # the fused mean and std are made here, once
    made = []
    fuse = type(image_processor)._fuse_mean_std_and_rescale_factor
    monkeypatch.setattr(type(image_processor), "_fuse_mean_std_and_rescale_factor",
                        lambda *a, **k: made.append(1) or fuse(*a, **k))
    with HostReads() as mode:
        again = pixels.normalize_pixels(image_processor, raw)
    assert not mode.places and made == [] and torch.equal(again, first)
