"""Media sources: every image and video form, remote fetching limits, and input validation.

Unit tests of core.media / core.inputs / core.vision compare decoded pixels against an independently built PIL
image; the embedding-level tests check that every form of the same picture or clip gives the same vector.
"""
from __future__ import annotations

import base64
import dataclasses
import gc
import http.server
import importlib.util
import io
import math
import struct
import sys
import threading
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qwen3vl_integrations.core.errors import Qwen3VLInputError
from qwen3vl_integrations.core.inputs import is_single_video, parse_item, parse_items
from qwen3vl_integrations.core.media import (
    MAX_JPEG_SCANS,
    FrameListSource,
    MediaPolicy,
    VideoFileSource,
    _Invalid,
    has_extension,
    jpeg_scan_count,
    probe_video_file,
    resolve_image,
    resolve_video,
)
from qwen3vl_integrations.core.vision import VisionLimits, image_tokens, prepare_image, prepare_video, video_tokens

POLICY = MediaPolicy(allow_remote=False)
TINY_LIMITS = VisionLimits(min_pixels=4 * 32 * 32, max_pixels=64 * 32 * 32, total_pixels=256 * 32 * 32, fps=1.0,
                           max_frames=8)


# ------------------------------------------------------------------------------------------ helpers


def png_bytes(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, fmt)
    return buf.getvalue()


def data_uri(data: bytes, mime: str = "image/png") -> str:
    return f"data:{mime};base64," + base64.b64encode(data).decode()


def pixels(source, limits: VisionLimits = TINY_LIMITS) -> np.ndarray:
    return np.asarray(prepare_image(source, limits, POLICY))


def expected_pixels(image: Image.Image, limits: VisionLimits = TINY_LIMITS) -> np.ndarray:
    """Resize as REFERENCE.md §6.1-6.2 says: RGB (RGBA on white), smart_resize, PIL default filter."""
    if image.mode == "RGBA":
        white = Image.new("RGB", image.size, (255, 255, 255))
        white.paste(image, mask=image.getchannel("A"))
        image = white
    else:
        image = image.convert("RGB")
    h, w = my_smart_resize(image.height, image.width, limits.min_pixels, limits.max_pixels)
    return np.asarray(image.resize((w, h)))


def my_smart_resize(h: int, w: int, min_pixels: int, max_pixels: int, factor: int = 32) -> tuple[int, int]:
    """REFERENCE.md §6.2, written out independently."""
    if max(h, w) / min(h, w) > 200:
        raise ValueError("aspect ratio")
    hb, wb = max(factor, round(h / factor) * factor), max(factor, round(w / factor) * factor)
    if hb * wb > max_pixels:
        beta = math.sqrt(h * w / max_pixels)
        hb, wb = math.floor(h / beta / factor) * factor, math.floor(w / beta / factor) * factor
    elif hb * wb < min_pixels:
        beta = math.sqrt(min_pixels / (h * w))
        hb, wb = math.ceil(h * beta / factor) * factor, math.ceil(w * beta / factor) * factor
    return hb, wb


def png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header declares width x height, with a bogus 1-byte image body (never decodable)."""
    def chunk(kind: bytes, body: bytes) -> bytes:
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"\x00") + chunk(b"IEND", b"")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files from the media folder, plus /nolength/<name> (no Content-Length), /slow/<name>,
    /trickle/<name> (a few bytes at a time, each within any read timeout, for 30 s), /trickled-headers/<name> (the
    same in the headers) and /hops/<n>/<name> (n redirects, each 0.3 s late, then the file)."""

    def log_message(self, *args):  # keep test output clean
        pass

    def _trickle(self, piece: bytes) -> None:
        """`piece` every 0.2 s for 30 s, or until the client gives up."""
        try:
            for _ in range(150):
                self.wfile.write(piece)
                self.wfile.flush()
                time.sleep(0.2)
        except OSError:  # the client gave up
            pass
        self.close_connection = True

    def do_GET(self):
        if self.path.startswith("/trickled-headers/"):
            self.wfile.write(b"HTTP/1.1 200 OK\r\n")
            return self._trickle(b"X-Slow: a\r\n")
        if self.path.startswith("/hops/"):
            hops, _, name = self.path[len("/hops/"):].partition("/")
            time.sleep(0.3)
            self.send_response(302)
            self.send_header("Location", f"/hops/{int(hops) - 1}/{name}" if int(hops) > 1 else f"/{name}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        if self.path.startswith("/trickle/"):
            self.send_response(200)
            self.end_headers()
            return self._trickle(b"\x89PNG" * 4)
        if self.path.startswith("/slow/"):
            time.sleep(3)
            self.path = "/" + self.path[len("/slow/"):]
        if self.path.startswith("/nolength/"):
            target = Path(self.directory) / self.path[len("/nolength/"):]
            data = target.read_bytes()
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.end_headers()
            self.wfile.write(data)
            self.close_connection = True
            return
        return super().do_GET()


@pytest.fixture(scope="module")
def http_base(media_dir):
    """A local HTTP server on 127.0.0.1 serving media_dir, in a background thread."""
    import functools

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Handler, directory=str(media_dir)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    with pytest.MonkeyPatch.context() as mp:  # never route the loopback through a proxy
        for name in ("NO_PROXY", "no_proxy"):
            mp.setenv(name, "127.0.0.1,localhost")
        yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


@pytest.fixture(scope="module")
def frame_dir(tmp_path_factory):
    """Four 64x48 frames saved as PNG files, and the same frames as PIL images."""
    folder = tmp_path_factory.mktemp("frames")
    frames = []
    for i in range(4):
        frame = Image.new("RGB", (64, 48), (60 * i, 255 - 60 * i, 90))
        frame.paste((255, 255, 255), (8 * i, 10, 8 * i + 12, 30))
        frame.save(folder / f"f{i}.png")
        frames.append(frame)
    return folder, frames


# ------------------------------------------------------------------------------------------ images: unit


def test_smart_resize_table_reference_bounds():
    """REFERENCE.md §6.2 table (reference bounds 4,096 .. 1,843,200 px)."""
    limits = VisionLimits()
    table = [((16, 16), 4), ((80, 48), 4), ((100, 100), 9), ((224, 224), 49), ((448, 448), 196),
             ((512, 512), 256), ((1920, 1080), 1736), ((4000, 3000), 1728)]
    for (w, h), tokens in table:
        assert image_tokens(w, h, limits) == tokens, (w, h)
        hh, ww = my_smart_resize(h, w, limits.min_pixels, limits.max_pixels)
        assert (hh // 32) * (ww // 32) == tokens


@pytest.mark.parametrize(("size", "resized"), [((16, 16), (64, 64)), ((80, 48), (64, 64)), ((100, 100), (96, 96)),
                                               ((1920, 1080), (1792, 992))])
def test_prepare_image_resized_size(size, resized):
    image = Image.new("RGB", size, (1, 2, 3))
    assert prepare_image(resolve_image(image, POLICY), VisionLimits(), POLICY).size == resized


def test_every_image_form_decodes_to_the_same_pixels(media_dir):
    path = media_dir / "red.png"
    data = path.read_bytes()
    pil = Image.open(path).convert("RGB")
    want = expected_pixels(pil)
    forms = {
        "str path": str(path),
        "Path": path,
        "file:// URL": path.as_uri(),
        "data URI": data_uri(data),
        "bytes": data,
        "bytearray": bytearray(data),
        "BytesIO": io.BytesIO(data),
        "PIL": pil,
        "numpy uint8": np.asarray(pil),
        "numpy float [0,1]": np.asarray(pil).astype(np.float32) / 255.0,
    }
    for name, form in forms.items():
        got = pixels(resolve_image(form, POLICY))
        assert got.shape == want.shape == (128, 160, 3), name
        assert np.array_equal(got, want), name


def test_bytesio_read_position_does_not_matter(media_dir):
    data = (media_dir / "red.png").read_bytes()
    stream = io.BytesIO(data)
    stream.read(10)  # a stream somebody already read from
    assert np.array_equal(pixels(resolve_image(stream, POLICY)), pixels(resolve_image(data, POLICY)))


def test_rgba_is_composited_on_white(media_dir):
    rgba = Image.open(media_dir / "rgba.png")
    assert rgba.mode == "RGBA"
    got = pixels(resolve_image(media_dir / "rgba.png", POLICY))
    assert np.array_equal(got, expected_pixels(rgba))
    # The transparent corners are white, not black (which a plain convert("RGB") would give).
    assert got[0, 0].tolist() == [255, 255, 255]
    assert not np.array_equal(got, expected_pixels(rgba.convert("RGB")))
    # An RGBA numpy array behaves like the RGBA file.
    assert np.array_equal(pixels(resolve_image(np.asarray(rgba), POLICY)), got)


def test_grayscale_image_becomes_rgb(media_dir):
    gray = Image.open(media_dir / "gray.png")
    assert gray.mode == "L"
    got = pixels(resolve_image(str(media_dir / "gray.png"), POLICY))
    assert got.ndim == 3 and got.shape[-1] == 3
    assert np.array_equal(got, expected_pixels(gray.convert("RGB")))
    assert np.array_equal(pixels(resolve_image(np.asarray(gray), POLICY)), got)  # HxW array


def test_resolve_image_reads_header_only(media_dir):
    source = resolve_image(str(media_dir / "wide.png"), POLICY)
    assert source.size == (300, 100)
    assert source.image is None and source.path == media_dir / "wide.png"


@pytest.mark.parametrize(
    ("value", "cause"),
    [
        ("/definitely/not/here.png", "not found"),
        ("file:///definitely/not/here.png", "not found"),
        (Path("/definitely/not/here.png"), "not found"),
        ("", "empty"),
        (b"", "empty"),
        (b"not an image at all", "unreadable"),
        ("data:image/png;base64,!!!!", "empty image data|unreadable|invalid base64"),
        ("data:image/png,rawdata", "base64"),
        ("ftp://example.com/a.png", "unsupported URL scheme"),
        ("s3://bucket/a.png", "unsupported URL scheme"),
        (12, "unsupported image type"),
        (object(), "unsupported image type"),
        (np.zeros((4, 4, 3), np.int64), "uint8"),
        (np.zeros((2, 4, 4, 3), np.uint8), "shape"),
        (np.full((4, 4, 3), 2.0, np.float32), "uint8"),
    ],
)
def test_bad_images(value, cause):
    with pytest.raises(_Invalid, match=cause):
        resolve_image(value, POLICY)


def test_images_without_pixels_and_paths_that_are_data(media_dir):
    """An empty crop divided by zero in the resize rule (the whole call crashed); a string too long for a file name
    raised OSError with the whole string (megabytes of base64) as its message."""
    page = Image.new("RGB", (100, 80))
    for empty in (page.crop((50, 10, 50, 60)), np.zeros((0, 5, 3), np.uint8), [page.crop((0, 0, 10, 0))]):
        with pytest.raises(_Invalid, match=r"image of \d+x\d+ pixels has no pixels"):
            (resolve_video if isinstance(empty, list) else resolve_image)(empty, POLICY)
    data = base64.b64encode((media_dir / "blue.jpg").read_bytes()).decode()
    with pytest.raises(_Invalid, match=r"not a usable path .*\.\.\. \(\d+ characters\); it looks like base64") as info:
        resolve_image(data, POLICY)
    assert len(str(info.value)) < 400
    with pytest.raises(_Invalid, match="not a usable path"):
        resolve_video("x" * 300, POLICY)


def test_sixteen_bit_grayscale_is_scaled_not_clipped(tmp_path):
    """A 16-bit PNG (scans, medical and scientific images) went through the RGB conversion as upstream does, which
    clips it: 99.6% of its pixels came out white."""
    ramp = np.linspace(0, 65535, 120 * 160).reshape(120, 160).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "ramp16.png")
    eight_bit = Image.fromarray((ramp / 257.0).round().astype(np.uint8), mode="L")
    want = expected_pixels(eight_bit)
    assert Image.open(tmp_path / "ramp16.png").mode == "I;16"
    for form in (tmp_path / "ramp16.png", (tmp_path / "ramp16.png").read_bytes(), Image.open(tmp_path / "ramp16.png"),
                 ramp, ramp[..., None]):
        assert np.array_equal(pixels(resolve_image(form, POLICY)), want), type(form)
    assert (pixels(resolve_image(ramp, POLICY)) == 255).all(-1).mean() < 0.01


def test_local_files_can_be_refused_or_kept_to_one_folder(media_dir, tmp_path):
    """A service whose users send strings would otherwise read any file they name (and tell them which exist)."""
    red = media_dir / "red.png"
    data = red.read_bytes()
    closed = MediaPolicy(allow_remote=False, local_files=False)
    for form in (str(red), red, red.as_uri(), "/etc/passwd", "/no/such/file.png"):
        with pytest.raises(_Invalid, match=r"^local files are disabled \(allow_local_files=False\)"):
            resolve_image(form, closed)
    assert resolve_image(data, closed).size == resolve_image(data_uri(data, "image/png"), closed).size == (160, 120)

    inside = tmp_path / "allowed"
    inside.mkdir()
    (inside / "red.png").write_bytes(data)
    (inside / "link.png").symlink_to(red)  # inside by name, outside once followed
    folder = MediaPolicy(allow_remote=False, local_files=inside.resolve())
    assert resolve_image(inside / "red.png", folder).size == (160, 120)
    assert resolve_image((inside / "red.png").as_uri(), folder).size == (160, 120)
    for form in (red, inside / "link.png", inside / ".." / "allowed" / ".." / "x.png", "/etc/passwd"):
        with pytest.raises(_Invalid, match="outside the folder of allow_local_files"):
            resolve_image(form, folder)
    with pytest.raises(_Invalid, match="^frame 0: local files are disabled"):
        resolve_video([str(red), str(red)], closed)


def test_bad_image_files(media_dir):
    with pytest.raises(_Invalid, match="unreadable image"):
        resolve_image(media_dir / "broken.png", POLICY)
    with pytest.raises(_Invalid, match="unreadable image"):
        resolve_image(str(media_dir / "doc.txt"), POLICY)
    with pytest.raises(_Invalid, match="not a regular file"):
        resolve_image(str(media_dir), POLICY)


@pytest.mark.parametrize("kind", ["TIFF", "WEBP", "GIF", "BMP", "JPEG2000", "PPM", "TGA"])
def test_common_image_formats_are_read(kind):
    buffer = io.BytesIO()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(buffer, kind)
    assert resolve_image(buffer.getvalue(), POLICY).size == (40, 30)


def test_icons_are_not_read(tmp_path):
    """An icon's directory may name a 16x16 image while Pillow decodes the large PNG inside it within `Image.open`,
    before the pixel cap could refuse it (a 687 KB icon holding 13,300 x 13,300 pixels: 1.7 s and 678 MB): icons
    (and the other formats without a trustworthy header) are not read at all."""
    inside = io.BytesIO()
    Image.new("RGBA", (1200, 1200)).save(inside, "PNG", compress_level=9)
    png = inside.getvalue()
    icon = struct.pack("<HHH", 0, 1, 1) + struct.pack("<BBBBHHII", 16, 16, 0, 0, 1, 32, len(png), 22) + png
    with pytest.raises(_Invalid, match=r"unreadable image \(not one of JPEG, .*PNG"):
        resolve_image(icon, MediaPolicy(allow_remote=False, max_image_pixels=1_000_000))
    assert not is_single_video([icon, icon])  # not taken for a frame list either


def test_pixel_cap_is_checked_before_decoding(media_dir):
    # Our own cap: the header of red.png (160x120 = 19,200 px) is enough to refuse it.
    with pytest.raises(_Invalid, match="max_image_pixels"):
        resolve_image(media_dir / "red.png", MediaPolicy(allow_remote=False, max_image_pixels=10_000))
    # A header declaring 12,000 x 10,000 (120 Mpx, above the default 100 Mpx cap) with a 1-byte body:
    # refused from the header (decoding would fail with a different message).
    start = time.perf_counter()
    with pytest.raises(_Invalid, match="max_image_pixels"):
        resolve_image(png_header_only(12_000, 10_000), POLICY)
    # 40,000 x 40,000: Pillow's own bomb guard fires first; still a clean refusal.
    with pytest.raises(_Invalid, match="decompression bomb|max_image_pixels"):
        resolve_image(png_header_only(40_000, 40_000), POLICY)
    assert time.perf_counter() - start < 5
    # A PIL image given directly is accepted whatever the cap (it is decoded already) ...
    assert resolve_image(Image.new("RGB", (200, 200)), MediaPolicy(max_image_pixels=100)).size == (200, 200)


def progressive_jpeg(scans: int | None = None, size: int = 32) -> bytes:
    """A progressive JPEG (libjpeg's script: 10 scans), its last scan repeated to make `scans` in all. A decoder
    runs a repeated refinement scan as another pass (libjpeg warns of a bogus progression and goes on)."""
    buffer = io.BytesIO()
    pixels = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(buffer, "JPEG", progressive=True)
    data = buffer.getvalue()
    if scans is None:
        return data
    last = data.rindex(b"\xff\xda")  # the last scan runs from its marker to the end of image (FF D9)
    return data[:-2] + data[last:-2] * (scans - data.count(b"\xff\xda")) + data[-2:]


def test_progressive_jpegs_of_too_many_scans_are_refused_before_decoding(tmp_path):
    """Each scan is another decoding pass over the image, and a scan can be a few bytes: more than MAX_JPEG_SCANS
    are refused from the file's bytes, named, before any pixel is decoded; libjpeg's own 10 scans, and the limit
    itself, are read."""
    assert MAX_JPEG_SCANS == 256
    plain = progressive_jpeg()
    assert jpeg_scan_count(None, plain) == 10 and Image.open(io.BytesIO(plain)).info.get("progressive")
    assert resolve_image(plain, POLICY).size == (32, 32)
    at_limit = progressive_jpeg(MAX_JPEG_SCANS)
    assert resolve_image(at_limit, POLICY).open(POLICY).size == (32, 32)  # decodes
    crafted = progressive_jpeg(MAX_JPEG_SCANS + 1)
    (tmp_path / "crafted.jpg").write_bytes(crafted)
    for source in (crafted, tmp_path / "crafted.jpg"):
        with pytest.raises(_Invalid, match=f"progressive JPEG of {MAX_JPEG_SCANS + 1} scans \\(at most 256"):
            resolve_image(source, POLICY)
    items, errors = parse_items(["ok", {"image": crafted}], POLICY)
    assert items[1] is None and [e.index for e in errors] == [1] and "scans" in str(errors[0])
    # A file is read in chunks of 1 MiB: a marker across two of them is counted once.
    (tmp_path / "split").write_bytes(b"\0" * (2**20 - 1) + b"\xff\xda" + b"\0" * 10 + b"\xff\xda")
    assert jpeg_scan_count(tmp_path / "split", None) == 2


def test_file_urls_of_windows_paths(monkeypatch):
    """On Windows `Path.as_uri()` writes `file:///C:/...`: plain unquoting gave '/C:/Users/a b/x.png', a path with no
    drive (file not found). Windows' own converter (nturl2path, what urllib.request uses there) stands in here."""
    import nturl2path

    from qwen3vl_integrations.core import media

    monkeypatch.setattr(media.urllib.request, "url2pathname", nturl2path.url2pathname)
    assert media.file_url_path("file:///C:/Users/a%20b/x.png") == "C:\\Users\\a b\\x.png"
    assert media.file_url_path("file://localhost/D:/photos/%E7%8C%AB.png") == "D:\\photos\\\u732b.png"
    assert media.file_url_path("file://images/cat.jpg") == "images/cat.jpg"  # the reference's relative form
    assert media.file_url_path("file:///a:b:c.png") == "/a:b:c.png"  # not a drive: no file of Windows either


def test_file_urls(media_dir, tmp_path, monkeypatch):
    image = Image.new("RGB", (40, 30), (5, 6, 7))
    (tmp_path / "sub dir").mkdir()
    image.save(tmp_path / "sub dir" / "pic.png")
    want = expected_pixels(image)
    # RFC 8089 form, percent-encoded (what Path.as_uri() writes), and the localhost form.
    assert np.array_equal(pixels(resolve_image((tmp_path / "sub dir" / "pic.png").as_uri(), POLICY)), want)
    assert np.array_equal(pixels(resolve_image(f"file://localhost{tmp_path}/sub dir/pic.png", POLICY)), want)
    # "file://" + a relative path, as the reference builds it: relative to the working directory, never
    # "/pic.png" on a host called "sub dir".
    monkeypatch.chdir(tmp_path)
    assert np.array_equal(pixels(resolve_image("file://sub dir/pic.png", POLICY)), want)
    with pytest.raises(_Invalid, match="not found: 'nothing/pic.png'"):
        resolve_image("file://nothing/pic.png", POLICY)
    # "file://" + a path whose name holds '#', '?' or '%', as upstream builds it (and opens it)
    for name in ("photo #1.png", "what?.png", "scan%41.png"):
        image.save(tmp_path / name)
        assert np.array_equal(pixels(resolve_image(f"file://{tmp_path}/{name}", POLICY)), want), name


def test_video_frame_size_is_capped(media_dir):
    with pytest.raises(_Invalid, match="96x64 pixels exceed max_image_pixels=5000"):
        resolve_video(media_dir / "clip.mp4", MediaPolicy(allow_remote=False, max_image_pixels=5000))
    with pytest.raises(_Invalid, match="frame 1: .*max_image_pixels"):  # frames given as files are images
        resolve_video([Image.new("RGB", (10, 10)), media_dir / "red.png"],
                      MediaPolicy(allow_remote=False, max_image_pixels=5000))


def test_truncated_image_fails_at_decoding(media_dir):
    data = (media_dir / "red.png").read_bytes()
    source = resolve_image(data[: len(data) // 2], POLICY)  # the header is intact
    with pytest.raises(Exception):
        prepare_image(source, TINY_LIMITS, POLICY)


def test_aspect_ratio_over_200_is_refused():
    with pytest.raises(_Invalid, match="aspect ratio"):
        image_tokens(402, 2, TINY_LIMITS)
    assert image_tokens(400, 2, TINY_LIMITS) > 0


def test_a_video_too_narrow_for_its_share_of_total_pixels_is_refused():
    """The same for video frames: 64 frames of 12800x64 under total_pixels=1,000,000 shrank to 5216x0 each, counted
    as no visual tokens, and decoding failed once the model work had begun."""
    limits = dataclasses.replace(TINY_LIMITS, total_pixels=1_000_000, max_frames=64)
    with pytest.raises(_Invalid, match="12800x64 frames shrink to 5216x0 pixels under total_pixels=1000000 shared "
                                       "by 64 frames"):
        video_tokens(VideoFileSource(640, 10.0, 12800, 64), None, None, limits)
    assert video_tokens(VideoFileSource(640, 10.0, 12800, 64), None, 8, limits) > 0


def test_an_image_too_narrow_for_max_pixels_is_refused_with_the_limit_that_keeps_it():
    """smart_resize floors a shrunk image's sides to the grid: under max_pixels below 6400 * 32 * 32 / 32 a 6400x32
    strip's height becomes 0 (decoding then failed on a 0-pixel size, naming neither cause nor remedy)."""
    with pytest.raises(_Invalid, match="6400x32 image shrinks to 3616x0 pixels under max_pixels=65536.*at least "
                                       "204800"):
        image_tokens(6400, 32, TINY_LIMITS)
    assert image_tokens(6400, 32, dataclasses.replace(TINY_LIMITS, max_pixels=204_800)) == 200


# ------------------------------------------------------------------------------------------ remote


def test_http_image(http_base, media_dir):
    policy = MediaPolicy(allow_remote=True, timeout=5)
    source = resolve_image(f"{http_base}/red.png", policy)
    assert source.data is None and source.path.read_bytes() == (media_dir / "red.png").read_bytes()
    assert np.array_equal(pixels(source), expected_pixels(Image.open(media_dir / "red.png")))
    # Fetched content waits on disk, not in memory (all of a call's inputs are resolved before the model runs:
    # 500 URLs of 1 MiB held 516 MiB), and goes when its source does.
    fetched = str(source.path)
    video = resolve_video(f"{http_base}/clip.mp4", policy)
    assert video.data is None and video.path.read_bytes() == (media_dir / "clip.mp4").read_bytes()
    del source
    gc.collect()
    assert not Path(fetched).exists()
    # Query strings are fine.
    assert resolve_image(f"{http_base}/red.png?x=1", policy).size == (160, 120)


def test_http_failures(http_base):
    policy = MediaPolicy(allow_remote=True, timeout=5)
    with pytest.raises(_Invalid, match="could not fetch.*404"):
        resolve_image(f"{http_base}/missing.png", policy)
    with pytest.raises(_Invalid, match="could not fetch"):
        resolve_image("http://127.0.0.1:9/nothing.png", policy)  # port 9 (discard): connection refused
    with pytest.raises(_Invalid, match="allow_remote=False"):
        resolve_image(f"{http_base}/red.png", MediaPolicy(allow_remote=False))
    with pytest.raises(_Invalid, match="allow_remote=False"):
        resolve_video(f"{http_base}/clip.mp4", MediaPolicy(allow_remote=False))


def test_http_byte_cap(http_base):
    small = MediaPolicy(allow_remote=True, timeout=5, max_remote_bytes=1000)
    with pytest.raises(_Invalid, match="cap"):  # declared Content-Length
        resolve_image(f"{http_base}/blue.jpg", small)
    with pytest.raises(_Invalid, match="cap"):  # no Content-Length: counted while streaming
        resolve_image(f"{http_base}/nolength/blue.jpg", small)
    assert resolve_image(f"{http_base}/nolength/blue.jpg", MediaPolicy(timeout=5)).size == (224, 224)


def test_http_timeout(http_base):
    start = time.perf_counter()
    with pytest.raises(_Invalid, match="could not fetch"):
        resolve_image(f"{http_base}/slow/red.png", MediaPolicy(allow_remote=True, timeout=0.5))
    assert time.perf_counter() - start < 2.5
    # a server that trickles bytes passes every per-read timeout: the whole file has a deadline (4 x 0.5 s);
    # before, the call lasted as long as the server kept sending (30 s here)
    start = time.perf_counter()
    with pytest.raises(_Invalid, match=r"took over 2 s to download .*remote_timeout=0.5 s per read"):
        resolve_image(f"{http_base}/trickle/red.png", MediaPolicy(allow_remote=True, timeout=0.5))
    assert time.perf_counter() - start < 10


@pytest.mark.parametrize("path", ["trickled-headers/red.png", "hops/12/red.png"])
def test_http_deadline_covers_headers_and_redirects(http_base, path):
    """The whole fetch has its deadline, not only the body: headers sent a line at a time, or a chain of slow
    redirects, each read within the per-read timeout, held the call for as long as the server liked (30 s and
    3.6 s here; days, for a hostile server)."""
    start = time.perf_counter()
    with pytest.raises(_Invalid, match=r"took over 2 s to download .*redirects included"):
        resolve_image(f"{http_base}/{path}", MediaPolicy(allow_remote=True, timeout=0.5))
    assert time.perf_counter() - start < 3
    assert resolve_image(f"{http_base}/hops/2/red.png", MediaPolicy(timeout=5)).size == (160, 120)


@pytest.fixture
def https_trickling_headers(tmp_path, monkeypatch):
    """An HTTPS server on 127.0.0.1 (its self-signed certificate trusted through REQUESTS_CA_BUNDLE) that sends a
    header line every 0.2 s for 30 s."""
    import shutil
    import socket
    import ssl
    import subprocess

    openssl = shutil.which("openssl")
    if openssl is None:
        pytest.skip("no openssl to make a certificate")
    cert, key = tmp_path / "cert.pem", tmp_path / "key.pem"
    subprocess.run([openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1", "-subj", "/CN=localhost",
                    "-addext", "subjectAltName=DNS:localhost,IP:127.0.0.1", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    listener = socket.create_server(("127.0.0.1", 0))

    def answer(connection: socket.socket) -> None:
        try:
            with context.wrap_socket(connection, server_side=True) as tls:
                tls.recv(4096)
                tls.sendall(b"HTTP/1.1 200 OK\r\n")
                for line in range(150):
                    time.sleep(0.2)
                    tls.sendall(b"X-Slow-%d: a\r\n" % line)
        except OSError:  # the client gave up
            pass

    def serve() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:  # closed
                return
            threading.Thread(target=answer, args=(connection,), daemon=True).start()

    threading.Thread(target=serve, daemon=True).start()
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", str(cert))
    for name in ("NO_PROXY", "no_proxy"):
        monkeypatch.setenv(name, "127.0.0.1,localhost")
    yield f"https://localhost:{listener.getsockname()[1]}"
    listener.close()


def test_https_deadline_covers_the_headers(https_trickling_headers):
    """TLS wraps the socket a connection opens and detaches it: shutting that one down did nothing, and headers
    trickled over HTTPS held the call for as long as the server liked."""
    start = time.perf_counter()
    with pytest.raises(_Invalid, match=r"took over 2 s to download"):
        resolve_image(f"{https_trickling_headers}/red.png", MediaPolicy(allow_remote=True, timeout=0.5))
    assert time.perf_counter() - start < 3


def test_a_socks_proxy_keeps_its_own_connections():
    """Plain urllib3 pools (direct, or through an HTTP proxy) record their sockets for the deadline; a SOCKS proxy's
    pools hold connections of another kind, and replacing them failed every fetch through such a proxy."""
    from qwen3vl_integrations.core import fetching

    adapter = fetching._RecordingAdapter()
    assert adapter.poolmanager.pool_classes_by_scheme is fetching._RECORDED_POOLS
    assert adapter.proxy_manager_for("http://127.0.0.1:9").pool_classes_by_scheme is fetching._RECORDED_POOLS
    socks_pools = {"http": object, "https": object}
    stand_in = type("SOCKSProxyManager", (), {"pool_classes_by_scheme": socks_pools})()
    assert fetching._record_connections_of(stand_in).pool_classes_by_scheme is socks_pools
    if importlib.util.find_spec("socks") is not None:  # PySocks: requests' SOCKS support
        manager = adapter.proxy_manager_for("socks5://127.0.0.1:9")
        assert manager.pool_classes_by_scheme is not fetching._RECORDED_POOLS


def test_failed_fetches_leave_no_temporary_file(tmp_path, monkeypatch):
    """A refused connection's exception held the fetch's frame (and so its temporary file) until the collector ran."""
    import tempfile

    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    unused = socket_port_nobody_listens_on()
    gc.disable()
    try:
        with pytest.raises(_Invalid, match="could not fetch"):
            resolve_image(f"http://127.0.0.1:{unused}/x.png", MediaPolicy(allow_remote=True, timeout=1))
        assert list(tmp_path.iterdir()) == []
    finally:
        gc.enable()


def socket_port_nobody_listens_on() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


# ------------------------------------------------------------------------------------------ videos: unit


def test_video_file_forms_probe_the_same(http_base, media_dir):
    clip = media_dir / "clip.mp4"
    data = clip.read_bytes()
    policy = MediaPolicy(allow_remote=True, timeout=5)
    for form in (str(clip), clip, clip.as_uri(), data, io.BytesIO(data), f"{http_base}/clip.mp4",
                 data_uri(data, "video/mp4")):
        source = resolve_video(form, policy)
        assert isinstance(source, VideoFileSource)
        assert (source.total_frames, source.fps, source.width, source.height) == (16, 8.0, 96, 64)


def test_frame_list_forms(frame_dir):
    folder, frames = frame_dir
    paths = sorted(folder.glob("f*.png"))
    arrays = [np.asarray(f) for f in frames]
    forms = {
        "PIL list": frames,
        "str paths": [str(p) for p in paths],
        "Path list": paths,
        "file:// list": [p.as_uri() for p in paths],
        "data URI list": [data_uri(p.read_bytes()) for p in paths],
        "array list": arrays,
        "[T,H,W,3] array": np.stack(arrays),
        "bytes list": [p.read_bytes() for p in paths],
        "BytesIO list": [io.BytesIO(p.read_bytes()) for p in paths],
    }
    want = prepare_video(resolve_video(frames, POLICY), None, None, TINY_LIMITS, POLICY).frames
    for name, form in forms.items():
        parsed = parse_item({"video": form}, POLICY)
        assert len(parsed.videos) == 1, name
        assert isinstance(parsed.videos[0], FrameListSource), name
        got = prepare_video(parsed.videos[0], None, None, TINY_LIMITS, POLICY).frames
        assert torch_equal(got, want), name


def torch_equal(a, b) -> bool:
    return tuple(a.shape) == tuple(b.shape) and bool((a == b).all())


@pytest.mark.parametrize(
    ("value", "count"),
    [
        ("a.mp4", 1),
        (["a.mp4", "b.mp4"], 2),
        ([], 0),
        ([["x.png", "y.png"], ["z.png"]], 2),
        (["x.png", "y.png"], 1),
        (["https://h/x.PNG?raw=1", "y.jpg"], 1),
        (["https://h/x.webp?sig=1"], 1),
        (np.zeros((2, 8, 8, 3), np.uint8), 1),
        ([np.zeros((2, 8, 8, 3), np.uint8), np.zeros((2, 8, 8, 3), np.uint8)], 2),
    ],
)
def test_is_single_video_rule(value, count):
    """REFERENCE.md §3 step 3: one video or a list of videos."""
    if count == 0:
        assert not is_single_video(value)
        return
    assert is_single_video(value) == (count == 1)


def test_has_extension_ignores_query_and_case():
    assert has_extension("https://h/a/B.JPG?x=1.mp4", (".jpg",))
    assert not has_extension("https://h/a/b.mp4?x=1.jpg", (".jpg",))
    assert has_extension("frame.Png", (".png",))


def test_frame_list_downsampled_to_constructor_max_frames(frame_dir):
    folder, frames = frame_dir
    twelve = frames * 3  # 12 frames, constructor max_frames=8
    video = prepare_video(resolve_video(twelve, POLICY), None, 2, TINY_LIMITS, POLICY)  # per-item max_frames ignored
    assert video.frames.shape[0] == 8
    # np.linspace(0, 11, 8, dtype=int) -> [0, 1, 3, 4, 6, 7, 9, 11] (REFERENCE.md §3 step 6)
    picked = [twelve[i] for i in np.linspace(0, 11, 8, dtype=int)]
    assert torch_equal(video.frames, prepare_video(resolve_video(picked, POLICY), None, None, TINY_LIMITS,
                                                   POLICY).frames)
    # An odd count is padded to even by repeating the last frame, with 2-fps fake metadata.
    odd = prepare_video(resolve_video(frames[:3], POLICY), None, None, TINY_LIMITS, POLICY)
    assert odd.frames.shape[0] == 4 and torch_equal(odd.frames[3], odd.frames[2])
    assert odd.metadata["fps"] == 2.0 and list(odd.metadata["frames_indices"]) == list(range(4))


def test_a_frame_list_resolves_only_its_sampled_frames(frame_dir):
    """A list of 2,000 frame URLs was fetched whole, one after another, for the 64 frames used: only the frames the
    sampling keeps are fetched and read now (the others are never looked at), and a bad one is named by its place
    in the list."""
    folder, frames = frame_dir
    policy = MediaPolicy(allow_remote=False, max_frames=4)
    given = ["/never/read.png"] * 20
    for position in (0, 6, 12, 19):  # np.linspace(0, 19, 4, dtype=int)
        given[position] = frames[position % len(frames)]
    source = resolve_video(given, policy)
    assert len(source.frames) == 4
    limits = VisionLimits(max_frames=4, total_pixels=TINY_LIMITS.total_pixels)
    assert torch_equal(prepare_video(source, None, None, limits, policy).frames,
                       prepare_video(resolve_video([given[p] for p in (0, 6, 12, 19)], POLICY), None, None, limits,
                                     POLICY).frames)
    given[19] = "/no/such/frame.png"
    with pytest.raises(_Invalid, match=r"^frame 19: .*not found"):
        resolve_video(given, policy)


def test_a_video_array_converts_only_its_sampled_frames(monkeypatch):
    """Every frame of a [T, H, W, 3] array became a PIL image though max_frames of them are used (a 396 MiB array
    cost 600 MB more)."""
    from qwen3vl_integrations.core import media

    rng = np.random.default_rng(0)
    video = rng.integers(0, 256, (40, 48, 64, 3), dtype=np.uint8)
    converted = []
    to_image = media._pil_from_array
    monkeypatch.setattr(media, "_pil_from_array", lambda array: converted.append(1) or to_image(array))
    source = resolve_video(video, POLICY)
    assert converted == []  # checked, not converted
    limits = VisionLimits(max_frames=8, total_pixels=TINY_LIMITS.total_pixels)
    lazy = prepare_video(source, None, None, limits, POLICY)
    assert len(converted) == 8
    eager = prepare_video(resolve_video([Image.fromarray(frame) for frame in video], POLICY), None, None, limits,
                          POLICY)
    assert torch_equal(lazy.frames, eager.frames)
    assert torch_equal(prepare_video(resolve_video(video / 255.0, POLICY), None, None, limits, POLICY).frames,
                       lazy.frames)  # floats in [0, 1] as for images
    bad = video / 255.0
    bad[30, 1, 1, 0] = np.nan
    with pytest.raises(_Invalid, match="NaN"):
        resolve_video(bad, POLICY)
    with pytest.raises(_Invalid, match="no pixels"):
        resolve_video(np.zeros((3, 0, 4, 3), np.uint8), POLICY)


def test_frames_must_share_a_size(frame_dir):
    from qwen3vl_integrations.core.vision import video_tokens

    folder, frames = frame_dir
    close = resolve_video([frames[0], frames[1].resize((70, 50))], POLICY)  # both become 192x128 in qwen-vl-utils
    assert video_tokens(close, None, None, TINY_LIMITS) > 0
    assert prepare_video(close, None, None, TINY_LIMITS, POLICY).frames.shape[0] == 2
    far = resolve_video([frames[0], Image.new("RGB", (300, 60))], POLICY)
    with pytest.raises(_Invalid, match="one size"):
        video_tokens(far, None, None, TINY_LIMITS)
    with pytest.raises(RuntimeError):  # what would happen later otherwise
        prepare_video(far, None, None, TINY_LIMITS, POLICY)
    # Only the frames that are kept count (12 frames, max_frames=8: frames 2, 5 and 8 are dropped).
    mixed = [frames[0]] * 12
    for dropped in (2, 5, 8):
        mixed[dropped] = Image.new("RGB", (300, 60))
    assert video_tokens(resolve_video(mixed, POLICY), None, None, TINY_LIMITS) > 0


def test_video_file_sampling_matches_qwen_vl_utils(media_dir):
    """Frames sampled from a file: same indices, metadata and pixels as qwen-vl-utils' decord reader when the
    entry carries total_pixels (our deliberate fix, REFERENCE.md §11 #2)."""
    pytest.importorskip("decord")
    from qwen_vl_utils import fetch_video

    clip = media_dir / "clip.mp4"
    ours = prepare_video(resolve_video(clip, POLICY), 4.0, None, TINY_LIMITS, POLICY)
    (theirs, metadata), _ = fetch_video(
        {"video": str(clip), "fps": 4.0, "max_frames": 8, "total_pixels": TINY_LIMITS.total_pixels},
        image_patch_size=16, return_video_sample_fps=True, return_video_metadata=True)
    assert list(ours.metadata["frames_indices"]) == list(metadata["frames_indices"]) == [0, 2, 4, 6, 9, 11, 13, 15]
    assert ours.metadata["fps"] == pytest.approx(metadata["fps"])
    assert torch_equal(ours.frames, theirs)


def test_video_file_without_decord_uses_pyav(media_dir, monkeypatch):
    """The PyAV fallback (platforms without decord) samples the same frames at the same size."""
    clip = media_dir / "clip.mp4"
    source = resolve_video(clip, POLICY)
    reference = prepare_video(source, 4.0, None, TINY_LIMITS, POLICY)
    monkeypatch.setitem(sys.modules, "decord", None)  # `import decord` now raises ImportError
    fallback = prepare_video(source, 4.0, None, TINY_LIMITS, POLICY)
    assert fallback.metadata["video_backend"] == "pyav"
    assert list(fallback.metadata["frames_indices"]) == list(reference.metadata["frames_indices"])
    assert fallback.frames.shape == reference.frames.shape
    # Two decoders may convert YUV to RGB slightly differently, never by much.
    assert float((fallback.frames - reference.frames).abs().mean()) < 1.0  # a frame off by one: about 6


def _clip(path: Path, container: str, rotation: int = 0, claimed_seconds: float | None = None) -> Path:
    """16 frames of 96x64 at 8 fps (a red band on the left, blue rising), optionally with a display rotation or a
    container duration that is not the real one."""
    import av

    with av.open(str(path), "w", format=container) as out:
        stream = out.add_stream("libx264", rate=8)
        stream.width, stream.height, stream.pix_fmt = 96, 64, "yuv420p"
        if rotation:
            stream.set_display_rotation(rotation)
        for i in range(16):
            frame = np.zeros((64, 96, 3), np.uint8)
            frame[:, :32] = (255, 0, 0)
            frame[..., 2] = 10 * i
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    if claimed_seconds is not None:  # rewrite the Matroska Duration element (float, in ms) of the header
        data = bytearray(path.read_bytes())
        at = data.index(b"\x44\x89\x88")  # Duration ID, 8-byte float
        data[at + 3:at + 11] = struct.pack(">d", claimed_seconds * 1000)
        path.write_bytes(bytes(data))
    return path


@pytest.mark.parametrize("rotation", [90, 180, 270])
def test_pyav_turns_a_rotated_video_upright_as_decord_does(tmp_path, monkeypatch, rotation):
    """A phone's portrait video carries a display rotation: decord (upstream's reader) applies it, the PyAV
    fallback did not (a landscape video, another vector)."""
    source = resolve_video(_clip(tmp_path / "rotated.mp4", "mp4", rotation), POLICY)
    limits = VisionLimits(max_frames=4, total_pixels=TINY_LIMITS.total_pixels)
    if importlib.util.find_spec("decord") is not None:
        reference = prepare_video(source, 2.0, None, limits, POLICY).frames
        monkeypatch.setitem(sys.modules, "decord", None)
    else:
        reference = None
    fallback = prepare_video(source, 2.0, None, limits, POLICY)
    assert fallback.metadata["video_backend"] == "pyav"
    tall = fallback.frames.shape[2] > fallback.frames.shape[3]
    assert tall == (rotation != 180)
    if reference is not None:
        assert fallback.frames.shape == reference.shape
        assert float((fallback.frames - reference).abs().mean()) < 1.0


def test_video_frames_are_resized_a_few_at_a_time(media_dir, monkeypatch):
    """The resize works in float32 on whole frames: all of a video's at once held 2.7 GB for 64 frames of 1080p.
    Frames are resized one by one anyway, so chunks give the same pixels."""
    from qwen3vl_integrations.core import vision

    source = resolve_video(media_dir / "clip.mp4", POLICY)
    limits = VisionLimits(max_frames=16, total_pixels=TINY_LIMITS.total_pixels)
    whole = vision.TF.resize
    sizes = []
    monkeypatch.setattr(vision.TF, "resize", lambda video, *a, **k: sizes.append(len(video)) or whole(video, *a, **k))
    chunked = prepare_video(source, 8.0, None, limits, POLICY)
    assert sum(sizes) == len(chunked.frames) == 16 and max(sizes) <= vision.RESIZE_CHUNK_FRAMES
    monkeypatch.setattr(vision, "RESIZE_CHUNK_FRAMES", 1000)
    assert torch_equal(prepare_video(source, 8.0, None, limits, POLICY).frames, chunked.frames)


@pytest.mark.parametrize("listing", [
    ("clips.m3u8", "#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2,\n{uri}\n#EXT-X-ENDLIST\n"),
    ("clips.txt", "ffconcat version 1.0\nfile '{path}'\n"),
])
def test_video_files_that_name_other_files_are_not_read(tmp_path, listing):
    """An HLS playlist (or an ffconcat list) is a video to FFmpeg, which then opens the files and URLs it names: one
    path read a file the caller never named (and fetched URLs under allow_remote=False)."""
    name, text = listing
    segment = _clip(tmp_path / "segment.mkv", "matroska")
    (tmp_path / name).write_text(text.format(uri=segment.as_uri(), path=segment))
    assert resolve_video(segment, POLICY).total_frames == 16
    with pytest.raises(_Invalid, match="unreadable video: the file begins as text"):
        resolve_video(tmp_path / name, POLICY)
    with pytest.raises(_Invalid, match=r"unreadable video \(containers read: MP4/MOV, Matroska"):
        probe_video_file(str(tmp_path / name))  # the probe's own guard, behind that one


def test_frames_that_change_size_are_refused_wherever_the_change_falls(tmp_path, monkeypatch):
    """Decoded a few frames at a time, a change of size between two chunks was resized to the first chunk's shape
    (squashed), while one inside a chunk was refused: refused in both places, as when all frames were decoded
    together."""
    import av

    parts = []
    for width, height in ((96, 64), (64, 128)):
        part = tmp_path / f"{width}x{height}.ts"
        with av.open(str(part), "w", format="mpegts") as out:
            stream = out.add_stream("mpeg2video", rate=8)
            stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
            for _ in range(8):
                for packet in stream.encode(av.VideoFrame.from_ndarray(np.zeros((height, width, 3), np.uint8),
                                                                       format="rgb24")):
                    out.mux(packet)
            for packet in stream.encode():
                out.mux(packet)
        parts.append(part.read_bytes())
    joined = tmp_path / "joined.ts"
    joined.write_bytes(b"".join(parts))
    monkeypatch.setitem(sys.modules, "decord", None)  # decord scales every frame to the header's size
    source = resolve_video(joined, POLICY)
    for max_frames in (8, 6):  # the change between two chunks of 4, then inside one
        with pytest.raises(_Invalid, match="unreadable video"):
            prepare_video(source, 8.0, max_frames, VisionLimits(total_pixels=TINY_LIMITS.total_pixels), POLICY)


def test_a_playlist_in_front_of_a_video_is_not_read(tmp_path):
    """A playlist followed by MPEG-TS packets passes this FFmpeg's probe as MPEG-TS, while decord's own, older FFmpeg
    read it as the playlist and decoded the file it names (outside the folder of allow_local_files)."""
    named = _clip(tmp_path / "named.ts", "mpegts")
    uploads = tmp_path / "uploads"
    uploads.mkdir()
    playlist = f"#EXTM3U\n#EXT-X-TARGETDURATION:10\n#EXTINF:2.0,\n{named.as_uri()}\n#EXT-X-ENDLIST\n".encode()
    (uploads / "clip.mp4").write_bytes(playlist + _clip(tmp_path / "shown.ts", "mpegts").read_bytes())
    policy = MediaPolicy(allow_remote=False, local_files=uploads.resolve())
    for form in (uploads / "clip.mp4", (uploads / "clip.mp4").read_bytes()):
        with pytest.raises(_Invalid, match="unreadable video: the file begins as text"):
            resolve_video(form, policy)


@pytest.mark.parametrize("backend", ["decord", "pyav"])
def test_video_frames_are_decoded_a_few_at_a_time(tmp_path, monkeypatch, backend):
    """The sampled frames at full size are never all held at once: a 16 KB file of 64 frames of 2048x2048 took
    1.8 GB (decord's batch, or the PyAV reader's array), though only the resized frames are kept (137 MB)."""
    import av
    import tracemalloc

    if backend == "decord" and importlib.util.find_spec("decord") is None:
        pytest.skip("decord is not installed")
    path = tmp_path / "large.mp4"
    with av.open(str(path), "w", format="mp4") as out:
        stream = out.add_stream("libx264", rate=8, options={"preset": "ultrafast"})
        stream.width, stream.height, stream.pix_fmt = 1024, 1024, "yuv420p"
        for i in range(32):
            frame = np.full((1024, 1024, 3), 8 * i, np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")):
                out.mux(packet)
        for packet in stream.encode():
            out.mux(packet)
    source = resolve_video(path, POLICY)
    if backend == "pyav":
        monkeypatch.setitem(sys.modules, "decord", None)
    limits = VisionLimits(max_frames=32, total_pixels=TINY_LIMITS.total_pixels)
    tracemalloc.start()
    try:
        video = prepare_video(source, 8.0, None, limits, POLICY)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert video.metadata["video_backend"] == backend and len(video.frames) == 32
    assert peak < 32 * 2**20, peak  # all 32 frames at once: 96 MiB


@pytest.mark.parametrize("claimed_seconds", [36_000.0, 0.5])
def test_frames_are_counted_where_the_header_has_no_count(tmp_path, claimed_seconds):
    """A Matroska header gives a duration, not a frame count: a 2 s clip claiming 10 h was sampled as 288,000
    frames (7 of 8 samples were copies of the last frame), one claiming 0.5 s only in its first quarter."""
    source = resolve_video(_clip(tmp_path / "clip.mkv", "matroska", claimed_seconds=claimed_seconds), POLICY)
    assert source.total_frames == 16
    video = prepare_video(source, 2.0, None, VisionLimits(max_frames=4, total_pixels=TINY_LIMITS.total_pixels),
                          POLICY)
    assert list(video.metadata["frames_indices"]) == [0, 5, 10, 15]


@pytest.mark.parametrize(
    ("value", "cause"),
    [
        ([], "empty frame list"),
        (np.zeros((0, 8, 8, 3), np.uint8), "empty video"),
        (np.zeros((2, 8, 8), np.uint8), "shape"),
        ("/no/such/clip.mp4", "not found"),
        (b"", "empty video data"),
        (b"definitely not a video", "unreadable video"),
        (3.5, "unsupported video type"),
        ("gopher://x/clip.mp4", "unsupported URL scheme"),
    ],
)
def test_bad_videos(value, cause):
    with pytest.raises(_Invalid, match=cause):
        resolve_video(value, POLICY)


def test_bad_frame_is_named(frame_dir, media_dir):
    folder, frames = frame_dir
    with pytest.raises(_Invalid, match="frame 2: .*not found"):
        resolve_video([frames[0], frames[1], str(folder / "missing.png")], POLICY)
    with pytest.raises(_Invalid, match="unreadable video"):
        resolve_video(media_dir / "doc.txt", POLICY)


# ------------------------------------------------------------------------------------------ parse_item


def test_parse_item_forms(media_dir):
    assert parse_item("hello", POLICY).texts == ["hello"]
    item = parse_item({"text": ["a", "b"], "instruction": "x", "fps": 2, "max_frames": 4}, POLICY)
    assert (item.texts, item.instruction, item.fps, item.max_frames) == (["a", "b"], "x", 2.0, 4)
    assert parse_item({"instruction": ""}, POLICY).instruction is None
    assert parse_item({}, POLICY).is_empty
    assert len(parse_item({"image": [media_dir / "red.png", media_dir / "blue.jpg"]}, POLICY).images) == 2
    assert len(parse_item({"video": [media_dir / "clip.mp4", str(media_dir / "clip.mp4")]}, POLICY).videos) == 2
    clip = (media_dir / "clip.mp4").read_bytes()
    videos = parse_item({"video": [clip, io.BytesIO(clip)]}, POLICY).videos  # two encoded video files
    assert [type(v) for v in videos] == [VideoFileSource, VideoFileSource]
    # Special tokens other than the vision placeholders are plain text to us (the reference tokenises them too).
    assert parse_item("a <|im_end|> b", POLICY).texts == ["a <|im_end|> b"]


@pytest.mark.parametrize(
    ("raw", "cause"),
    [
        (5, "unsupported input type int"),
        (None, "unsupported input type NoneType"),
        (["a"], "unsupported input type list"),
        ({"txt": "a"}, "unknown key"),
        ({"text": 5}, "text 0 is int"),
        ({"text": ["a", b"b"]}, "text 1 is bytes"),
        ({"text": "a", "instruction": 3}, "instruction is int"),
        ({"video": [[]]}, "video 0: empty frame list"),
        ({"text": "a", "fps": 0}, "fps"),
        ({"text": "a", "fps": True}, "fps"),
        ({"text": "a", "fps": "2"}, "fps"),
        ({"text": "a", "max_frames": 1}, "max_frames"),
        ({"text": "a", "max_frames": 2.5}, "max_frames"),
        ({"image": ["/no/such.png"]}, "image 0: file not found"),
        ({"video": {"a": 1}}, "unsupported video type dict"),
        ("a <|video_pad|>", "text contains the reserved vision placeholder"),
        ({"text": ["a", "<|image_pad|>"]}, "text 1 contains the reserved"),
        ("a\ud83d", "text is not valid Unicode: surrogates not allowed at character 1"),
        ({"text": ["a", "\udc00b"]}, "text 1 is not valid Unicode"),
        ({"text": "a", "instruction": "Find\ud800"}, "instruction is not valid Unicode"),
        ({"image": None}, "image is None and the item has no other content"),
        ({"image": np.full((8, 8, 3), np.nan, np.float32)}, r"image 0: image array \(float32\) holds NaN"),
        ({"image": []}, r"image is \[\] and the item has no other content"),
        ({"video": None}, "video is None and the item has no other content"),
        ({"text": None, "image": None, "video": None}, "image is None"),
    ],
)
def test_parse_item_errors(raw, cause):
    with pytest.raises(_Invalid, match=cause):
        parse_item(raw, POLICY)


def test_absent_media_beside_other_content_is_no_media(media_dir):
    """A None (or empty) image or video next to text is "no image": the item is that text, as upstream."""
    assert parse_item({"text": "a", "image": None, "video": None}, POLICY).texts == ["a"]
    assert parse_item({"text": "a", "image": []}, POLICY).images == []
    assert parse_item({"image": media_dir / "red.png", "video": None}, POLICY).videos == []
    assert parse_item({}, POLICY).is_empty and parse_item({"text": None}, POLICY).is_empty  # NULL, as upstream


def test_parse_items_reports_every_bad_position(media_dir):
    raws = ["ok", {"image": "/no/such.png"}, {"text": 1}, {"image": media_dir / "red.png"}, 7]
    items, errors = parse_items(raws, POLICY)
    assert [i is None for i in items] == [False, True, True, False, True]
    assert [e.index for e in errors] == [1, 2, 4]
    assert all(isinstance(e, Qwen3VLInputError) and isinstance(e, ValueError) for e in errors)
    assert str(errors[0]).startswith("item 1: ") and "/no/such.png" in str(errors[0])


def test_text_is_never_read_as_a_file(media_dir):
    # A string item is text, even when it is the path of an existing file.
    assert parse_item(str(media_dir / "doc.txt"), POLICY).texts == [str(media_dir / "doc.txt")]
    assert parse_item({"text": str(media_dir / "red.png")}, POLICY).images == []


# ------------------------------------------------------------------------------------------ embeddings


def test_every_image_form_embeds_like_pil(tiny_embedder, media_dir, http_base):
    path = media_dir / "blue.jpg"
    data = path.read_bytes()
    pil = Image.open(path).convert("RGB")
    forms = [pil, str(path), path, path.as_uri(), data_uri(data, "image/jpeg"), data, io.BytesIO(data),
             np.asarray(pil), f"{http_base}/blue.jpg"]
    vectors = tiny_embedder.embed([{"image": form, "text": "x"} for form in forms])
    assert vectors.shape == (len(forms), 64)
    for row in range(1, len(forms)):
        np.testing.assert_allclose(vectors[row], vectors[0], atol=1e-5, err_msg=repr(type(forms[row])))
    # ... and a different picture gives a different vector.
    other = tiny_embedder.embed([{"image": media_dir / "red.png", "text": "x"}])
    assert np.abs(other[0] - vectors[0]).max() > 1e-3


def test_rgba_and_gray_embed_like_their_rgb_versions(tiny_embedder, media_dir):
    rgba = Image.open(media_dir / "rgba.png")
    on_white = Image.new("RGB", rgba.size, (255, 255, 255))
    on_white.paste(rgba, mask=rgba.getchannel("A"))
    gray = Image.open(media_dir / "gray.png")
    v = tiny_embedder.embed([{"image": media_dir / "rgba.png"}, {"image": on_white},
                             {"image": rgba.convert("RGB")},  # black background: must differ
                             {"image": media_dir / "gray.png"}, {"image": gray.convert("RGB")}])
    np.testing.assert_allclose(v[0], v[1], atol=1e-5)
    assert np.abs(v[0] - v[2]).max() > 1e-3
    np.testing.assert_allclose(v[3], v[4], atol=1e-5)


def test_every_video_form_embeds_alike(tiny_embedder, media_dir, frame_dir, http_base):
    clip = media_dir / "clip.mp4"
    data = clip.read_bytes()
    files = [str(clip), clip, clip.as_uri(), data, io.BytesIO(data), f"{http_base}/clip.mp4"]
    folder, frames = frame_dir
    paths = sorted(folder.glob("f*.png"))
    lists = [frames, [str(p) for p in paths], paths, np.stack([np.asarray(f) for f in frames]),
             [p.read_bytes() for p in paths]]
    vectors = tiny_embedder.embed([{"video": form} for form in files + lists])
    for row in range(1, len(files)):
        np.testing.assert_allclose(vectors[row], vectors[0], atol=1e-5, err_msg=repr(type(files[row])))
    base = len(files)
    for row in range(base + 1, base + len(lists)):
        np.testing.assert_allclose(vectors[row], vectors[base], atol=1e-5, err_msg=repr(type(lists[row - base])))
    assert np.abs(vectors[0] - vectors[base]).max() > 1e-3


def test_remote_errors_through_the_embedder(tiny_embedding_path, http_base):
    from qwen3vl_integrations import Qwen3VLEmbedder

    TINY_CORE_KWARGS = dict(device="cpu", min_pixels=4096, max_pixels=65536, total_pixels=262144, max_frames=8)
    emb = Qwen3VLEmbedder(str(tiny_embedding_path), allow_remote=False, **TINY_CORE_KWARGS)
    with pytest.raises(Qwen3VLInputError, match="item 1: .*allow_remote=False") as info:
        emb.embed(["ok", {"image": f"{http_base}/red.png"}])
    assert info.value.index == 1
    emb = Qwen3VLEmbedder(str(tiny_embedding_path), max_remote_bytes=1000, remote_timeout=5, **TINY_CORE_KWARGS)
    with pytest.raises(Qwen3VLInputError, match="item 0: .*cap"):
        emb.embed([{"image": f"{http_base}/blue.jpg"}])
    with pytest.raises(Qwen3VLInputError, match="item 0: .*404"):
        emb.embed([{"image": f"{http_base}/nope.png"}])
    assert not emb.is_loaded  # refused before any model work


def test_empty_video_list_is_an_error_not_null(tiny_embedding_path):
    """`{"video": []}` is refused (upstream would embed it as NULL), before any model work."""
    from qwen3vl_integrations import Qwen3VLEmbedder, Qwen3VLInputError

    emb = Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu")
    with pytest.raises(Qwen3VLInputError, match=r"^item 1: video is an empty list"):
        emb.embed(["fine", {"video": []}])
    assert not emb.is_loaded


# ------------------------------------------------------------------------- more images than max_length holds


def test_fewest_tokens_bound_every_image_and_video():
    """fewest_image_tokens / fewest_video_tokens never exceed what `image_tokens` / `video_tokens` count (the count
    check before fetching must refuse nothing that `_check_fits` accepts), and the image bound is met by a small
    image under the default limits."""
    from qwen3vl_integrations.core.vision import fewest_image_tokens, fewest_video_tokens, video_tokens

    rng = np.random.default_rng(0)
    sides = [1, 2, 31, 32, 33, 63, 64, 65, 100, 224, 500, 1000, 3000, 6400, 12800, 20000]
    sizes = [(w, h) for w in sides for h in sides] + [tuple(int(v) for v in rng.integers(1, 15000, 2))
                                                     for _ in range(400)]
    for limits in (VisionLimits(), TINY_LIMITS, VisionLimits(4096, 4096, 16384, 1.0, 8),
                   VisionLimits(50_000, 200_000, 1_000_000, 1.0, 16), VisionLimits(1, 1000, 100_000, 2.0, 4)):
        least_image, least_video = fewest_image_tokens(limits), fewest_video_tokens(limits)
        for width, height in sizes:
            try:
                assert image_tokens(width, height, limits) + 2 >= least_image, (limits, width, height)
            except _Invalid:  # aspect ratio over 200
                continue
            for total, fps in ((2, 1.0), (16, 8.0), (300, 30.0), (5000, 25.0)):
                for max_frames in (None, 2, 64, 10_000):
                    try:
                        tokens = video_tokens(VideoFileSource(total, fps, width, height), None, max_frames, limits,
                                              timestamps=False)
                    except _Invalid:  # frames too narrow for their share of total_pixels: refused, no bound needed
                        continue
                    assert tokens >= least_video, (limits, width, height, total, fps, max_frames)
    assert fewest_image_tokens(VisionLimits()) == image_tokens(10, 10, VisionLimits()) + 2 == 6
    # Under a small max_pixels an image of ratio 200 would shrink to no row of patches: it is refused (image_tokens),
    # and the bound still allows its 2 tokens.
    with pytest.raises(_Invalid, match="too narrow"):
        image_tokens(12800, 64, TINY_LIMITS)
    assert fewest_image_tokens(TINY_LIMITS) == 2


@pytest.fixture
def counted_fetches(monkeypatch, tmp_path):
    """Every http(s) fetch counted, none made: each gives an 8x8 PNG (4 visual tokens under the tests' limits)."""
    from qwen3vl_integrations.core import fetching

    small = tmp_path / "small.png"
    Image.new("RGB", (8, 8), (10, 200, 30)).save(small)
    urls: list[str] = []
    lock = threading.Lock()

    def fetch(url, policy, kind):
        with lock:
            urls.append(url)
        return small

    monkeypatch.setattr(fetching, "fetch_remote", fetch)
    return urls


def _unserved(count: int, extension: str = "png") -> list[str]:
    return [f"http://127.0.0.1:9/{position}.{extension}" for position in range(count)]  # port 9: nothing answers


def test_an_item_of_more_images_than_max_length_holds_is_refused_before_any_fetch(tiny_embedding_path,
                                                                                 counted_fetches):
    """5,000 image URLs cost 5,000 fetches before the vision tokens were counted. With max_length=64 the embedder
    has 64 - 6 (suffix) - 3 (template) = 55 tokens for media, and an image takes at least 6 under these limits:
    9 images can fit, 10 cannot."""
    from qwen3vl_integrations import Qwen3VLEmbedder

    emb = Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu", min_pixels=4096, max_pixels=256 * 32 * 32,
                          max_length=64)
    with pytest.raises(Qwen3VLInputError) as info:
        emb.embed(["fine", {"image": _unserved(5000)}, {"image": _unserved(10), "text": "ten"},
                   {"video": _unserved(5000, "mp4")}])
    assert counted_fetches == []
    assert [each.index for each in info.value.errors] == [1, 2, 3]
    first, ten, videos = info.value.errors
    assert str(first).startswith("item 1: has 5000 images, which need at least 30003 special/vision tokens, more "
                                 "than max_length allows (58): at most 9 images fit, at 6 tokens each at least")
    assert "at most 9 images fit" in ten.cause and "lower min_pixels" in ten.cause
    assert videos.cause.startswith("has 5000 videos, ") and "at most 0 videos fit" in videos.cause
    assert not emb.is_loaded
    # At the bound: fetched, and embedded (9 x (4 + 2) + 3 = 57 tokens of 58)
    vectors = emb.embed([{"image": _unserved(9)}])
    assert len(counted_fetches) == 9 and vectors.shape == (1, emb.embedding_dim)


def test_the_count_check_allows_what_the_vision_token_check_allows(tiny_embedding_path, counted_fetches):
    """Under the tests' max_pixels an image can take as few as 2 tokens (a 200:1 strip): 27 images (27 x 2 + 3 = 57 of
    58) reach the fetch, and only the count of their real tokens refuses them; 28 are refused unfetched."""
    from qwen3vl_integrations import Qwen3VLEmbedder

    emb = Qwen3VLEmbedder(str(tiny_embedding_path), max_length=64, device="cpu", min_pixels=4096,
                          max_pixels=64 * 32 * 32, total_pixels=256 * 32 * 32, max_frames=8)
    with pytest.raises(Qwen3VLInputError, match=r"^item 0: has 28 images, .*at most 27 images fit, at 2 tokens"):
        emb.embed([{"image": _unserved(28)}])
    assert counted_fetches == []
    with pytest.raises(Qwen3VLInputError, match=r"^item 0: needs 165 special/vision tokens"):
        emb.embed([{"image": _unserved(27)}])
    assert len(counted_fetches) == 27


def test_a_frame_list_is_one_video_and_only_its_sampled_frames_are_fetched(tiny_embedding_path, counted_fetches):
    from qwen3vl_integrations import Qwen3VLEmbedder

    emb = Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu", min_pixels=4096, max_pixels=65536,
                          total_pixels=262144, max_frames=8)
    result = emb.try_embed([{"video": _unserved(5000)}])
    assert len(counted_fetches) == 8 and result.errors == []


def test_a_document_shares_max_length_with_its_query(tiny_reranker_path, counted_fetches, tmp_path):
    """The reranker's query and document share max_length (64 - 3 template tokens = 61): beside a query of one image
    (6 tokens), a document of 9 images fits (61 - 6 = 55) and is fetched; one of 10 is refused unfetched."""
    from qwen3vl_integrations import Qwen3VLReranker

    query = tmp_path / "query.png"
    Image.new("RGB", (8, 8), (200, 10, 30)).save(query)
    rr = Qwen3VLReranker(str(tiny_reranker_path), device="cpu", min_pixels=4096, max_pixels=256 * 32 * 32,
                         max_length=64)
    with pytest.raises(Qwen3VLInputError) as info:
        rr.score({"image": str(query)}, [{"image": _unserved(9)}, {"image": _unserved(10)}, "fine"])
    assert [(each.role, each.index) for each in info.value.errors] == [("document", 1)]
    assert "(the query's 6 included)" in info.value.cause and "at most 9 images fit" in info.value.cause
    assert len(counted_fetches) == 9
    with pytest.raises(Qwen3VLInputError, match=r"^query: has 11 images, .*\(64\): at most 10 images fit"):
        rr.score({"image": _unserved(11)}, ["fine"])
    assert len(counted_fetches) == 9
    scores = rr.score({"image": str(query)}, [{"image": _unserved(9)}, "fine"])
    assert scores.shape == (2,) and len(counted_fetches) == 18
