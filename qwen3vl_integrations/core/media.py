"""Resolving and loading media safely: images and video files from paths, URLs, data URIs, bytes and arrays.

Every source is *resolved* first (checked, header read, remote bytes fetched) so that a bad item is reported
before any model work; pixels are decoded later, batch by batch, from the resolved source.
Nothing here ever reads a file that the caller did not name explicitly as an image or video.
"""
from __future__ import annotations

import base64
import contextlib
import binascii
import io
import re
import urllib.parse
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator, Union

import numpy as np
from PIL import Image, UnidentifiedImageError


IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tiff", ".tif", ".svg")
VIDEO_EXTENSIONS = (".mp4", ".mov", ".avi", ".mkv", ".webm", ".m4v", ".mpeg", ".mpg", ".flv", ".wmv", ".3gp")


@dataclass(frozen=True)
class MediaPolicy:
    """Limits for untrusted media."""

    allow_remote: bool = True
    timeout: float = 15.0  # seconds, for connecting and for each read; a whole file gets DOWNLOAD_TIMEOUTS of them
    max_remote_bytes: int = 256 * 2**20  # per fetched file (images and videos)
    max_image_pixels: int = 100_000_000  # width*height cap, checked from the header before decoding
    max_frames: int = 64  # a frame list is sub-sampled to this many when resolved: only those are fetched and read
    # Local files named by a path or file:// URL: True (any), False (none: a service's users send bytes or URLs), or
    # a folder (only files inside it, links followed), as vLLM's allowed_local_media_path.
    local_files: Union[bool, Path] = True


# A progressive JPEG is decoded in a pass over its coefficients per scan, and a scan can be a few bytes: a 1024x1024
# image of 10,000 scans of 3 KB (30 MB) took 2.1 s to decode on the build machine, 0.2 ms per megapixel and scan.
# Encoders write about 10 (libjpeg's default script), so more than this is refused before decoding (nvImageCodec
# refuses past the same number by default); an image at the default max_image_pixels then runs at most about 5 s.
MAX_JPEG_SCANS = 256
DOWNLOAD_TIMEOUTS = 4  # a server trickling bytes passes every per-read timeout: the whole file has a deadline too


class _Invalid(Exception):
    """Internal: a cause without an index; converted to Qwen3VLInputError by the caller."""


@contextlib.contextmanager
def naming_media(kind: str, position: int) -> Iterator[None]:
    """An _Invalid raised within names the item's image or video (`kind`) at `position`: "image 1: ..."."""
    try:
        yield
    except _Invalid as exc:
        raise _Invalid(f"{kind} {position}: {exc}") from None


# --------------------------------------------------------------------------------------------- helpers

def has_extension(name: str, extensions: tuple[str, ...]) -> bool:
    """True when a path or URL (query string ignored) ends in one of `extensions`, case-insensitively."""
    path = urllib.parse.urlsplit(name).path if "://" in name else name
    return path.lower().endswith(extensions)


def is_remote(value: str) -> bool:
    return value.startswith(("http://", "https://"))


def decode_data_uri(uri: str) -> bytes:
    header, sep, payload = uri.partition(",")
    if not sep or not header.endswith(";base64"):
        raise _Invalid("only base64 data URIs are supported (data:<mime>;base64,...)")
    try:
        return base64.b64decode(payload, validate=False)
    except (binascii.Error, ValueError) as exc:
        raise _Invalid(f"invalid base64 in data URI: {exc}") from None


def file_url_path(url: str) -> str:
    """The path of a file:// URL.

    ``file:///abs/path`` (RFC 8089, as ``Path.as_uri()`` writes it, percent-encoded) and ``file://localhost/abs``
    give the absolute path, in this system's form (``file:///C:/a%20b/x.png`` is ``C:\\a b\\x.png`` on Windows).
    Anything else is ``"file://" + path`` as the reference builds it from relative paths
    (``file://images/cat.jpg``): the prefix is stripped, like qwen-vl-utils does, so that the URL never names a
    different file than the caller meant (``/cat.jpg``, had ``images`` been read as a host name).
    """
    rest = url[len("file://"):]
    if rest.startswith("/"):
        return _url_path_here(urllib.parse.urlsplit(url).path)
    if rest.startswith("localhost/"):
        return _url_path_here(rest[len("localhost"):])
    return rest


def _url_path_here(path: str) -> str:
    # Plain unquoting kept Windows' drive letter behind a slash ('/C:/Users/x.png': no such file there)
    try:
        return urllib.request.url2pathname(path)
    except OSError:  # Windows: a ':' that is no drive letter, so no file of Windows either
        return urllib.parse.unquote(path)


_BASE64 = re.compile(r"[A-Za-z0-9+/=\s]+")


def _shown(text: str, limit: int = 100) -> str:
    """`text` for an error message: a string that is really data (megabytes of base64) is cut."""
    return repr(text) if len(text) <= limit else f"{text[:limit]!r}... ({len(text)} characters)"


def local_path(value: Union[str, Path], policy: MediaPolicy) -> Path:
    """A local path from a bare path or a file:// URL; must be allowed by the policy, exist and be a regular file."""
    text = str(value)
    if policy.local_files is False:  # before any look at the disk: whether a file exists is not told either
        raise _Invalid(f"local files are disabled (allow_local_files=False): {_shown(text)}")
    if text.startswith("file://"):
        decoded, raw = file_url_path(text), text[len("file://"):]
        # "file://" + path, as upstream builds it, with '#', '?' or '%' in a name: upstream opens the raw rest.
        text = raw if not _exists(decoded) and _exists(raw) else decoded
    path = Path(text).expanduser()
    if isinstance(policy.local_files, Path):
        if not _inside(path, policy.local_files):
            raise _Invalid(f"outside the folder of allow_local_files ({str(policy.local_files)!r}): {_shown(text)}")
        path = path.resolve()  # read what was checked: a link put in its place afterwards is not followed
    try:
        found, regular = path.exists(), path.is_file()
    except OSError as exc:  # a name too long for the filesystem: often image data passed as a bare string
        hint = ("; it looks like base64 data, which goes in a data: URI (data:image/png;base64,...) or as bytes"
                if len(text) > 255 and _BASE64.fullmatch(text[:1024]) else "")
        raise _Invalid(f"not a usable path ({exc.strerror}): {_shown(text)}{hint}") from None
    if not found:
        raise _Invalid(f"file not found: {_shown(text)}")
    if not regular:
        raise _Invalid(f"not a regular file: {_shown(text)}")
    return path


def _inside(path: Path, folder: Path) -> bool:
    """Whether `path`, its links followed, is in `folder` (resolved); a relative path counts from the working
    directory."""
    try:
        return path.resolve().is_relative_to(folder)
    except (OSError, RuntimeError):  # a name the system refuses, a loop of links
        return False


def _exists(text: str) -> bool:
    try:
        return Path(text).expanduser().exists()
    except OSError:
        return False


# ---------------------------------------------------------------------------------------------- images

@dataclass
class ImageSource:
    """A validated image: where its pixels are (path, bytes, decoded PIL image or a checked array) and its size."""

    width: int
    height: int
    path: Path | None = None
    data: bytes | None = None
    image: Image.Image | None = None
    array: np.ndarray | None = None  # a frame of a [T, H, W, C] video array, converted only if it is sampled

    @property
    def size(self) -> tuple[int, int]:
        return self.width, self.height

    def open(self, policy: MediaPolicy) -> Image.Image:
        """Decode the pixels (fully loaded PIL image)."""
        if self.image is not None:
            return _eight_bit(self.image)
        if self.array is not None:
            return _pil_from_array(self.array)
        return _eight_bit(_open_pil(self.path if self.path is not None else _bytes_file(self.data), policy,
                                    load=True))


def _eight_bit(image: Image.Image) -> Image.Image:
    """16-bit grayscale (PNG, TIFF: scans, medical and scientific images) scaled to 8 bits. The RGB conversion that
    follows, as upstream, clips it instead, and such an image came out (almost) white."""
    if image.mode not in ("I;16", "I;16L", "I;16B", "I;16N", "I"):
        return image
    values = np.asarray(image)
    if image.mode == "I" and (values.min() < 0 or values.max() > 65535):
        return image  # not 16-bit content: left to the conversion as upstream
    return Image.fromarray((values.astype(np.float32) / 257.0).round().astype(np.uint8), mode="L")


# The image formats read: raster formats whose header gives the size before any pixel is decoded, so that the
# max_image_pixels check comes first. Not ICO/ICNS (an icon's directory may name a 16x16 image while Pillow decodes
# a 13,300-pixel-wide PNG inside `Image.open`: 680 MB), not EPS (Pillow hands it to Ghostscript), nor the rarer
# formats Pillow knows. HEIF (iPhone photos) with a Pillow plugin such as pillow-heif.
IMAGE_FORMATS = ("JPEG", "MPO", "PNG", "GIF", "BMP", "DIB", "WEBP", "TIFF", "AVIF", "HEIF", "JPEG2000", "PPM", "TGA",
                 "QOI")


def readable_image_formats() -> tuple[str, ...]:
    """The IMAGE_FORMATS this Pillow reads (plugins register theirs when imported, so asked at each open)."""
    Image.init()
    return tuple(name for name in IMAGE_FORMATS if name in Image.OPEN)


def open_image(fp: Any) -> Image.Image:
    """`Image.open` restricted to the formats read here (UnidentifiedImageError for the others)."""
    return Image.open(fp, formats=readable_image_formats())


def _open_pil(fp: Any, policy: MediaPolicy, load: bool) -> Image.Image:
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            img = open_image(fp)
            width, height = img.size
            if width * height > policy.max_image_pixels:
                raise _Invalid(
                    f"image of {width}x{height} pixels exceeds max_image_pixels={policy.max_image_pixels}"
                )
            if load:
                img.load()
            return img
    except _Invalid:
        raise
    except Image.DecompressionBombError as exc:
        raise _Invalid(f"image refused as a decompression bomb: {exc}") from None
    except UnidentifiedImageError as exc:
        raise _Invalid(f"unreadable image (not one of {', '.join(readable_image_formats())}): {exc}") from None
    except (OSError, SyntaxError, ValueError) as exc:
        raise _Invalid(f"unreadable image: {exc}") from None


def _check_image_array(array: np.ndarray) -> None:
    """Raise _Invalid unless `array` holds pixels we convert: uint8, uint16, or float in [0, 1]."""
    if array.dtype not in (np.uint8, np.uint16):
        floating = np.issubdtype(array.dtype, np.floating)
        if floating and not np.isfinite(array).all():
            raise _Invalid(f"image array ({array.dtype}) holds NaN or infinite values")
        if not (floating and array.size and 0.0 <= array.min() and array.max() <= 1.0):
            raise _Invalid(f"image arrays must be uint8 or uint16 (or float in [0, 1]), got {array.dtype}")


def _pil_from_array(array: np.ndarray) -> Image.Image:
    """A checked HxW or HxWx{1,3,4} array as a PIL image."""
    if array.dtype == np.uint16:
        array = (array.astype(np.float32) / 257.0).round().astype(np.uint8)
    elif array.dtype != np.uint8:
        array = (array * 255.0).round().astype(np.uint8)
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    return Image.fromarray(np.ascontiguousarray(array))


def _image_from_array(array: np.ndarray) -> Image.Image:
    if array.ndim == 2 or (array.ndim == 3 and array.shape[-1] in (1, 3, 4)):
        _check_image_array(array)
        return _pil_from_array(array)
    raise _Invalid(f"image arrays must be HxW, HxWx3 or HxWx4, got shape {tuple(array.shape)}")


def locate(value: Any, policy: MediaPolicy, kind: str) -> tuple[Path | None, bytes | None]:
    """Where a file given as bytes, a file object, a Path, a path string, a file:// / http(s):// URL or a data: URI
    lives: a checked local path, or its bytes (remote content fetched under the policy). Raises _Invalid."""
    if isinstance(value, (bytes, bytearray, memoryview)):
        data = bytes(value)
    elif hasattr(value, "read"):
        if hasattr(value, "seek"):
            value.seek(0)
        data = value.read()
        if not isinstance(data, (bytes, bytearray)):
            raise _Invalid(f"file-like {kind} objects must be opened in binary mode")
        data = bytes(data)
    elif isinstance(value, Path):
        return local_path(value, policy), None
    elif isinstance(value, str):
        if not value.strip():
            raise _Invalid(f"empty string where {'an' if kind[0] in 'aeiou' else 'a'} {kind} was expected")
        if is_remote(value):
            from .fetching import fetch_remote  # imports requests: only when something is fetched

            return fetch_remote(value, policy, kind), None
        elif value.startswith("data:"):
            data = decode_data_uri(value)
        elif "://" in value and not value.startswith("file://"):
            raise _Invalid(f"unsupported URL scheme (only http, https, file and data): {value!r}")
        else:
            return local_path(value, policy), None
    else:
        raise _Invalid(f"unsupported {kind} type {type(value).__name__}")
    if not data:
        raise _Invalid(f"empty {kind} data")
    return None, data


def _bytes_file(data: bytes | None) -> io.BytesIO:
    """A source's bytes as a file: those of a source without a path (`locate` gives one or the other)."""
    if data is None:
        raise ValueError("a media source has neither a path nor bytes")
    return io.BytesIO(data)


def _has_pixels(width: int, height: int) -> None:
    # An empty crop (a layout detector's zero-width box) would divide by zero in the resize rule.
    if width < 1 or height < 1:
        raise _Invalid(f"image of {width}x{height} pixels has no pixels")


def resolve_image(value: Any, policy: MediaPolicy) -> ImageSource:
    """Validate one image value (header only) and return where its pixels come from. Raises _Invalid."""
    if isinstance(value, Image.Image):
        _has_pixels(value.width, value.height)
        return ImageSource(value.width, value.height, image=value)
    if isinstance(value, np.ndarray):
        img = _image_from_array(value)
        _has_pixels(img.width, img.height)
        return ImageSource(img.width, img.height, image=img)
    path, data = locate(value, policy, "image")
    with _open_pil(path if path is not None else _bytes_file(data), policy, load=False) as img:
        if img.format in ("JPEG", "MPO") and img.info.get("progressive"):
            scans = jpeg_scan_count(path, data)
            if scans > MAX_JPEG_SCANS:
                raise _Invalid(f"progressive JPEG of {scans} scans (at most {MAX_JPEG_SCANS}: each scan is another "
                               "decoding pass over the image)")
        return ImageSource(img.width, img.height, path=path, data=data)


def jpeg_scan_count(path: Path | None, data: bytes | None) -> int:
    """How many times a JPEG file holds the start-of-scan marker (FF DA): never fewer than the scans the decoder runs
    (in entropy-coded data each FF is followed by a zero byte or a restart marker), more if a thumbnail or metadata
    holds some."""
    if data is not None:
        return data.count(b"\xff\xda")
    if path is None:
        raise ValueError("a media source has neither a path nor bytes")
    count, last = 0, b""
    with open(path, "rb") as file:
        while chunk := file.read(1 << 20):
            count += (last + chunk).count(b"\xff\xda")  # a marker across two chunks is counted once, here
            last = chunk[-1:]
    return count


# ---------------------------------------------------------------------------------------------- videos

@dataclass
class VideoFileSource:
    """A validated video file (local path or fetched bytes) with its probed header."""

    total_frames: int
    fps: float
    width: int
    height: int
    path: Path | None = None
    data: bytes | None = None

    def stream(self) -> Any:
        return str(self.path) if self.path is not None else _bytes_file(self.data)


@dataclass
class FrameListSource:
    """A video given as frames (each validated like an image)."""

    frames: list[ImageSource]


VideoSource = Union[VideoFileSource, FrameListSource]


# The containers read (FFmpeg demuxer names). Not the formats whose files name other files or URLs that FFmpeg then
# opens itself (an HLS playlist read `file:///...` segments and fetched with allow_remote=False; ffconcat lists).
VIDEO_CONTAINERS = "mov,matroska,avi,mpeg,mpegts,flv,asf,ogg"
VIDEO_CONTAINERS_SHOWN = "MP4/MOV, Matroska/WebM, AVI, MPEG, MPEG-TS, FLV, ASF/WMV, Ogg"


def open_video_container(stream: Any) -> Any:
    """`av.open` restricted to VIDEO_CONTAINERS."""
    import av

    return av.open(stream, options={"format_whitelist": VIDEO_CONTAINERS})


HEAD_BYTES = 64
_TEXT_BYTES = frozenset(range(0x20, 0x7F)) | frozenset(b"\t\n\r")


def _head(path: Path | None) -> bytes:
    if path is None:
        return b""
    with open(path, "rb") as file:
        return file.read(HEAD_BYTES)


def _starts_as_text(head: bytes) -> bool:
    """Whether a file begins as plain text (an HLS playlist, an ffconcat list): every container read here begins
    with binary bytes."""
    head = head.removeprefix(b"\xef\xbb\xbf")
    return bool(head) and all(byte in _TEXT_BYTES for byte in head)


def sampled_positions(count: int, max_frames: int) -> list[int]:
    """The frames a list of `count` keeps (REFERENCE.md §3 step 6): all, or `max_frames` evenly spread."""
    if count <= max_frames:
        return list(range(count))
    return [int(i) for i in np.linspace(0, count - 1, max_frames, dtype=int)]


def probe_video_file(stream: Any) -> tuple[int, float, int, int]:
    """(total_frames, fps, width, height) from the container header, via PyAV (no frame decoding). Every video file
    is probed before decord opens it, which then sees only files that this FFmpeg reads as one of VIDEO_CONTAINERS
    and that do not begin as text."""
    try:
        container = open_video_container(stream)
    except Exception as exc:  # av raises many error types for unreadable files
        raise _Invalid(f"unreadable video (containers read: {VIDEO_CONTAINERS_SHOWN}): {exc}") from None
    try:
        with container:
            if not container.streams.video:
                raise _Invalid("no video stream in file")
            vs = container.streams.video[0]
            fps = float(vs.average_rate or vs.guessed_rate or 0)
            width, height = vs.codec_context.width, vs.codec_context.height
            frames = int(vs.frames or 0)
            if frames <= 0:
                # No count in the header (MKV, WebM): count the packets, as decord indexes them. A duration from
                # the header can be far off (a 2 s clip claiming 10 h sampled 7 copies of its last frame of 8).
                frames = sum(1 for packet in container.demux(vs) if packet.size)
    except _Invalid:
        raise
    except Exception as exc:  # av raises many error types for broken containers
        raise _Invalid(f"unreadable video: {exc}") from None
    if frames <= 0 or fps <= 0 or width <= 0 or height <= 0:
        raise _Invalid("unreadable video: no frame count, frame rate or size in its header")
    return frames, fps, width, height


def resolve_video(value: Any, policy: MediaPolicy) -> VideoSource:
    """Validate one video: a file (path, Path, file://, URL, data URI, bytes) or frames (list or [T,H,W,3] array)."""
    if isinstance(value, np.ndarray):
        if value.ndim != 4:
            raise _Invalid(f"video arrays must be [T, H, W, 3], got shape {tuple(value.shape)}")
        if value.shape[0] == 0:
            raise _Invalid("empty video (no frames)")
        if value.shape[-1] not in (1, 3, 4):
            raise _Invalid(f"video arrays must be [T, H, W, 3], got shape {tuple(value.shape)}")
        _check_image_array(value)
        height, width = value.shape[1:3]
        _has_pixels(width, height)
        # Frames stay views of the array: only those sampled are ever converted to images.
        return FrameListSource([ImageSource(width, height, array=value[position])
                                for position in sampled_positions(len(value), policy.max_frames)])
    if isinstance(value, (list, tuple)):
        if not value:
            raise _Invalid("empty frame list")
        # Only the sampled frames are resolved: a list of 2,000 frame URLs was fetched whole, one after another,
        # for the 64 frames used.
        frames = []
        for position in sampled_positions(len(value), policy.max_frames):
            try:
                frames.append(resolve_image(value[position], policy))
            except _Invalid as exc:
                raise _Invalid(f"frame {position}: {exc}") from None
        return FrameListSource(frames)
    path, data = locate(value, policy, "video")
    if _starts_as_text(data[:HEAD_BYTES] if data is not None else _head(path)):
        # decord's own (older) FFmpeg reads such a file as a playlist even where the probe's sees a video after it
        raise _Invalid("unreadable video: the file begins as text (playlists such as HLS, and lists of files, are "
                       "not read)")
    total_frames, fps, width, height = probe_video_file(str(path) if path is not None else _bytes_file(data))
    if width * height > policy.max_image_pixels:  # every decoded frame would be this large
        raise _Invalid(f"video frames of {width}x{height} pixels exceed max_image_pixels={policy.max_image_pixels}")
    return VideoFileSource(total_frames, fps, width, height, path=path, data=data)
