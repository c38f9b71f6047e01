"""Faults an operator meets: two runs into one folder, a disk that fills during a save, a stop signal during
long sample generation, and a resume with another batch size."""

import errno
import signal
import subprocess
import sys
import time

import train
from recipe.run_folder import RunFolder, checkpoint_step
from recipe.trainer import RecipeTrainer

import pytest
import torch
from conftest import ROOT, StopAt, tiny_overrides

pytestmark = pytest.mark.slow


def start(overrides, cwd):
    return subprocess.Popen(
        [sys.executable, "-u", str(ROOT / "train.py"), "--no-prompt", *overrides],
        cwd=cwd,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_runs_started_together_into_one_folder(tmp_path, cache_dir):
    out = tmp_path / "run"
    overrides = tiny_overrides(out, cache_dir, max_steps=4, save_steps=2, eval_steps=2) + ["samples.every_n_steps=0"]
    first, second = start(overrides, tmp_path), start(overrides, tmp_path)
    results = [p.communicate(timeout=600) + (p.returncode,) for p in (first, second)]
    codes = sorted(code for _, _, code in results)
    assert codes == [0, 2], results
    _, err, _ = next(r for r in results if r[2] == 2)
    errors = [line for line in err.splitlines() if line.startswith("error:")]
    # the second stops at the lock, or, if the first was already done, at its checkpoints
    assert len(errors) == 1 and ("is in use by another run (PID " in errors[0] or "already holds" in errors[0]), err
    assert "Traceback" not in err
    assert {p.name for p in out.glob("checkpoint-*")} == {"checkpoint-2", "checkpoint-4"}
    assert not (out / "_run.lock").exists()  # released at the end


def test_disk_full_during_a_save_keeps_the_previous_checkpoint(tmp_path, cache_dir, capsys, monkeypatch):
    out = tmp_path / "run"
    overrides = tiny_overrides(out, cache_dir, max_steps=6, save_steps=2, eval_steps=100) + ["samples.every_n_steps=0"]
    real_save = torch.save

    def save_until_the_disk_fills(obj, f, *args, **kwargs):
        if "checkpoint-4" in str(f):
            raise OSError(errno.ENOSPC, "No space left on device", str(f))
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_the_disk_fills)
    assert train.main(overrides) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: step 4: writing ") and "No space left on device" in err[-1], err[-1]
    assert "removed the partial checkpoint-4; checkpoint-2 is intact, continue with --resume" in err[-1]
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"] and checkpoint_step(out / "checkpoint-2")
    assert not (out / "_run.lock").exists()
    monkeypatch.setattr(torch, "save", real_save)
    assert train.main(["--resume", *overrides]) == 0  # the disk has room again
    assert RunFolder(out).latest_checkpoint()[0].name == "checkpoint-6"


def test_sigterm_during_long_samples_saves_within_seconds(tmp_path, cache_dir):
    out = tmp_path / "run"
    overrides = tiny_overrides(out, cache_dir, max_steps=20, save_steps=2, eval_steps=100, logging_steps=1)
    overrides += ["samples.every_n_steps=2", "samples.max_new_tokens=4000", "samples.temperature=0"]
    proc = start(overrides, tmp_path)
    try:
        deadline = time.time() + 300
        while not (out / "checkpoint-2" / "trainer_state.json").exists():  # samples start after this save
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.2)
        time.sleep(2)
        sent = time.time()
        proc.send_signal(signal.SIGTERM)
        stdout, stderr = proc.communicate(timeout=120)
        waited = time.time() - sent
    finally:
        proc.kill()
    assert proc.returncode == train.EXIT_INTERRUPTED, stdout[-2000:] + stderr[-2000:]
    assert waited < 20, f"took {waited:.0f} s to stop"
    assert "interrupted at step 2: saved checkpoint-2" in stdout
    assert [p.name for p in out.glob("checkpoint-*")] == ["checkpoint-2"]
    assert not (out / "samples.jsonl").exists()  # the cut-short samples are not written as if complete


class RecordBlocks:
    """Which blocks each training micro-batch held (patched into RecipeTrainer.compute_loss)."""

    def __init__(self, monkeypatch):
        self.seen: list[tuple] = []
        real = RecipeTrainer.compute_loss

        def compute_loss(trainer, model, inputs, *args, **kwargs):
            if model.training:  # not the evaluation at the last step
                self.seen.extend(tuple(row.tolist()) for row in inputs["input_ids"])
            return real(trainer, model, inputs, *args, **kwargs)

        monkeypatch.setattr(RecipeTrainer, "compute_loss", compute_loss)


def test_resume_with_a_doubled_batch_trains_every_block_exactly_once(tmp_path, cache_dir, monkeypatch):
    settings = dict(save_steps=100, eval_steps=100, per_device_train_batch_size=4)
    straight_dir, out = tmp_path / "straight", tmp_path / "run"
    straight = RecordBlocks(monkeypatch)
    assert (
        train.main(tiny_overrides(straight_dir, cache_dir, max_steps=8, **settings) + ["samples.every_n_steps=0"]) == 0
    )
    expected = list(straight.seen)
    resumed = RecordBlocks(monkeypatch)
    overrides = tiny_overrides(out, cache_dir, max_steps=6, **settings) + ["samples.every_n_steps=0"]
    assert train.main(overrides, extra_callbacks=[StopAt(4)]) == train.EXIT_INTERRUPTED  # 16 blocks
    doubled = [o.replace("per_device_train_batch_size=4", "per_device_train_batch_size=8") for o in overrides]
    assert train.main(["--resume", *doubled]) == 0  # steps 5 and 6 of 8 blocks: 16 blocks more
    assert len(resumed.seen) == 32 and len(set(resumed.seen)) == 32  # no block twice
    assert resumed.seen == expected  # the same 32 blocks, in the same order


def test_a_changed_block_size_on_resume_stops_in_one_line(checkpointed_run, capsys):
    out, overrides = checkpointed_run
    before = sorted(p.name for p in out.iterdir())
    changed = [o.replace("data.block_size=64", "data.block_size=32") for o in overrides]
    assert train.main(["--resume", *changed]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == [
        "error: --resume: the config differs from checkpoint-4's: data.block_size 64 -> 32; resume with "
        "the same settings, or pass --resume-changed if you mean it"
    ]
    assert sorted(p.name for p in out.iterdir()) == before
