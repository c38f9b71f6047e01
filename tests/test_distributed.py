"""Two processes on CPU (gloo): the run trains, checkpoints and resumes, and equals one process with the
same global batch."""

import json
import re
import shutil
import signal
import subprocess

import train
from recipe.run_folder import read_trainer_state
from recipe.run_state import RunState

import pytest
import torch
from conftest import CORPUS, read_until, tiny_overrides, torchrun_command
from transformers import AutoModelForCausalLM

pytestmark = pytest.mark.slow


def torchrun(nproc: int, *args, cwd):
    return subprocess.run(torchrun_command(nproc, *args), cwd=cwd, capture_output=True, text=True, timeout=600)


def losses(output_dir):
    history = json.loads((output_dir / "trainer_state.json").read_text())["log_history"]
    return [(h["step"], h["loss"]) for h in history if "loss" in h]


@pytest.mark.skipif(shutil.which("torchrun") is None and not hasattr(torch, "distributed"), reason="no torchrun")
def test_two_processes_equal_one_with_the_same_global_batch(tmp_path, cache_dir):
    common = dict(max_steps=4, save_steps=2, eval_steps=2, bf16="false")  # fp32: weights compared at 1e-5
    two = tmp_path / "two"
    overrides = tiny_overrides(two, cache_dir, per_device_train_batch_size=2, **common) + ["samples.every_n_steps=2"]
    result = torchrun(2, *overrides, cwd=tmp_path)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert "batch: 2 processes x 2 sequences x 1 accumulation = 4 sequences = 256 tokens per step" in result.stdout
    assert result.stdout.count("precision:") == 1  # each process knows its rank before the first line is logged
    assert {p.name for p in two.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4"}
    samples = (two / "samples.jsonl").read_text().splitlines()
    assert len(samples) == 2 * 3  # steps 2 and 4, three prompts, written by the main process only

    one = tmp_path / "one"  # one process: in this one, which saves a launch
    assert train.main(["--no-prompt", *tiny_overrides(one, cache_dir, per_device_train_batch_size=4, **common)]) == 0
    for (s1, l1), (s2, l2) in zip(losses(one), losses(two), strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, abs=1e-4)
    a = AutoModelForCausalLM.from_pretrained(one / "final").state_dict()
    b = AutoModelForCausalLM.from_pretrained(two / "final").state_dict()
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)

    resumed = torchrun(2, "--resume", *overrides, "resume.extra_steps=2", cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "resuming from checkpoint-4 (step 4) for 2 steps" in resumed.stdout
    assert (two / "checkpoint-6").is_dir() and [s for s, _ in losses(two)][-2:] == [5, 6]


def test_a_signal_to_one_rank_stops_every_rank_at_the_same_step(tmp_path, cache_dir):
    """SIGTERM to rank 1 alone: rank 0 learns of it through the all-reduce, both stop after the same step
    and write one complete checkpoint, and nothing hangs."""
    from recipe.run_folder import checkpoint_step

    import psutil

    out = tmp_path / "run"
    never = dict(max_steps=100000, save_steps=100000, eval_steps=100000, per_device_train_batch_size=2)
    command = torchrun_command(2, *tiny_overrides(out, cache_dir, **never), "samples.every_n_steps=0")
    proc = subprocess.Popen(command, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = read_until(proc)  # both ranks are training
        workers = [p for p in psutil.Process(proc.pid).children(recursive=True) if "train.py" in " ".join(p.cmdline())]
        rank1 = next(p for p in workers if p.environ().get("RANK") == "1")
        rank1.send_signal(signal.SIGTERM)
        rest, _ = proc.communicate(timeout=180)
    finally:  # a hang must not outlive the test
        for p in psutil.Process(proc.pid).children(recursive=True) if proc.poll() is None else []:
            p.kill()
        proc.kill()
    output = "".join(lines) + rest
    stopped = re.search(r"interrupted at step (\d+): saved checkpoint-(\d+)", output)
    assert stopped and stopped.group(1) == stopped.group(2), output[-3000:]
    saved = list(out.glob("checkpoint-*"))
    assert [p.name for p in saved] == [f"checkpoint-{stopped.group(1)}"]
    assert checkpoint_step(saved[0]) == int(stopped.group(1))


def test_two_process_streamed_run_resumes_by_seeking(tmp_path, cache_dir):
    """Streaming with 2 processes: each reads its own part of the stream and records its position; resuming
    from checkpoint-4 seeks both there and gives the losses of the unbroken run."""
    corpus = tmp_path / "small.txt"
    corpus.write_text(open(CORPUS).read()[:8_000])
    out = tmp_path / "run"
    overrides = tiny_overrides(out, cache_dir, max_steps=8, save_steps=4, eval_steps=4, per_device_train_batch_size=2)
    overrides += [
        f"data.path={corpus}",
        "data.streaming=true",
        "data.sample_by=paragraph",
        "data.max_validation_blocks=3",
    ]
    straight = torchrun(2, *overrides, cwd=tmp_path)
    assert straight.returncode == 0, straight.stdout[-3000:] + straight.stderr[-3000:]
    expected = losses(out)
    saved = RunState.from_trainer_state(read_trainer_state(out / "checkpoint-4")).stream_positions
    assert [p["block"] for p in saved] == [8, 8]  # 4 steps x 2 blocks each
    assert saved[0]["start"] != saved[1]["start"]  # two streams, not one
    shutil.rmtree(out / "checkpoint-8")
    shutil.rmtree(out / "final")
    resumed = torchrun(2, "--resume", *overrides, cwd=tmp_path)
    assert resumed.returncode == 0, resumed.stdout[-3000:] + resumed.stderr[-3000:]
    assert "streaming: continuing at block 8 of the stream in each process's part without reading" in resumed.stdout
    got = losses(out)
    assert [s for s, _ in got] == list(range(1, 9))
    for (s1, l1), (s2, l2) in zip(expected, got, strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, abs=1e-5)
