"""qwen3vl-search: index + query on the generated sample folder with tiny checkpoints, and every error path.

Everything runs in-process through ``cli.main([...])`` (the tiny model loads once per session).
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from qwen3vl_integrations import cli
from qwen3vl_integrations.cli import indexing
from qwen3vl_integrations.sample_data import SAMPLE_FILES, generate_sample_data


@pytest.fixture(scope="module")
def sample_folder(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cli-samples")
    generate_sample_data(folder)
    (folder / "notes.csv").write_text("a,b\n1,2\n")  # not indexed, counted as ignored
    (folder / ".hidden.png").write_bytes(b"not even read")  # hidden: skipped silently
    return folder


@pytest.fixture(scope="module")
def index_dir(sample_folder, tiny_embedding_path, tmp_path_factory):
    out = tmp_path_factory.mktemp("cli-index") / "index"
    code = cli.main(["index", str(sample_folder), "--index-dir", str(out), "--model", str(tiny_embedding_path),
                     "--batch-size", "8", "--no-progress"])
    assert code == 0
    return out


def _manifest(index_dir):
    return json.loads((index_dir / cli.MANIFEST_NAME).read_text())


def _run(capsys, *argv):
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def _table_rows(out):
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("rank")) + 2
    rows = []
    for line in lines[start:]:
        if not line.strip() or not line.strip()[0].isdigit():
            break
        rank, score, rerank, modality, file = line.split(None, 4)
        rows.append((int(rank), float(score), None if rerank == "-" else float(rerank), modality, file))
    return rows


def _assert_one_line_error(code, err, expected_code, *fragments):
    assert code == expected_code
    lines = [line for line in err.strip().splitlines() if line.startswith("qwen3vl-search: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


# ------------------------------------------------------------------------------------------------ index


def test_index_writes_a_llamaindex_store_and_a_manifest(index_dir, sample_folder, tiny_embedding_path):
    for name in ("docstore.json", "index_store.json", "default__vector_store.json", cli.MANIFEST_NAME):
        assert (index_dir / name).is_file(), name
    m = _manifest(index_dir)
    assert m["model"] == str(tiny_embedding_path)
    assert m["dimension"] == m["model_dim"] == 64 and m["dimensions"] is None
    assert m["counts"] == {"image": 6, "text": 5, "video": 2, "indexed": 13, "skipped": 0, "ignored": 1}
    assert sorted(f["file"] for f in m["files"]) == sorted(f.name for f in SAMPLE_FILES)
    assert m["ignored"] == ["notes.csv"]
    assert m["folder"] == str(sample_folder.resolve())


def test_stored_vectors_equal_the_llamaindex_adapter_as_a_transformation(index_dir, tiny_embedding_path):
    """What `index` stores is exactly what our embedding adapter computes when it runs as a transformation."""
    from llama_index.core import StorageContext, load_index_from_storage

    from qwen3vl_integrations import Qwen3VLEmbedder
    from qwen3vl_integrations.llama_index import Qwen3VLEmbedding

    embed = Qwen3VLEmbedding(embedder=Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu"))
    index = load_index_from_storage(StorageContext.from_defaults(persist_dir=str(index_dir)), embed_model=embed)
    nodes = list(index.docstore.docs.values())
    assert len(nodes) == 13
    stored = {n.node_id: np.asarray(index.vector_store.get(n.node_id)) for n in nodes}
    copies = [n.model_copy(deep=True) for n in nodes]
    for c in copies:
        c.embedding = None
    embed(copies)
    modalities = {n.metadata["modality"] for n in nodes}
    assert modalities == {"image", "text", "video"}
    for c in copies:
        np.testing.assert_allclose(np.asarray(c.embedding), stored[c.node_id], atol=2e-5)


# ------------------------------------------------------------------------------------------------ query


def test_text_query_with_rerank_prints_a_table_and_writes_a_picture(index_dir, tiny_reranker_path, capsys):
    picture = index_dir.parent / "red.png"
    code, out, err = _run(capsys, "query", index_dir, "a red circle", "--top-k", "4", "--rerank",
                          "--reranker", tiny_reranker_path, "--picture", picture)
    assert code == 0, err
    rows = _table_rows(out)
    assert [r[0] for r in rows] == [1, 2, 3, 4]
    reranks = [r[2] for r in rows]
    assert all(0.0 < s < 1.0 for s in reranks)
    assert reranks == sorted(reranks, reverse=True)
    assert {r[3] for r in rows} <= {"image", "text", "video"}
    img = Image.open(picture)
    assert img.format == "PNG" and img.width >= 4 * 200


def test_rerank_scores_equal_the_core_reranker(index_dir, tiny_reranker_path, sample_folder):
    from qwen3vl_integrations import Qwen3VLReranker
    from qwen3vl_integrations.core.prompts import DEFAULT_QUERY_INSTRUCTION

    hits, info = cli.search(index_dir, "a ball rolling across grass", top_k=13, rerank=True,
                            reranker=str(tiny_reranker_path), log=lambda *_: None)
    assert info["reranker"] == str(tiny_reranker_path) and len(hits) == 13
    docs = [h.text if h.modality == "text" else {h.modality: h.path} for h in hits]
    rr = Qwen3VLReranker(str(tiny_reranker_path), device="cpu")
    expected = rr.score("a ball rolling across grass", docs, instruction=DEFAULT_QUERY_INSTRUCTION)
    np.testing.assert_allclose([h.rerank_score for h in hits], expected, atol=1e-5)


def test_query_scores_are_cosine_similarities_with_the_query_instruction(index_dir, tiny_embedding_path,
                                                                         sample_folder):
    from qwen3vl_integrations import Qwen3VLEmbedder
    from qwen3vl_integrations.core.prompts import DEFAULT_QUERY_INSTRUCTION

    image = sample_folder / "sunset_beach.jpg"
    hits, _ = cli.search(index_dir, None, image=image, top_k=13, log=lambda *_: None)
    assert len(hits) == 13 and all(h.rerank_score is None for h in hits)
    emb = Qwen3VLEmbedder(str(tiny_embedding_path), device="cpu")
    q = emb.embed([{"image": str(image)}], instruction=DEFAULT_QUERY_INSTRUCTION)[0]
    docs = emb.embed([h.text if h.modality == "text" else {h.modality: h.path} for h in hits])
    np.testing.assert_allclose([h.score for h in hits], docs @ q, atol=1e-4)
    assert [h.score for h in hits] == sorted((h.score for h in hits), reverse=True)


def test_image_and_video_queries_from_the_command_line(index_dir, sample_folder, capsys):
    code, out, err = _run(capsys, "query", index_dir, "--video", sample_folder / "ball_rolling.mp4", "--top-k", "3")
    assert code == 0, err
    assert len(_table_rows(out)) == 3
    expected_picture = cli.default_picture_path(index_dir, None, None, sample_folder / "ball_rolling.mp4")
    assert expected_picture.parent == index_dir and expected_picture.is_file()
    code, out, err = _run(capsys, "query", index_dir, "the same scene", "--image", sample_folder / "red_circle.png",
                          "--top-k", "2", "--no-picture")
    assert code == 0, err
    assert len(_table_rows(out)) == 2 and "image red_circle.png" in out


def test_results_picture_handles_every_modality_and_missing_files(tmp_path, sample_folder):
    hits = [
        cli.Hit(1, 0.9, 0.8, "image", "red_circle.png", str(sample_folder / "red_circle.png")),
        cli.Hit(2, 0.5, None, "video", "ball_rolling.mp4", str(sample_folder / "ball_rolling.mp4")),
        cli.Hit(3, 0.4, None, "text", "shapes_lesson.txt", str(sample_folder / "shapes_lesson.txt"), text="A circle"),
        cli.Hit(4, 0.1, None, "image", "gone.png", str(tmp_path / "gone.png")),
    ]
    img = cli.render_results_picture(hits, tmp_path / "p.png", query_text="q", query_image=sample_folder /
                                     "blue_square.png", subtitle="embedding tiny")
    assert (tmp_path / "p.png").is_file() and img.size[0] >= 4 * 200
    arr = np.asarray(img.convert("RGB")).astype(int)
    assert (arr[..., 0] > 180).sum() > 1000  # the red circle thumbnail is there


# ------------------------------------------------------------------------------------------------ --model tiny


def test_model_tiny_builds_cached_checkpoints_and_warns(tmp_path, monkeypatch, capsys, sample_folder):
    monkeypatch.setenv("QWEN3VL_CACHE_DIR", str(tmp_path / "cache"))
    folder = tmp_path / "small"
    folder.mkdir()
    for name in ("red_circle.png", "shapes_lesson.txt", "blue_square.png"):
        shutil.copy(sample_folder / name, folder / name)
    idx = tmp_path / "idx"
    code, out, err = _run(capsys, "index", folder, "--index-dir", idx, "--model", "tiny", "--no-progress")
    assert code == 0, err
    assert "meaningless" in err
    assert (tmp_path / "cache" / "tiny-embedding" / "config.json").is_file()
    m = _manifest(idx)
    assert m["model"] == "tiny" and m["counts"]["indexed"] == 3
    code, out, err = _run(capsys, "query", idx, "a red circle", "--rerank", "--no-picture")
    assert code == 0, err
    assert "meaningless" in err
    assert (tmp_path / "cache" / "tiny-reranker" / "config.json").is_file()
    assert len(_table_rows(out)) == 3 and all(r[2] is not None for r in _table_rows(out))
    assert cli.resolve_model_name("tiny", "reranker") == str(tmp_path / "cache" / "tiny-reranker")
    assert cli.resolve_model_name(None) == cli.REAL_EMBEDDING_MODEL
    assert cli.resolve_model_name("", "reranker") == cli.REAL_RERANKER_MODEL


# ------------------------------------------------------------------------------------------------ errors


def test_missing_folder(tmp_path, capsys):
    code, _, err = _run(capsys, "index", tmp_path / "nope", "--index-dir", tmp_path / "i", "--model", "tiny")
    _assert_one_line_error(code, err, 2, "folder not found", "nope")


def test_empty_folder(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code, _, err = _run(capsys, "index", tmp_path / "empty", "--index-dir", tmp_path / "i", "--model", "tiny")
    _assert_one_line_error(code, err, 2, "no images, videos or text files found")
    (tmp_path / "other").mkdir()
    (tmp_path / "other" / "data.csv").write_text("x")
    code, _, err = _run(capsys, "index", tmp_path / "other", "--index-dir", tmp_path / "i", "--model", "tiny")
    _assert_one_line_error(code, err, 2, "no images, videos or text files found", "1 other file")


def test_unreadable_files_are_reported_skipped_and_counted(tmp_path, sample_folder, tiny_embedding_path, capsys):
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    shutil.copy(sample_folder / "red_circle.png", folder / "red_circle.png")
    shutil.copy(sample_folder / "ball_rolling.mp4", folder / "sub" / "ball.mp4")
    (folder / "doc.txt").write_text("A short note about circles.")
    (folder / "broken.png").write_bytes(b"this is not a png")
    (folder / "truncated.mp4").write_bytes((sample_folder / "ball_rolling.mp4").read_bytes()[:2000])
    (folder / "latin1.txt").write_bytes("caf\xe9 cr\xe8me".encode("latin-1"))
    (folder / "blank.md").write_text("   \n")
    idx = tmp_path / "idx"
    code, out, err = _run(capsys, "index", folder, "--index-dir", idx, "--model", tiny_embedding_path,
                          "--no-progress")
    assert code == 0, err
    for name in ("broken.png", "truncated.mp4", "latin1.txt", "blank.md"):
        assert f"skipped {name}:" in err
    assert "Skipped 4 unreadable file(s)" in out
    m = _manifest(idx)
    assert m["counts"] == {"image": 1, "text": 1, "video": 1, "indexed": 3, "skipped": 4, "ignored": 0}
    assert {s["file"] for s in m["skipped"]} == {"broken.png", "truncated.mp4", "latin1.txt", "blank.md"}
    assert {f["file"] for f in m["files"]} == {"red_circle.png", "doc.txt", "sub/ball.mp4"}
    assert "Traceback" not in err


def test_nothing_readable(tmp_path, tiny_embedding_path, capsys):
    folder = tmp_path / "bad"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"nope")
    (folder / "b.jpg").write_bytes(b"nope")
    code, _, err = _run(capsys, "index", folder, "--index-dir", tmp_path / "i", "--model", tiny_embedding_path,
                        "--no-progress")
    _assert_one_line_error(code, err, 1, "none of the 2 file(s)")
    assert "skipped a.png" in err and "skipped b.jpg" in err


def test_index_folder_is_checked_before_any_model_work(tmp_path, sample_folder, monkeypatch, capsys):
    """A file as --index-dir, or the indexed folder itself, fails at once: not after every file was embedded."""
    monkeypatch.setattr(indexing, "_make_embedder", lambda *a, **k: pytest.fail("the model was loaded"))
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sample_folder / "red_circle.png", folder)
    (tmp_path / "afile").write_text("x")
    code, _, err = _run(capsys, "index", folder, "--index-dir", tmp_path / "afile", "--model", "tiny")
    _assert_one_line_error(code, err, 2, "--index-dir is a file, not a folder")
    code, _, err = _run(capsys, "index", folder, "--index-dir", tmp_path / "afile" / "sub", "--model", "tiny")
    _assert_one_line_error(code, err, 2, "cannot create or write the index folder")
    code, _, err = _run(capsys, "index", folder, "--index-dir", folder, "--model", "tiny")
    _assert_one_line_error(code, err, 2, "must not be the folder being indexed")


def test_an_interrupted_save_leaves_the_previous_index_whole(tmp_path, sample_folder, tiny_embedding_path,
                                                             monkeypatch, capsys):
    folder = tmp_path / "photos"
    folder.mkdir()
    for name in ("red_circle.png", "blue_square.png"):
        shutil.copy(sample_folder / name, folder)
    idx = tmp_path / "idx"
    assert _run(capsys, "index", folder, "--index-dir", idx, "--model", tiny_embedding_path, "--no-progress")[0] == 0
    (idx / "results-red.png").write_bytes(b"a results picture")  # not an index file: it stays
    before = {p.name: p.read_bytes() for p in idx.iterdir()}
    shutil.copy(sample_folder / "ball_rolling.mp4", folder)

    def interrupted_write(self, persist_dir=None, **kwargs):  # Ctrl-C after the docstore was written
        (Path(persist_dir) / "docstore.json").write_text("{}")
        raise KeyboardInterrupt

    from llama_index.core import StorageContext
    monkeypatch.setattr(StorageContext, "persist", interrupted_write)
    code, _, err = _run(capsys, "index", folder, "--index-dir", idx, "--model", tiny_embedding_path, "--no-progress")
    assert code == 130 and "interrupted" in err
    assert {p.name: p.read_bytes() for p in idx.iterdir()} == before  # no staging folder left either
    monkeypatch.undo()
    code, out, err = _run(capsys, "query", idx, "a red circle", "--no-picture")
    assert code == 0 and len(_table_rows(out)) == 2, err


def test_interrupts_wait_for_the_moves(monkeypatch):
    import os
    import signal

    moved = []
    with pytest.raises(KeyboardInterrupt):
        with indexing._interrupts_deferred():
            os.kill(os.getpid(), signal.SIGINT)
            moved.append("after the signal")
    assert moved == ["after the signal"]


def test_file_names_of_links_and_unicode_queries(tmp_path, sample_folder, tiny_embedding_path, capsys):
    folder = tmp_path / "links"
    folder.mkdir()
    shutil.copy(sample_folder / "red_circle.png", folder / "a.png")
    (folder / "alias.png").symlink_to(folder / "a.png")
    (tmp_path / "outside").mkdir()
    shutil.copy(sample_folder / "blue_square.png", tmp_path / "outside" / "ext.png")
    (folder / "ext.png").symlink_to(tmp_path / "outside" / "ext.png")
    (folder / "sub").mkdir()
    (folder / "sub" / "loop").symlink_to(folder, target_is_directory=True)  # followed, it would never end
    (folder / "more").symlink_to(tmp_path / "outside", target_is_directory=True)
    idx = tmp_path / "idx"
    code, out, _ = _run(capsys, "index", folder, "--index-dir", idx, "--model", tiny_embedding_path, "--no-progress")
    assert code == 0
    assert sorted(f["file"] for f in _manifest(idx)["files"]) == ["a.png", "alias.png", "ext.png"]
    # symlinked folders are not followed, and the user is told which
    assert _manifest(idx)["linked_folders_not_followed"] == ["more", "sub/loop"]
    assert "Did not follow 2 symlinked folder(s) (index their targets on their own): more, sub/loop" in out
    assert cli.default_picture_path(idx, "海滩日落").name == "results-海滩日落.png"
    assert cli.default_picture_path(idx, "Été photo ✓ 1").name == "results-été-photo-1.png"


def test_debug_after_the_subcommand(tmp_path, capsys):
    with pytest.raises(cli.CLIError, match="folder not found"):
        cli.main(["index", str(tmp_path / "nope"), "--debug"])
    code, _, err = _run(capsys, "index", tmp_path / "nope")
    _assert_one_line_error(code, err, 2, "folder not found")


def test_query_with_a_different_model_or_dimension(index_dir, tmp_path, capsys):
    from qwen3vl_integrations.testing import build_tiny_checkpoint

    other = build_tiny_checkpoint(tmp_path / "other-model", kind="embedding", seed=1)
    code, _, err = _run(capsys, "query", index_dir, "a red circle", "--model", other)
    _assert_one_line_error(code, err, 2, "model mismatch", str(other))
    code, _, err = _run(capsys, "query", index_dir, "a red circle", "--model", "tiny")
    _assert_one_line_error(code, err, 2, "model mismatch")
    code, _, err = _run(capsys, "query", index_dir, "a red circle", "--dimensions", "32")
    _assert_one_line_error(code, err, 2, "dimension mismatch", "64", "32")


def test_index_built_from_another_checkpoint_at_the_same_path(index_dir, tmp_path, capsys):
    """The manifest records the model's size: a checkpoint swapped under the same name is caught."""
    m = _manifest(index_dir)
    copy = tmp_path / "index-copy"
    shutil.copytree(index_dir, copy)
    m["model_dim"] = 128
    m["dimension"] = 128
    (copy / cli.MANIFEST_NAME).write_text(json.dumps(m))
    code, _, err = _run(capsys, "query", copy, "a red circle")
    _assert_one_line_error(code, err, 2, "model mismatch", "128")


def test_query_errors(index_dir, tmp_path, capsys):
    code, _, err = _run(capsys, "query", tmp_path / "missing-index", "x")
    _assert_one_line_error(code, err, 2, "index folder not found")
    code, _, err = _run(capsys, "query", tmp_path, "x")
    _assert_one_line_error(code, err, 2, "not a qwen3vl-search index")
    code, _, err = _run(capsys, "query", index_dir)
    _assert_one_line_error(code, err, 2, "nothing to search for")
    code, _, err = _run(capsys, "query", index_dir, "x", "--image", tmp_path / "nope.png")
    _assert_one_line_error(code, err, 2, "--image file not found")
    (tmp_path / "broken.png").write_bytes(b"nope")
    code, _, err = _run(capsys, "query", index_dir, "x", "--image", tmp_path / "broken.png")
    _assert_one_line_error(code, err, 2, "cannot embed the query", "unreadable image")


def test_hub_model_that_cannot_be_loaded_says_how_to_run_offline(tmp_path, sample_folder, monkeypatch, capsys):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    folder = tmp_path / "f"
    folder.mkdir()
    shutil.copy(sample_folder / "red_circle.png", folder)
    code, _, err = _run(capsys, "index", folder, "--index-dir", tmp_path / "i",
                        "--model", "qwen3vl-tests/no-such-model")
    _assert_one_line_error(code, err, 3, "cannot load the embedding model", "make demo MODEL=tiny", "--model tiny")
    code, _, err = _run(capsys, "index", folder, "--index-dir", tmp_path / "i", "--model", tmp_path / "no" / "dir")
    _assert_one_line_error(code, err, 3, "model not found")


def test_bad_option_values(tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:
        cli.main(["query", str(tmp_path), "x", "--top-k", "0"])
    assert exc.value.code == 2
    assert "positive integer" in capsys.readouterr().err


def test_help_explains_every_option(capsys):
    for argv, options in (
        (["--help"], ["index", "query", "--debug"]),
        (["index", "--help"], ["FOLDER", "--index-dir", "--model", "--dimensions", "--batch-size", "--device",
                               "--max-frames", "--no-progress", "tiny"]),
        (["query", "--help"], ["INDEX_DIR", "TEXT", "--image", "--video", "--top-k", "--rerank", "--reranker",
                               "--candidates", "--instruction", "--picture", "--no-picture", "--model",
                               "--dimensions", "--device", "--no-progress"]),
    ):
        with pytest.raises(SystemExit) as exc:
            cli.main(argv)
        assert exc.value.code == 0
        out = capsys.readouterr().out
        for option in options:
            assert option in out, (argv, option)


def test_entry_point_is_declared():
    import tomllib
    from pathlib import Path

    pyproject = tomllib.loads((Path(__file__).parents[1] / "pyproject.toml").read_text())
    assert pyproject["project"]["scripts"]["qwen3vl-search"] == "qwen3vl_integrations.cli:main"


# ------------------------------------------------------------------------------------------------ make demo


def test_demo_on_tiny_models(tmp_path, monkeypatch, capsys):
    from qwen3vl_integrations import demo

    monkeypatch.setenv("QWEN3VL_CACHE_DIR", str(tmp_path / "cache"))
    assert demo.main(["--model", "tiny", "--out", str(tmp_path / "demo"), "--top-k", "3"]) == 0
    out, err = capsys.readouterr()
    assert out.count("\nrank ") == 3 and "meaningless" in err + out
    for text in ("a red circle", "a ball rolling across grass"):
        assert f'Query: "{text}"' in out
    assert "Query: image sunset_beach.jpg" in out
    assert len(list((tmp_path / "demo" / "index").glob("results-*.png"))) == 3
    assert (tmp_path / "demo" / "samples" / "ball_rolling.mp4").is_file()


def test_demo_with_real_models_offline_says_how_to_run_offline(tmp_path, monkeypatch, capsys):
    from huggingface_hub import snapshot_download

    from qwen3vl_integrations import demo

    try:
        snapshot_download(cli.REAL_EMBEDDING_MODEL, local_files_only=True)
        pytest.skip("the real embedding model is in the local cache")
    except Exception:  # noqa: BLE001 - not cached: the case under test
        pass
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    code = demo.main(["--out", str(tmp_path / "demo")])
    out, err = capsys.readouterr()
    assert code == 3
    assert "cannot load the embedding model 'Qwen/Qwen3-VL-Embedding-2B'" in err
    assert "make demo MODEL=tiny" in err and "Traceback" not in err


def test_text_files_saved_with_a_byte_order_mark_embed_as_their_text(tmp_path):
    """Notepad's "UTF-8 with BOM" (and PowerShell 5's utf8): the BOM stayed at the start of the text, 3 more tokens."""
    (tmp_path / "bom.txt").write_bytes(b"\xef\xbb\xbf" + "A red circle".encode())
    assert indexing._read_text(tmp_path / "bom.txt") == "A red circle"


def test_output_outside_the_consoles_code_page_is_escaped(index_dir, monkeypatch):
    """Windows writes a redirected stdout in cp1252 with errors='strict': a query or file name outside it made
    the command fail (exit 1, UnicodeEncodeError) after the search was done."""
    import io
    import sys

    raw = io.BytesIO()
    monkeypatch.setattr(sys, "stdout", io.TextIOWrapper(raw, encoding="cp1252", write_through=True))
    assert cli.main(["query", str(index_dir), "海滩日落", "--no-picture", "--no-progress"]) == 0
    out = raw.getvalue().decode("cp1252")
    assert "\\u6d77\\u6ee9\\u65e5\\u843d" in out
    assert _table_rows(out)


def test_the_index_folder_is_recognised_under_another_spelling(tmp_path, sample_folder, monkeypatch, capsys):
    """On macOS' case-insensitive disks `photos` is the folder `Photos`, and `resolve()` keeps the case it was given:
    the guard against indexing into the indexed folder, and the index folder's exclusion from the scan, compared
    resolved names and missed it. A symlink stands in for the second spelling, with `resolve()` leaving it as is."""
    monkeypatch.setattr(indexing.Path, "resolve", lambda self, strict=False: indexing.Path(os.path.abspath(self)))
    monkeypatch.setattr(indexing, "_make_embedder", lambda *a, **k: pytest.fail("the model was loaded"))
    folder = tmp_path / "Photos"
    (folder / "Index").mkdir(parents=True)
    shutil.copy(sample_folder / "red_circle.png", folder)
    shutil.copy(sample_folder / "blue_square.png", folder / "Index" / "results-a-query.png")
    (tmp_path / "photos").symlink_to(folder, target_is_directory=True)
    (folder / "index").symlink_to(folder / "Index", target_is_directory=True)
    code, _, err = _run(capsys, "index", folder, "--index-dir", tmp_path / "photos", "--model", "tiny")
    _assert_one_line_error(code, err, 2, "must not be the folder being indexed")
    scan = cli.scan_folder(folder, exclude=[folder / "index"])
    assert [path.name for path, _ in scan.files] == ["red_circle.png"]


def test_demo_with_an_embedding_model_of_ones_own_passes_a_reranker(tmp_path, monkeypatch):
    # `--model PATH` without `--reranker` put None into the query commands' argument lists.
    from qwen3vl_integrations import demo

    commands = []
    monkeypatch.setattr(demo, "generate_sample_data", lambda folder: [])
    monkeypatch.setattr(demo.cli, "main", lambda argv: commands.append(list(argv)) or 0)
    assert demo.main(["--model", str(tmp_path / "my-embedding-model"), "--out", str(tmp_path / "demo")]) == 0
    queries = [command for command in commands if command[0] == "query"]
    assert len(queries) == len(demo.QUERIES)
    for command in queries:
        assert all(isinstance(argument, str) for argument in command)
        assert command[command.index("--reranker") + 1] == cli.REAL_RERANKER_MODEL


def test_demo_with_an_embedding_model_of_ones_own_reports_a_failed_query(tmp_path, monkeypatch, capsys):
    # The offline hint after a failed query step took the reranker, None, and raised TypeError in Path(None).
    from qwen3vl_integrations import demo

    monkeypatch.setattr(demo, "generate_sample_data", lambda folder: [])
    monkeypatch.setattr(demo.cli, "main", lambda argv: 3 if argv[0] == "query" else 0)
    assert demo.main(["--model", str(tmp_path / "my-embedding-model"), "--out", str(tmp_path / "demo")]) == 3
    assert "make demo MODEL=tiny" in capsys.readouterr().err


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs a folder where nothing can be made: /proc")
def test_an_index_folder_that_cannot_be_made_is_refused_before_any_model_work(tmp_path, sample_folder, monkeypatch,
                                                                              capsys):
    """`os.access` said yes where the index could not be written: always for folders on Windows (it reads only the
    read-only attribute), and for root by the permission bits: the failure came after every file was embedded."""
    monkeypatch.setattr(indexing.os, "access", lambda *args, **kwargs: True)  # Windows' answer for a folder
    monkeypatch.setattr(indexing, "_make_embedder", lambda *a, **k: pytest.fail("the model was loaded"))
    folder = tmp_path / "photos"
    folder.mkdir()
    shutil.copy(sample_folder / "red_circle.png", folder)
    code, _, err = _run(capsys, "index", folder, "--index-dir", "/proc/qwen3vl-index", "--model", "tiny")
    _assert_one_line_error(code, err, 2, "cannot create or write the index folder")
    indexing._check_index_dir(tmp_path / "new" / "index", folder)  # a folder that can be made: the check leaves nothing
    assert sorted(p.name for p in tmp_path.iterdir()) == ["photos"]


def test_folders_on_a_disk_without_inode_numbers_are_told_apart(tmp_path, monkeypatch):
    """Some network and FAT drives give every file inode 0: compared by (device, inode), every folder was the
    indexed folder (and excluded from its own scan); there the resolved paths are compared."""
    from qwen3vl_integrations.core import paths

    folder = tmp_path / "photos"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "note.txt").write_text("a note")
    (tmp_path / "index").mkdir()
    real_stat = os.stat
    monkeypatch.setattr(paths.os, "stat", lambda p, *a, **k: os.stat_result((*real_stat(p, *a, **k)[:1], 0,
                                                                              *real_stat(p, *a, **k)[2:10])))
    assert paths.path_identity(folder) is None
    indexing._check_index_dir(tmp_path / "index", folder)
    with pytest.raises(cli.CLIError, match="must not be the folder being indexed"):
        indexing._check_index_dir(folder, folder)
    assert [p.name for p, _ in cli.scan_folder(folder, exclude=[tmp_path / "index"]).files] == ["note.txt"]


def test_files_are_embedded_in_calls_of_the_batch_size_or_of_many(tmp_path, sample_folder, tiny_embedding_path,
                                                                     monkeypatch):
    """Without --batch-size the core object has none (its default is per call and device), so the files go in calls
    of FILES_PER_CALL (the core sorts and overlaps within a call); with it, in calls of that size."""
    from qwen3vl_integrations import Qwen3VLEmbedder

    calls = []
    try_embed = Qwen3VLEmbedder.try_embed
    monkeypatch.setattr(Qwen3VLEmbedder, "try_embed",
                        lambda self, items, **kwargs: calls.append(len(items)) or try_embed(self, items, **kwargs))
    monkeypatch.setattr(indexing, "FILES_PER_CALL", 5)
    for extra, expected in (([], [5, 5, 3]), (["--batch-size", "6"], [6, 6, 1])):
        calls.clear()
        assert cli.main(["index", str(sample_folder), "--index-dir", str(tmp_path / f"index{len(extra)}"),
                         "--model", str(tiny_embedding_path), "--no-progress", *extra]) == 0
        assert calls == expected
