"""Smoke runs of the benchmark scripts at tiny sizes (no timing assertions)."""
from __future__ import annotations

import json

import pytest


def test_quantization_benchmark_smoke(tmp_path, capsys):
    from benchmarks.quantization import PROFILES, main

    out = tmp_path / "q.json"
    table = main(["--n", "2000", "--dim", "256", "--dims", "256,128,64", "--queries", "8", "--repeat", "1",
                  "--json", str(out)])
    printed = capsys.readouterr().out
    assert table in printed
    lines = table.splitlines()
    assert lines[0].startswith("| dims | precision | bytes/vector | ms/query | recall@10 vs float32@256 |")
    body = [[c.strip() for c in line.strip("|").split("|")] for line in lines[2:]]
    assert [(int(r[0]), r[1]) for r in body] == [(d, p) for d in (256, 128, 64) for p in PROFILES]
    nbytes = {(int(r[0]), r[1]): int(r[2].replace(",", "")) for r in body}
    assert nbytes[(256, "float32")] == 1024 and nbytes[(128, "int8")] == 128 and nbytes[(64, "binary")] == 8
    assert nbytes[(64, "binary+int8 rescore x4")] == 72
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == 18
    for r in rows:
        assert 0.0 <= r["recall_at_10_vs_full_float32"] <= 1.0 and r["ms_per_query"] >= 0.0
        if r["precision"] == "float32":
            assert r["recall_at_10_vs_same_dims_float32"] == 1.0
    assert rows[0]["recall_at_10_vs_full_float32"] == 1.0  # the baseline itself


def test_throughput_smoke(tmp_path):
    """The throughput benchmark end to end on the tiny checkpoints: every case runs, ours equals the baseline."""
    from benchmarks.throughput import CASES, main

    out_json, out_md = tmp_path / "t.json", tmp_path / "t.md"
    result = main(["--model", "tiny", "--device", "cpu", "--quick", "--cache-dir", str(tmp_path / "cache"),
                   "--json", str(out_json), "--markdown", str(out_md)])
    cases = {c["name"]: c for c in result["cases"]}
    assert list(cases) == list(CASES)
    for name, case in cases.items():
        assert case["errors"] == [], name
        assert case["items"] > 0 and case["tokens"] > 0, name
        assert case["ours_items_per_s"] > 0 and case["baseline_items_per_s"] > 0, name
        assert case["max_abs_diff"] is not None and case["max_abs_diff"] <= 1e-5, name
        # Our planner never pads more than the official fixed chunks of 8 (or one pair per pass).
        assert case["padded_tokens_ours"] <= max(case["padded_tokens_baseline"], case["tokens"]) * 1.25, name
    assert cases["embed_mixed"]["patches"] > 0 and cases["rerank_images"]["patches"] > 0
    table = out_md.read_text()
    rows = [line for line in table.splitlines() if line.startswith("| ") and not line.startswith("| case")]
    assert [row.split("|")[1].strip().split(":")[0] for row in rows] == list(CASES)
    assert "max \\|diff\\|" in table and table == result["markdown"]
    payload = json.loads(out_json.read_text())
    assert payload["final"] is True and set(payload["ratios"]) == set(CASES)
    assert payload["environment"]["device"] == "cpu" and payload["environment"]["torch"]


def test_throughput_smoke_with_whole_pairs(tmp_path):
    """--share-query-prefix off: our reranker scores each pair whole and still equals the baseline."""
    from benchmarks.throughput import main

    result = main(["--model", "tiny", "--device", "cpu", "--quick", "--cache-dir", str(tmp_path / "cache"),
                   "--cases", "rerank_text,rerank_image_query", "--share-query-prefix", "off"])
    assert result["environment"]["share_query_prefix"] == "off"
    for case in result["cases"]:
        assert case["errors"] == [] and case["max_abs_diff"] <= 1e-5, case["name"]
        assert case["padded_tokens_ours"] >= case["tokens"], case["name"]  # every pair ran whole
    assert "Shared query prefix off" in result["markdown"]


def test_throughput_extra_rows_without_the_shared_query_part(tmp_path):
    """--extra-whole-pairs times our reranker again with share_query_prefix off, next to the main rows."""
    from benchmarks.throughput import main

    result = main(["--model", "tiny", "--device", "cpu", "--quick", "--cache-dir", str(tmp_path / "cache"),
                   "--cases", "rerank_text,rerank_image_query", "--extra-whole-pairs", "rerank_text,rerank_image_query"])
    main_rows, extra_rows = result["cases"][:2], result["cases"][2:]
    assert [c["name"] for c in extra_rows] == ["rerank_text", "rerank_image_query"]
    for shared, whole in zip(main_rows, extra_rows):
        assert "[share_query_prefix=off]" in whole["description"] and whole["errors"] == []
        assert whole["ours_items_per_s"] > 0 and whole["tokens"] == shared["tokens"]
        assert shared["padded_tokens_ours"] < shared["tokens"] <= whole["padded_tokens_ours"]


def test_throughput_extra_rows_with_the_shared_query_part(tmp_path):
    """--extra-shared-query-part times our reranker again with share_query_prefix on (the main row here: off)."""
    from benchmarks.throughput import main

    result = main(["--model", "tiny", "--device", "cpu", "--quick", "--cache-dir", str(tmp_path / "cache"),
                   "--cases", "rerank_text", "--share-query-prefix", "off", "--extra-shared-query-part", "rerank_text"])
    whole, shared = result["cases"]
    assert "[share_query_prefix=on]" in shared["description"] and shared["errors"] == []
    assert shared["max_abs_diff"] <= 1e-5
    assert shared["padded_tokens_ours"] < shared["tokens"] <= whole["padded_tokens_ours"]


def test_throughput_extra_rows_with_the_stock_rms_norm(tmp_path):
    """--extra-stock-rms-norm times ours again with transformers' RMSNorm; the fused one is back afterwards."""
    from benchmarks.throughput import main
    from qwen3vl_integrations.core import loading

    result = main(["--model", "tiny", "--device", "cpu", "--quick", "--cache-dir", str(tmp_path / "cache"),
                   "--cases", "embed_text,rerank_text", "--extra-whole-pairs", "rerank_text",
                   "--extra-stock-rms-norm", "embed_text,rerank_text"])
    main_rows, extra_rows = result["cases"][:2], result["cases"][3:]
    assert "[share_query_prefix=off]" in result["cases"][2]["description"]
    assert [c["name"] for c in extra_rows] == ["embed_text", "rerank_text"]  # one per main row, none of extra rows
    for fused, stock in zip(main_rows, extra_rows):
        assert "[stock RMSNorm]" in stock["description"] and stock["errors"] == []
        assert stock["ours_items_per_s"] > 0 and stock["tokens"] == fused["tokens"]
    loaded = [m for m in loading._REGISTRY.values() if "tiny" in m.key.path]
    assert loaded and all("forward" in vars(m.backbone.language_model.norm) for m in loaded)


def test_throughput_extra_rows_in_calls_of_a_few_items(tmp_path, monkeypatch):
    """--extra-call-size times our embedder again with its inputs handed over in calls of that many items (as
    LlamaIndex's embed_batch_size chunks them), with the same outputs."""
    from benchmarks.throughput import main
    from qwen3vl_integrations import Qwen3VLEmbedder

    sizes: list[int] = []
    embed = Qwen3VLEmbedder.embed

    def recording(self, items, **kwargs):
        sizes.append(len(items))
        return embed(self, items, **kwargs)

    monkeypatch.setattr(Qwen3VLEmbedder, "embed", recording)
    result = main(["--model", "tiny", "--device", "cpu", "--quick", "--cache-dir", str(tmp_path / "cache"),
                   "--cases", "embed_text", "--limit", "8", "--extra-call-size", "3", "--extra-call-cases", "embed_text"])
    main_row, extra_row = result["cases"]
    assert "[calls of 3 items]" in extra_row["description"] and extra_row["errors"] == []
    assert extra_row["items"] == main_row["items"] == 8 and extra_row["max_abs_diff"] <= 1e-5
    assert sizes[-3:] == [3, 3, 2]  # the extra row's last timed run
    assert extra_row["passes_ours"] >= 3 and extra_row["passes_baseline"] == main_row["passes_baseline"] == 1
    assert 8 in sizes  # the main row's calls took all inputs at once


def test_throughput_short_texts_and_a_batch_size_row(tmp_path):
    """--texts sets embed_text's corpus (no issue target then) and --extra-batch-size times ours again with that many
    items at most per forward pass."""
    from benchmarks.throughput import main

    result = main(["--model", "tiny", "--device", "cpu", "--quick", "--cache-dir", str(tmp_path / "cache"),
                   "--cases", "embed_text", "--texts", "10,4,12", "--extra-batch-size", "2"])
    main_row, extra_row = result["cases"]
    assert main_row["items"] == extra_row["items"] == 10 and "4-12 tokens" in result["markdown"]
    assert "[batch_size=2]" in extra_row["description"] and extra_row["max_abs_diff"] <= 1e-5
    assert extra_row["passes_ours"] >= 5 > main_row["passes_ours"]


def test_the_issue_targets_apply_to_the_issue_inputs_only():
    import argparse

    import torch

    from benchmarks.throughput import CaseResult, check_target

    def target(name: str, **options: str | None) -> str | None:
        args = argparse.Namespace(**{"model": "small", "dtype_name": "float32", "texts": None, "rerank_docs": None,
                                     "quick": False, "limit": None, **options})
        row = CaseResult(name, "", 1, "items", ratio=5.0, max_abs_diff=0.0)
        check_target(row, args, torch.device("cpu"))
        return row.target

    assert target("embed_text") and target("rerank_text") and target("rerank_text", texts="8,4,12")
    assert target("embed_text", texts="8,4,12") is None and target("rerank_text", rerank_docs="4,10,20") is None
    assert target("embed_mixed") and target("embed_mixed", limit=8) is None
    assert target("embed_mixed", quick=True) is None


def test_throughput_extra_rows_of_the_core_switches(tmp_path):
    """--extra-padding-mask, --extra-whole-last-layer, --extra-tower-vision-layout, --extra-masked-cached-rows,
    --extra-unqueued and --extra-long-rows-bias (and --extra-host-pixels, the same on CPU) time ours again with the
    padding mask sent, the last layer run at every position, the vision layout computed by the tower, the cached rows
    attending through a mask, each output read before the next batch and long cached rows through the causal bias;
    the core's settings are back afterwards, --profile profiled the main row only, and --rerank-docs set the
    documents."""
    from benchmarks.throughput import main
    from qwen3vl_integrations.core import lower_right_attention, pixels, runner

    profile = tmp_path / "profile.txt"
    result = main(["--model", "tiny", "--device", "cpu", "--quick", "--cache-dir", str(tmp_path / "cache"),
                   "--cases", "embed_text,rerank_text,embed_images_448", "--limit", "8",
                   "--profile", "embed_text", "--profile-out", str(profile),
                   "--extra-whole-last-layer", "embed_text,rerank_text",
                   "--extra-padding-mask", "embed_text,rerank_text", "--extra-tower-vision-layout", "embed_images_448",
                   "--extra-masked-cached-rows", "rerank_text", "--extra-unqueued", "embed_text",
                   "--extra-host-pixels", "embed_images_448", "--extra-long-rows-bias", "rerank_text",
                   "--rerank-docs", "3,500,600"])
    main_rows, extra_rows = {c["name"]: c for c in result["cases"][:3]}, result["cases"][3:]
    assert [c["name"] for c in extra_rows] == (["embed_text", "rerank_text"] * 2
                                               + ["embed_images_448", "rerank_text", "embed_text", "embed_images_448",
                                                  "rerank_text"])
    labels = (["[whole last layer]"] * 2 + ["[padding mask sent]"] * 2 + ["[vision layout computed by the tower]"]
              + ["[cached rows with transformers' mask]", "[each output read before the next batch is queued]",
                 "[pixels normalised on the host]", "[long cached rows with the causal bias (a mask on the CPU)]"])
    assert main_rows["rerank_text"]["items"] == 3 and main_rows["rerank_text"]["tokens"] > 3 * 500
    for row, label in zip(extra_rows, labels):
        main_row = main_rows[row["name"]]
        assert label in row["description"] and row["errors"] == []
        assert row["tokens"] == main_row["tokens"] and row["max_abs_diff"] <= 1e-5
    assert runner.SEND_PADDING_MASK is False and runner.POOL_IN_LAST_LAYER is True and runner.VISION_LAYOUT_ON_HOST
    assert lower_right_attention.CACHED_ROWS_LOWER_RIGHT is True and runner.QUEUE_NEXT_BATCH is True
    assert pixels.NORMALIZE_ON_DEVICE is True and lower_right_attention.CPU_LONG_ROWS_CAUSAL is True
    assert profile.read_text().count("## embed_text (ours)") == 1  # the main row's profile, not the extra rows'


@pytest.mark.parametrize(("lever", "cases"), [("padding-mask", "embed_text,rerank_text"),
                                             ("pooled-last-layer", "embed_text,rerank_text"),
                                             ("vision-layout", "embed_images_448,rerank_images"),
                                             ("lower-right", "rerank_text,rerank_images"),
                                             ("queue-next-batch", "embed_text,rerank_images"),
                                             ("pixels-on-device", "embed_images_448,rerank_images"),
                                             ("cut-patches+grid-layouts+backend-token-ids",
                                              "embed_images_448,rerank_images"),
                                             ("vision-rotary+text-rotary", "embed_images_448,rerank_text"),
                                             ("cpu-long-rows", "rerank_text,rerank_images"),
                                             ("fused-projections", "embed_text,rerank_text")])
def test_levers_alternate_the_switch_and_restore_it(tmp_path, lever, cases):
    """benchmarks.levers times ours with the lever on and off in turn; outputs agree and the core's value is back."""
    from benchmarks.levers import main
    from benchmarks.throughput import CORE_SWITCHES
    from qwen3vl_integrations.core import (encoding, fused_projections, lower_right_attention, pixels, rotary, runner,
                                           vision_layout)

    text = main(["--lever", lever, "--model", "tiny", "--quick", "--runs", "2", "--cache-dir", str(tmp_path / "cache"),
                 "--cases", cases])
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith(("| embed_", "| rerank_"))]
    assert len(rows) == 2
    for row in rows:
        assert len(row[4].split(" / ")) == 2 and float(row[5].rstrip(" |")) <= 1e-5
    assert runner.SEND_PADDING_MASK is False and runner.POOL_IN_LAST_LAYER is True and runner.VISION_LAYOUT_ON_HOST
    assert lower_right_attention.CACHED_ROWS_LOWER_RIGHT is True and runner.QUEUE_NEXT_BATCH is True
    assert pixels.NORMALIZE_ON_DEVICE is True
    assert pixels.CUT_PATCHES is True and encoding.TOKEN_IDS_FROM_BACKEND is True
    assert vision_layout.KEEP_GRID_LAYOUTS is True
    assert rotary.VISION_IN_FEWER_PASSES is True and rotary.TEXT_IN_FEWER_PASSES is True
    assert lower_right_attention.CPU_LONG_ROWS_CAUSAL is True and fused_projections.FUSED_PROJECTIONS is None
    assert all(f"`core.{CORE_SWITCHES[part][0]}`" in text for part in lever.split("+"))


def test_levers_take_an_option_of_our_objects(tmp_path, monkeypatch):
    """`--lever torch-compile` switches the objects' torch_compile option (here with torch's "eager" backend, which
    captures the graphs without code generation), with one warm-up run per setting before the timed ones."""
    from benchmarks import levers

    monkeypatch.setitem(levers.OPTION_LEVERS, "torch-compile", ("torch_compile", {"backend": "eager"}, None))
    calls: list[object] = []
    real = levers.lever_setting

    def recorded(chosen, on, embedder, reranker):
        calls.append(on)
        setting = real(chosen, on, embedder, reranker)
        assert embedder.torch_compile == reranker.torch_compile == ({"backend": "eager"} if on else None)
        return setting

    monkeypatch.setattr(levers, "lever_setting", recorded)
    text = levers.main(["--lever", "torch-compile", "--model", "tiny", "--quick", "--runs", "2", "--cache-dir",
                        str(tmp_path / "cache"), "--cases", "embed_text"])
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| embed_")]
    assert len(rows) == 1 and float(rows[0][5].rstrip(" |")) <= 1e-5
    assert "option `torch_compile`: {'backend': 'eager'} on, None off" in text
    assert calls == [True, False, True, False, False, True]  # warm-ups, then alternating runs


def test_throughput_extra_rows_for_several_worker_counts(tmp_path):
    """--extra-workers takes a list: a row for each count, on --extra-cases."""
    from benchmarks.throughput import main

    result = main(["--model", "tiny", "--device", "cpu", "--quick", "--cache-dir", str(tmp_path / "cache"),
                   "--cases", "embed_text,embed_images_448", "--limit", "4", "--extra-workers", "0,3",
                   "--extra-cases", "embed_images_448"])
    extra_rows = result["cases"][2:]
    assert [(c["name"], c["description"].rsplit("[", 1)[-1]) for c in extra_rows] == [
        ("embed_images_448", "workers=0]"), ("embed_images_448", "workers=3]")]
    assert all(row["errors"] == [] and row["max_abs_diff"] <= 1e-5 for row in extra_rows)


def test_preprocessing_benchmark_times_both_pixel_paths(tmp_path):
    """benchmarks.preprocessing times the host work per image for the CPU path and the CUDA path (on one thread and
    split over threads), and each step the core replaced; the CUDA path's patches are 8-bit, of one temporal slice (an eighth of the bytes), and the core's
    devices are back after."""
    from benchmarks.preprocessing import main
    from qwen3vl_integrations.core import pixels

    text = main(["--images", "4", "--size", "64", "--batch", "2", "--runs", "1", "--repeats", "2",
                 "--cache-dir", str(tmp_path)])
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| pixels") or line.startswith("| 8-bit")]
    assert len(rows) == 2 and all(float(row[1]) > 0 and float(row[2]) > 0 for row in rows)
    host_mib, device_mib = (float(row[6].split(" ")[0]) for row in rows)
    assert "(float32)" in rows[0][6] and "(uint8)" in rows[1][6]
    assert device_mib == pytest.approx(host_mib / 8, rel=0.02)
    assert pixels.DEVICE_TYPES == frozenset({"cuda"})
    steps = [line.split(" | ") for line in text.splitlines()
             if line.startswith(("| chat template", "| token", "| image patches", "| M-RoPE", "| vision tower"))]
    assert len(steps) == 7 and all(float(row[1]) > 0 and float(row[2]) > 0 for row in steps)


def test_cached_attention_benchmark_compares_both_paths():
    """benchmarks.cached_attention times both ways of the cached rows' attention per shape, says which one the core
    takes at its threshold, finds no difference, and leaves the core's settings as they were."""
    from benchmarks.cached_attention import main
    from qwen3vl_integrations.core import lower_right_attention

    text = main(["--cached", "8,700", "--rows", "16,1000", "--heads", "4,2,8", "--runs", "1", "--batch-tokens", "64"])
    rows = [line.split(" | ") for line in text.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert [(row[0], row[1], row[6]) for row in rows] == [("| 8", "16", "bias"), ("| 8", "1000", "causal"),
                                                          ("| 700", "16", "bias"), ("| 700", "1000", "bias")]
    assert all(float(row[3]) > 0 and float(row[4]) > 0 and float(row[7].rstrip(" |")) <= 1e-6 for row in rows)
    assert lower_right_attention.CPU_LONG_ROWS_CAUSAL is True and lower_right_attention.CPU_LONG_ROWS_MIN_EXCESS == 384


def test_operations_benchmark_counts_each_setting(tmp_path):
    """benchmarks.operations counts the language model's operations per pass and per layer: the official procedure
    runs transformers' modules (more per layer than ours), and switching the joined projections or the fused RMSNorm
    off adds operations to each layer; the core's settings and modules are back after."""
    from benchmarks.operations import main
    from qwen3vl_integrations.core import fused_projections, runner

    text = main(["--model", "tiny", "--texts", "6", "--max-tokens", "40", "--cache-dir", str(tmp_path / "cache"),
                 "--host-time", "--host-layers", "3", "--host-calls", "1", "--host-rounds", "1"])
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| setting")}
    assert all(float(row[5].rstrip(" |")) > 0 for row in rows.values())  # host ms per call
    per_layer = {label: int(row[3]) for label, row in rows.items()}
    ours = per_layer["ours"]
    assert per_layer["official procedure (transformers' modules)"] > ours > 0
    assert per_layer["ours, one matrix product per projection, q/k norms and rotation per tensor"] == ours + 10
    assert per_layer["ours, transformers' RMSNorm"] > ours
    assert all(int(row[1]) > 0 for row in rows.values())
    assert fused_projections.FUSED_PROJECTIONS is None and runner.SEND_PADDING_MASK is False


def test_concurrent_queries_benchmark_times_the_three_ways(tmp_path):
    """benchmarks.concurrent_queries serves the same text queries, then image queries, from 1 and 3 client threads
    three ways, and gives the official procedure's vectors within 1e-5 each time."""
    from benchmarks.concurrent_queries import main

    out = tmp_path / "table.md"
    text = main(["--model", "tiny", "--clients", "1,3", "--queries", "6", "--image-queries", "6", "--image-size", "64",
                 "--repeats", "1", "--cache-dir", str(tmp_path / "cache"), "--output", str(out)])
    assert out.read_text().strip() == text.strip()
    rows = [[cell.strip() for cell in line.strip("|").split("|")] for line in text.splitlines()
            if line.startswith("| ") and not line.startswith("| queries")]
    assert [tuple(row[:3]) for row in rows] == [
        (kind, clients, way) for kind in ("text", "image 64px") for clients in ("1", "3")
        for way in ("ours", "ours, one pass per call", "official procedure, calls in turn")]
    for row in rows:
        assert float(row[3]) > 0 and float(row[8]) <= 1e-5
        passes = int(row[7])
        assert 1 <= passes <= 6 and (passes == 6 or row[2] == "ours")
    assert rows[0][7] == "6" and rows[6][7] == "6"  # one client: nothing to join
    assert "6 image queries of 64x64 px" in text


def test_a_model_built_in_memory_is_the_one_the_core_objects_load(tmp_path):
    """`--build memory` (the 2B shape on GPUs) registers the model under the key the core looks up: the folders
    hold a config and a processor but no weights, so a missed key fails at loading (it did on CUDA: 'cuda'
    registered, 'cuda:0' looked up)."""
    import torch

    from benchmarks.throughput import build_in_memory
    from qwen3vl_integrations import Qwen3VLEmbedder, Qwen3VLReranker
    from qwen3vl_integrations.core import loading

    before = set(loading._REGISTRY)
    embedding_path, reranker_path = build_in_memory("tiny", torch.float32, torch.device("cpu"), tmp_path)
    try:
        embedder = Qwen3VLEmbedder(embedding_path, device="cpu", dtype="float32")
        reranker = Qwen3VLReranker(reranker_path, device="cpu", dtype="float32")
        assert embedder.load().backbone is reranker.load().backbone  # one model, both roles, nothing read from disk
        assert embedder.embed(["a short text"]).shape[0] == 1
    finally:
        for key in set(loading._REGISTRY) - before:  # other tests' shared models stay
            del loading._REGISTRY[key]
