"""benchmarks/gpu_check.sh --cpu-rehearsal: every phase of the GPU check runs on the CPU with the tiny model and
writes what it should, so that no line of it meets a GPU untried; a cut, a phase that cannot start, and a phase
that exits 0 without its work each end up in the summary and the exit status."""

from __future__ import annotations

import os
import re
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import ROOT

pytestmark = pytest.mark.slow

SCRIPT = ROOT / "benchmarks" / "gpu_check.sh"
FILES = {"summary.md", "log.txt", "loss_curve.png", "samples.txt", "switches.md", "env.txt"}
PROMPTS = ("ROMEO:", "First Citizen:", "To be, or not to be")


def rehearse(tmp_path: Path, *args: str, python: str = sys.executable, **env_vars: str):
    """Run the rehearsal offline into tmp_path/out (the data cache and the runs in tmp_path/work)."""
    env = {k: v for k, v in os.environ.items() if k != "OUT" and not k.startswith("GPU_CHECK_")}
    env.update(
        HF_HUB_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="disabled",
        HF_HOME=str(tmp_path / "hf"),
        PYTHON=python,
        **env_vars,
    )
    out, work = tmp_path / "out", tmp_path / "work"
    start = time.monotonic()
    proc = subprocess.run(
        ["bash", str(SCRIPT), "--cpu-rehearsal", "--out", str(out), "--work", str(work), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    seconds = time.monotonic() - start
    summary = (out / "summary.md").read_text() if (out / "summary.md").is_file() else ""
    return proc, out, summary, seconds


def section(summary: str, heading: str) -> str:
    """The text of the `## heading...` section, up to the next `## `."""
    m = re.search(rf"^## {re.escape(heading)}.*?(?=^## |\Z)", summary, re.M | re.S)
    assert m, f"no section '## {heading}' in summary.md:\n{summary}"
    return m.group(0)


def phase_rows(summary: str) -> dict[str, tuple[str, str]]:
    """The summary's table of phases: name -> (status, wall seconds)."""
    table = section(summary, "Phases")
    rows = re.findall(r"^\| ([^|]+?) \| ([^|]+?) \| ([\d.]+) \|", table, re.M)
    return {name: (status, wall) for name, status, wall in rows if name != "phase"}


@pytest.fixture(scope="module")
def rehearsal(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("gpu-check")
    proc, out, summary, seconds = rehearse(tmp)
    print(f"rehearsal: {seconds:.0f} s")
    assert proc.returncode == 0, f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n{summary}"
    return out, summary, seconds


def test_every_phase_runs_and_passes_its_checks(rehearsal):
    _, summary, _ = rehearsal
    rows = phase_rows(summary)
    for phase in (
        "setup",
        "defaults",
        "baseline",
        "seeds",
        "resume",
        "switch: compile off",
        "switch: activation checkpointing on",
        "switch: transformers' sdpa with masks",
    ):
        assert phase in rows, f"{phase} missing from the table of phases:\n{summary}"
        status, wall = rows[phase]
        assert status == "ok" and float(wall) > 0, (phase, status, wall)
    assert rows["switch: Liger fused linear cross-entropy on"][0] in ("ok", "skipped")  # liger-kernel needs Triton
    assert "Cut for time" not in summary and "Failed" not in summary
    assert re.search(r"^Total: [\d.]+ s of a budget of \d+ s\.$", summary, re.M)


def test_the_output_folder_holds_the_few_files_the_device_returns(rehearsal):
    out, _, _ = rehearsal
    names = {p.name for p in out.iterdir()}
    assert names == FILES, names
    for path in out.iterdir():  # what the device machine's $OUT brings back: plain files, simple names, < 16 MiB
        assert path.is_file() and re.fullmatch(r"[A-Za-z0-9._-]+", path.name) and path.stat().st_size < 16 * 2**20
    png = (out / "loss_curve.png").read_bytes()
    assert png[:8] == b"\x89PNG\r\n\x1a\n" and len(png) > 10_000
    log = (out / "log.txt").read_text()
    assert re.search(r"^\[ +\d+\.\ds\] step 20/20 \| loss ", log, re.M)  # time-stamped console lines
    for name in ("defaults", "baseline", "seeds", "resume"):
        assert re.search(rf"=== {name}: exit 0 after [\d.]+ s", log), name


def test_defaults_report_the_choices_the_first_step_and_the_throughput(rehearsal):
    _, summary, _ = rehearsal
    defaults = section(summary, "1. defaults")
    for line in ("precision: ", "speed: ", "attention: "):
        assert f"    {line}" in defaults
    assert re.search(r"time to the first step \(the compile included\): [\d.]+ s", defaults)
    assert re.search(r"median \*\*[\d,]+ tokens/s, MFU n/a\*\*", defaults)  # MFU only on a GPU with bf16 peak
    baseline = section(summary, "2. the recipe vs a hand-written loop")
    assert "| recipe (Trainer): " in baseline and "| baseline (plain PyTorch loop): " in baseline
    assert re.search(r"ratio recipe/hand-written loop: \d+\.\d{3}\*\* \(goal >= 0\.95: ", baseline)


def test_the_seeds_run_reports_losses_samples_and_the_extra_steps(rehearsal):
    out, summary, _ = rehearsal
    seeds = section(summary, "3. the seeds' run")
    assert "reached step 20 of 20" in seeds
    assert re.search(r"median \*\*[\d,]+ tokens/s", seeds)
    assert re.search(r"validation loss: [\d.]+ \(step 10\), [\d.]+ \(step 20\)", seeds)
    resume = section(summary, "4. --resume from checkpoint-20: 5 steps")
    assert "resuming from checkpoint-20 (step 20) for 5 steps at lr 0.0001" in resume
    assert re.search(r"train loss after the extra steps: [\d.]+ at step 25\*\*", resume)
    assert re.search(r"validation loss after the extra steps: [\d.]+ at step 25\*\* \(at step 20: [\d.]+\)", resume)
    samples = (out / "samples.txt").read_text()
    blocks = re.split(r"^=== step (\d+)(?: \(after --resume\))? ===$", samples, flags=re.M)[1:]
    steps = [int(s) for s in blocks[0::2]]
    assert steps == [10, 20, 25], steps
    for text in blocks[1::2]:
        assert all(f"--- {p!r}\n{p}" in text for p in PROMPTS)
    assert "=== step 25 (after --resume) ===" in samples


def test_the_switch_table_has_a_measured_row_per_switch(rehearsal):
    out, _, _ = rehearsal
    table = (out / "switches.md").read_text()
    for label, override in (
        ("compile off", "training.torch_compile=false"),
        ("activation checkpointing on", "training.activation_checkpointing=true"),
        ("transformers' sdpa with masks", "data.document_aware=true"),
    ):
        assert re.search(
            rf"^\| {re.escape(label)} \| `{re.escape(override)}` \([^)]*\) \| [\d,]+ \| .* \| ok \|$", table, re.M
        ), label
    assert re.search(r"^\| default \(phase 2\) \| .* \| [\d,]+ \| ", table, re.M)


def test_a_cut_seeds_run_is_resumed_from_the_checkpoint_it_saved(tmp_path):
    # 100,000 steps cannot finish in 15 s: the timeout stops the run, train.py saves a checkpoint, --resume goes on
    proc, _, summary, _ = rehearse(
        tmp_path, "--phases", "seeds,resume", "training.max_steps=100000", GPU_CHECK_P3_CAP="15"
    )
    assert proc.returncode == 3, f"{proc.stdout[-2000:]}\n{summary}"
    rows = phase_rows(summary)
    assert rows["seeds"][0] == "cut" and rows["resume"][0] == "ok", rows
    assert re.search(r"^\*\*Cut for time:\*\* seeds: stopped by its timeout after [\d.]+ s", summary, re.M)
    m = re.search(r"^## 4\. --resume from checkpoint-(\d+): 5 steps at lr/10: ok", summary, re.M)
    assert m and 0 < int(m.group(1)) < 100000, summary
    assert f"resuming from checkpoint-{m.group(1)} (step {m.group(1)}) for 5 steps" in summary


def test_a_phase_that_exits_0_without_its_work_fails(tmp_path):
    fake = tmp_path / "python"
    fake.write_text(
        f'#!/bin/sh\nif [ "$1" = train.py ]; then echo "pretending to train"; exit 0; fi\nexec {sys.executable} "$@"\n'
    )
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    proc, _, summary, _ = rehearse(tmp_path, "--phases", "defaults", python=str(fake))
    assert proc.returncode == 1, summary
    assert phase_rows(summary)["defaults"][0] == "failed"
    assert re.search(r"^\*\*Failed:\*\* defaults: exited 0 but check failed: no `precision:` line", summary, re.M)


def test_phases_that_do_not_fit_the_budget_are_not_started_and_say_so(tmp_path):
    # each phase needs more than any budget leaves (rather than a budget too short for them, which would also
    # cut the setup on a busy machine: a test of the clock, not of the script)
    needs = {f"GPU_CHECK_P{n}_MIN": "100000" for n in range(1, 6)}
    proc, out, summary, _ = rehearse(tmp_path, **needs)
    assert proc.returncode == 3, summary
    rows = phase_rows(summary)
    assert rows["setup"][0] == "ok"
    assert all(rows[p][0] == "not started" for p in ("defaults", "baseline", "seeds", "resume")), rows
    assert "it needs at least 100000" in section(summary, "1. defaults")
    assert (out / "log.txt").is_file() and (out / "env.txt").is_file()
