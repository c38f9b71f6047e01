"""train.py's own steps, without training: the command line, and what a CPU run of a GPU config says."""

from types import SimpleNamespace

import callbacks
import train
from callbacks import format_duration
from recipe import arguments

import pytest
from conftest import CORPUS, tiny_overrides


def test_resume_path_is_optional_and_overrides_are_not_paths():
    args = train.parse_args(["--resume", "training.max_steps=9", "tokenizer=x"])
    assert args.resume == "latest" and args.overrides == ["training.max_steps=9", "tokenizer=x"]
    assert train.parse_args(["--resume", "/some/checkpoint-5"]).resume == "/some/checkpoint-5"
    assert train.parse_args(["training.max_steps=9"]).resume is None
    assert train.parse_args(["--resume", "--resume-changed"]).resume_changed


def test_a_gpu_config_on_a_cpu_says_so_and_estimates_the_run(monkeypatch, capsys):
    added = []
    trainer = SimpleNamespace(add_callback=added.append)
    checked = SimpleNamespace(n_params=134_515_008, args=SimpleNamespace(max_steps=5000))
    monkeypatch.setattr(callbacks.torch.cuda, "is_available", lambda: False)
    callbacks.warn_if_cpu_run_is_long(trainer, checked)
    out = capsys.readouterr().out
    assert "cpu: this is a GPU run (135M parameters, 5,000 steps)" in out and "--config config_quickstart.yaml" in out
    clock = iter([100.0, 520.0])
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: next(clock))
    estimate = added[0]
    estimate.on_step_begin(None, None, None)
    estimate.on_step_end(None, SimpleNamespace(max_steps=5000, global_step=1), None)
    assert "cpu: the first step took 7:00; the 4,999 steps left would take about 24.3 days here" in (
        capsys.readouterr().out
    )
    # a small model on a CPU, or any model on a GPU, is left alone
    callbacks.warn_if_cpu_run_is_long(trainer, SimpleNamespace(n_params=3_000_000, args=checked.args))
    monkeypatch.setattr(callbacks.torch.cuda, "is_available", lambda: True)
    callbacks.warn_if_cpu_run_is_long(trainer, checked)
    assert len(added) == 1 and capsys.readouterr().out == ""


def test_durations_read_like_a_clock_then_in_days():
    assert [format_duration(s) for s in (5, 75, 3725, 3 * 86400)] == ["5 s", "1:15", "1:02:05", "3.0 days"]


def test_overrides_may_come_before_between_or_after_the_flags():
    args = train.parse_args(["training.report_to=none", "--no-prompt", "training.max_steps=5"])
    assert args.no_prompt and args.overrides == ["training.report_to=none", "training.max_steps=5"]
    args = train.parse_args(["data.block_size=64", "--resume", "checkpoint-4", "training.max_steps=9"])
    assert args.resume == "checkpoint-4" and args.overrides == ["data.block_size=64", "training.max_steps=9"]


@pytest.mark.slow
def test_a_corpus_smaller_than_a_batch_says_each_block_repeats(tmp_path, cache_dir, capsys):
    small = tmp_path / "small.txt"
    small.write_text(open(CORPUS).read()[:1_200])  # about 5 blocks of 64 tokens: 4 to train on, 1 held out
    overrides = tiny_overrides(tmp_path / "run", cache_dir, max_steps=1, per_device_train_batch_size=8)
    assert train.main([*overrides, f"data.path={small}", "samples.every_n_steps=0"]) == 0
    batch = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("batch: "))
    assert batch.endswith(
        "8 sequences = 512 tokens per step; the corpus has 4 training blocks, so each repeats within every step"
    )


@pytest.mark.parametrize(
    ("cuda", "use_cpu", "env", "expected"),
    [
        (False, False, "", True),
        (True, False, "", False),
        (True, True, "", True),
        (True, False, "true", True),
    ],
)
def test_the_first_process_state_is_the_one_the_trainer_will_build(cuda, use_cpu, env, expected, monkeypatch):
    """A CPU launch of several processes is one process each to accelerate unless told cpu=True (as
    TrainingArguments tells it when there is no GPU, with training.use_cpu, or with ACCELERATE_USE_CPU)."""
    monkeypatch.setattr(arguments.torch.cuda, "is_available", lambda: cuda)
    monkeypatch.setenv("ACCELERATE_USE_CPU", env) if env else monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    training = {"use_cpu": True} if use_cpu else {}
    assert arguments.on_cpu(training) is expected
    assert arguments.choose_precision({**training, "bf16": False}).endswith("on CUDA") is not expected
