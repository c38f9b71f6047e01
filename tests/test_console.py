"""What a user reads: the quickstart, --resume, push.py --dry-run and generate.py, line by line, hold the
recipe's own lines and the library messages that matter, nothing of the noise below."""

import os
import subprocess
import sys

import pytest
from conftest import ROOT, tiny_overrides

pytestmark = pytest.mark.slow

NOISE = [
    "There were missing keys in the checkpoint",  # the tied head, on --resume
    "Generating train split",  # datasets, around a few seconds of work
    "Saving the dataset",
    "Writing model shards",  # transformers, at every checkpoint
    "Loading weights",
    "do not match the ones in the `trainer_state.json`",  # the Trainer on changed intervals: resume.py says it
    "reload check passed: '",  # push.py printing the generated text's repr
    "share=True",  # gradio naming its own argument, not the app's --share
    "Traceback",
]


def run(*args, cwd):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    result = subprocess.run(
        [sys.executable, *map(str, args)], cwd=cwd, capture_output=True, text=True, env=env, timeout=600
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result.stdout + result.stderr


def test_the_first_hour_reads_clean(tmp_path, cache_dir):
    out = tmp_path / "run"
    overrides = tiny_overrides(out, cache_dir, max_steps=4, save_steps=2, eval_steps=2, disable_tqdm="false")
    overrides = [*overrides, "samples.every_n_steps=3", "resume.extra_steps=2", f"data.cache_dir={tmp_path / 'c'}"]
    consoles = {
        "train": run(ROOT / "train.py", "--no-prompt", *overrides, cwd=tmp_path),
        "resume": run(
            ROOT / "train.py", "--resume", "--no-prompt", *overrides, "training.logging_steps=2", cwd=tmp_path
        ),
        "push": run(
            ROOT / "push.py",
            "--checkpoint",
            out / "final",
            "--repo-id",
            "me/tiny",
            "--dry-run",
            "--out",
            tmp_path / "pushed",
            cwd=tmp_path,
        ),
        "generate": run(
            ROOT / "generate.py", out / "final", "--prompt", "ROMEO:", "--max-new-tokens", "4", cwd=tmp_path
        ),
    }
    for name, console in consoles.items():
        for noise in NOISE:
            assert noise not in console, f"{name}: {noise!r} in\n{console[-4000:]}"
    for name in ("train", "resume"):  # the samples of the last step come before the run's last lines
        lines = consoles[name].splitlines()
        done = next(i for i, line in enumerate(lines) if " | done in " in line)
        assert all(i < done for i, line in enumerate(lines) if line.startswith("sample at step")), name
    assert "resuming from checkpoint-4 (step 4) for 2 steps at lr 0.0003" in consoles["resume"]
    assert 'reload check passed: it loads and generates 5 tokens after "The"' in consoles["push"]
    assert (out / "final" / "model.safetensors").stat().st_mode & 0o777 == 0o666 & ~current_umask()


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
