"""The generated sample folder: complete, deterministic, with the content its names promise."""
from __future__ import annotations

import hashlib

import numpy as np
import pytest
from PIL import Image

from qwen3vl_integrations import sample_data
from qwen3vl_integrations.sample_data import SAMPLE_FILES, generate_sample_data


@pytest.fixture(scope="module")
def sample_dir(tmp_path_factory):
    out = tmp_path_factory.mktemp("samples")
    generate_sample_data(out)
    return out


def _sha(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _frames(path):
    import av

    with av.open(str(path)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def test_every_catalogued_file_is_written(sample_dir):
    names = sorted(p.name for p in sample_dir.iterdir())
    assert names == sorted(f.name for f in SAMPLE_FILES)
    modalities = [f.modality for f in SAMPLE_FILES]
    assert modalities.count("image") >= 6 and modalities.count("text") >= 4 and modalities.count("video") == 2
    assert all(f.description for f in SAMPLE_FILES)


def test_deterministic(sample_dir, tmp_path):
    again = generate_sample_data(tmp_path)
    for p in again:
        if p.suffix != ".mp4":
            assert _sha(p) == _sha(sample_dir / p.name), p.name
    # Video frames are drawn the same every time, but x264 does not always encode them to the same bytes (on an
    # AVX-512 CPU, two encodings in one process differed by up to 39 levels at some pixels): each file is compared
    # with the frames drawn instead (a drawing shifted by 4 pixels scores 21-26 dB).
    for name, (draw, _) in sample_data._VIDEOS.items():
        drawn = draw()
        assert all(np.array_equal(a, b) for a, b in zip(drawn, draw(), strict=True))
        for path in (sample_dir / name, tmp_path / name):
            decoded = _frames(path)
            assert len(decoded) == len(drawn)
            error = np.mean([np.mean((a.astype(float) - b) ** 2) for a, b in zip(decoded, drawn)])
            assert 10 * np.log10(255**2 / error) > 33, (path, error)


def test_pictures_show_what_their_names_say(sample_dir):
    def center(name):
        img = Image.open(sample_dir / name).convert("RGB")
        return np.asarray(img)[img.height // 2, img.width // 2].astype(int)

    r, g, b = center("red_circle.png")
    assert r > 180 and g < 60 and b < 60
    r, g, b = center("blue_square.png")
    assert b > 180 and r < 60
    r, g, b = center("green_triangle.png")
    assert g > 140 and r < 60 and b < 90
    beach = np.asarray(Image.open(sample_dir / "sunset_beach.jpg").convert("RGB")).astype(int)
    assert beach[100, 10, 0] > beach[100, 10, 2]  # orange sky near the horizon
    assert beach[-5, 160, 0] > 180  # sand at the bottom
    for name in ("bar_chart.png", "slide_ocean_cleanup.png"):
        arr = np.asarray(Image.open(sample_dir / name).convert("L"))
        assert arr.std() > 20  # not blank


def test_videos(sample_dir):
    ball = _frames(sample_dir / "ball_rolling.mp4")
    assert len(ball) == sample_data.VIDEO_FPS * sample_data.VIDEO_SECONDS
    assert ball[0].shape == (240, 320, 3)

    def ball_x(frame):  # the white ball is the brightest thing in the grass band
        band = frame[150:210].astype(int).sum(axis=2)
        return np.nonzero(band.max(axis=0) > 600)[0].mean()

    assert ball_x(ball[-1]) - ball_x(ball[0]) > 150  # it moves to the right
    sunset = _frames(sample_dir / "sunset_fading.mp4")
    assert len(sunset) == len(ball)
    assert sunset[-1].mean() < sunset[0].mean() - 30  # it gets darker


def test_texts(sample_dir):
    assert "circle" in (sample_dir / "shapes_lesson.txt").read_text()
    assert "sourdough" in (sample_dir / "sourdough_recipe.txt").read_text().lower()


def test_keeps_existing_files_and_skips_video(tmp_path):
    paths = generate_sample_data(tmp_path, video=False)
    assert not any(p.suffix == ".mp4" for p in paths)
    (tmp_path / "red_circle.png").write_bytes(b"x")
    generate_sample_data(tmp_path, video=False)
    assert (tmp_path / "red_circle.png").read_bytes() == b"x"
    generate_sample_data(tmp_path, video=False, overwrite=True)
    assert Image.open(tmp_path / "red_circle.png").size == (320, 240)


def test_command_line(tmp_path, capsys):
    assert sample_data.main([str(tmp_path / "out"), "--no-video"]) == 0
    out = capsys.readouterr().out
    assert "red_circle.png" in out and "files in" in out
    assert (tmp_path / "out" / "bar_chart.png").exists()
