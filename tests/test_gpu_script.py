"""The planned GPU run (benchmarks/README.md) as a dry run: benchmarks/gpu.sh with the same settings, on the CPU with
the tiny checkpoint and a few inputs, so that a wrong option or a broken step shows here, not in scarce GPU time."""
from __future__ import annotations

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
# What the dry run makes smaller, where the planned command sets it (every other setting is the planned command's own).
SMALLER = {"SHORT_TEXTS": "16,8,64", "LONG_TEXTS": "2,2000,20000", "CONCURRENT_QUERIES": "8",
           "CONCURRENT_IMAGE_QUERIES": "4", "AB_RUNS": "1"}
DRY_RUN = {"DEVICE": "cpu", "MODEL": "tiny", "DTYPE": "float32", "QUICK": "1", "REPEATS": "1"}


def planned_settings() -> dict[str, str]:
    """The environment settings of the planned run's command line in benchmarks/README.md."""
    readme = (ROOT / "benchmarks" / "README.md").read_text()
    section = readme.split("## GPU", 1)[1]
    block = re.search(r"```bash\n(.*?)```", section, re.S)
    assert block, "benchmarks/README.md: no planned GPU command in the GPU section"
    words = shlex.split(block.group(1).replace("\\\n", " "))
    assert words[-2:] == ["bash", "benchmarks/gpu.sh"], words
    settings = dict(word.split("=", 1) for word in words[:-2])
    assert settings.pop("OUT") == "$OUT"
    return settings


def dry_run(tmp_path: Path, settings: dict[str, str]) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **settings, **DRY_RUN, "OUT": str(tmp_path / "out"), "CACHE_DIR": str(tmp_path / "cache"),
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    return subprocess.run(["bash", "benchmarks/gpu.sh"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)


def test_planned_gpu_run_works_as_a_dry_run(tmp_path):
    """Every step the planned command asks for runs and writes what it should."""
    settings = planned_settings()
    assert settings.get("CASES") and settings.get("AB_LEVER"), "the planned run lost its main rows or its A/B"
    run = dry_run(tmp_path, {**settings, **{name: value for name, value in SMALLER.items() if name in settings}})
    assert run.returncode == 0, run.stdout[-4000:] + run.stderr[-4000:]
    out = tmp_path / "out"
    log = (out / "gpu_log.txt").read_text()
    assert "stopped with status" not in log and "Traceback" not in log, log[-4000:]
    assert "dry run on cpu" in log
    rows = [line for line in (out / "gpu_table.md").read_text().splitlines() if line.startswith("| ")]
    calls = f"[calls of {settings['CALL_SIZE']} items]" if "CALL_SIZE" in settings else None
    for case in settings["CASES"].split(","):  # its main row, and its row in calls of CALL_SIZE
        main = [row for row in rows if row.startswith(f"| {case}: ") and "[" not in row.split("|")[1]]
        assert len(main) == 1, rows
        if calls and case in settings.get("CALL_SIZE_CASES", "embed_text,embed_images_448").split(","):
            assert sum(calls in row for row in rows if row.startswith(f"| {case}: ")) == 1, rows
    if settings.get("COMPILE"):
        for case in settings.get("COMPILE_CASES", "embed_text").split(","):  # max |diff| against the official
            compiled = [row for row in rows if row.startswith(f"| {case}: ") and "[torch.compile]" in row]
            assert len(compiled) == 1 and float(compiled[0].split("|")[-3]) <= 1e-5, rows
    for case in filter(None, settings.get("PROFILE_CASES", "embed_text,embed_images_448").split(",")):
        assert case in (out / "gpu_profile.txt").read_text()
    if "SHORT_TEXTS" in settings:
        assert f"[batch_size={settings.get('SHORT_BATCH_SIZE', '256')}]" in (out / "gpu_short_texts.md").read_text()
    if "LONG_TEXTS" in settings:
        assert "| embed_text: " in (out / "gpu_long_texts.md").read_text()
        assert "Lever `long-text-cut`" in (out / "gpu_long_texts_lever.txt").read_text()
    if "CONCURRENT_CLIENTS" in settings:
        concurrent = (out / "gpu_concurrent_queries.md").read_text()
        for clients in settings["CONCURRENT_CLIENTS"].split(","):
            assert f"| text | {clients} | ours |" in concurrent
            assert f"| image 448px | {clients} | ours |" in concurrent or not settings.get("CONCURRENT_IMAGE_QUERIES")
    lever = (out / "gpu_lever.txt").read_text()
    assert f"Lever `{settings['AB_LEVER']}`" in lever
    for case in settings["AB_CASES"].split(","):
        assert f"| {case} |" in lever


def test_a_failing_step_fails_the_script(tmp_path):
    """A main run that cannot start (an unknown case) is reported and makes the script exit non-zero."""
    run = dry_run(tmp_path, {"CASES": "no_such_case", "ALL_LEVERS": "0", "PROFILE_CASES": "",
                             "HOST_PIXELS_CASES": "", "UNQUEUED_CASES": ""})
    assert run.returncode != 0
    assert "main run stopped with status" in (tmp_path / "out" / "gpu_log.txt").read_text()

