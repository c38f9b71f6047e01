"""Callbacks leave training as they found it; resume pins the learning rate; checkpoints are checked."""

import random
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_MODEL, TOKENIZER, tiny_overrides
from transformers import get_wsd_schedule

import train
from callbacks import ResumedRunCallback, generate_samples
from config import SamplesConfig, load_config


@pytest.fixture(scope="module")
def tiny_model():
    cfg = load_config(None, TINY_MODEL)
    model = train.build_model(cfg, train.build_llama_config(cfg), "sdpa")
    model.gradient_checkpointing_enable()
    model.train()
    return model


def test_generate_samples_leaves_mode_rng_and_checkpointing_untouched(tiny_model, tokenizer):
    samples = SamplesConfig(prompts=["ROMEO:", "JULIET:"], max_new_tokens=5, seed=7)
    torch.manual_seed(123)
    random.seed(5)
    expected_torch, expected_py = torch.rand(3), random.random()
    torch.manual_seed(123)
    random.seed(5)
    first = generate_samples(tiny_model, tokenizer, samples)
    assert torch.equal(torch.rand(3), expected_torch) and random.random() == expected_py
    assert tiny_model.training and tiny_model.is_gradient_checkpointing
    assert generate_samples(tiny_model, tokenizer, samples) == first  # fixed seed: same samples
    assert [p for p, _ in first] == ["ROMEO:", "JULIET:"]


def test_resumed_run_callback_holds_a_constant_lr():
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = get_wsd_schedule(optimizer, num_warmup_steps=2, num_decay_steps=2, num_training_steps=10)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == 0.0  # end of the decay

    class State:
        max_steps = 20

        def compute_steps(self, args, max_steps):
            self.computed = max_steps

    state = State()
    ResumedRunCallback(constant_lr=1e-4).on_train_begin(None, state, None, optimizer=optimizer, lr_scheduler=scheduler)
    assert state.computed == 20
    assert scheduler.get_last_lr() == [1e-4]
    for _ in range(5):
        assert optimizer.param_groups[0]["lr"] == 1e-4
        optimizer.step()
        scheduler.step()
        assert scheduler.get_last_lr() == [1e-4]


@pytest.fixture(scope="module")
def checkpointed_run(tmp_path_factory, cache_dir):
    out = tmp_path_factory.mktemp("ckpt") / "run"
    overrides = tiny_overrides(out, cache_dir, max_steps=4, save_steps=2, eval_steps=100) + ["samples.every_n_steps=0"]
    assert train.main(overrides) == 0
    return out, overrides


def test_incomplete_checkpoint_is_never_latest(checkpointed_run, tmp_path, capsys):
    out, _ = checkpointed_run
    partial = out / "checkpoint-9"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")  # killed while writing: no trainer_state.json
    try:
        latest, skipped = train.find_latest_checkpoint(str(out))
        assert latest.name == "checkpoint-4" and skipped == [partial]
        cfg = load_config(None, [f"training.output_dir={out}", "training.max_steps=4"])
        plan = train.plan_resume(cfg, "latest")
        assert plan.step == 4 and plan.extra_phase
        assert "skipping incomplete checkpoint" in capsys.readouterr().out
    finally:
        partial.joinpath("model.safetensors").unlink()
        partial.rmdir()


def test_resume_without_checkpoint_is_one_line_and_writes_nothing(tmp_path, cache_dir, capsys):
    out = tmp_path / "empty-run"
    assert train.main(["--resume", *tiny_overrides(out, cache_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --resume: no complete checkpoint in") and len(err) == 1
    assert not out.exists()


def test_resume_with_mismatching_shapes_names_the_tensor(checkpointed_run, capsys):
    out, overrides = checkpointed_run
    before = sorted(p.name for p in out.iterdir())
    code = train.main(["--resume", *overrides, "model.intermediate_size=96"])
    assert code == 2
    assert "tensor 'model.layers.0.mlp.gate_proj.weight' has shape (128, 64) but the config gives (96, 64)" in (
        capsys.readouterr().err
    )
    assert sorted(p.name for p in out.iterdir()) == before


def test_resume_from_corrupt_checkpoint(checkpointed_run, tmp_path, capsys):
    import shutil

    out, overrides = checkpointed_run
    copy = tmp_path / "run"
    shutil.copytree(out, copy)
    weights = copy / "checkpoint-4" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    overrides = [o.replace(str(out), str(copy)) for o in overrides]
    assert train.main(["--resume", *overrides]) == 2
    assert f"checkpoint file {weights} is corrupt" in capsys.readouterr().err
    opt = copy / "checkpoint-4" / "optimizer.pt"
    shutil.copy(out / "checkpoint-4" / "model.safetensors", weights)
    opt.write_bytes(opt.read_bytes()[:-50])
    assert train.main(["--resume", *overrides]) == 2
    assert f"checkpoint file {opt} is corrupt" in capsys.readouterr().err


def test_resume_path_is_optional_and_overrides_are_not_paths():
    args = train.parse_args(["--resume", "training.max_steps=9", f"tokenizer={TOKENIZER}"])
    assert args.resume == "latest" and args.overrides == ["training.max_steps=9", f"tokenizer={TOKENIZER}"]
    args = train.parse_args(["--resume", "/some/checkpoint-5", "training.max_steps=9"])
    assert args.resume == "/some/checkpoint-5"
    assert train.parse_args(["training.max_steps=9"]).resume is None


def test_new_run_into_a_folder_with_checkpoints_is_refused(checkpointed_run, capsys):
    out, overrides = checkpointed_run
    before = sorted(p.name for p in out.iterdir())
    assert train.main(overrides) == 2
    assert "already holds checkpoint-4: continue it with --resume" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before


def test_samples_are_skipped_under_fsdp_from_either_source(monkeypatch):
    from callbacks import uses_fsdp

    class Args:
        fsdp = ""

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert not uses_fsdp(Args())
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch --config_file accelerate/fsdp.yaml
    assert uses_fsdp(Args())
    monkeypatch.delenv("ACCELERATE_USE_FSDP")
    Args.fsdp = "full_shard"
    assert uses_fsdp(Args())


def test_throughput_windows_count_data_loading_but_not_evaluation(monkeypatch):
    """Wall clock from a window's first step to its logging step: the gaps between steps (data loading)
    count, the evaluation after a logging step does not."""
    from transformers import TrainerControl

    import callbacks

    clock = {"now": 0.0}
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: clock["now"])
    model = SimpleNamespace(config=SimpleNamespace(num_hidden_layers=1, hidden_size=4), parameters=lambda: [])
    monitor = callbacks.ThroughputMonitor(model, seq_len=10)
    args = SimpleNamespace(
        world_size=1,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=1,
        bf16=False,
        device=torch.device("cpu"),
    )
    state = SimpleNamespace(global_step=0)
    monitor.on_train_begin(args, state, TrainerControl())
    measured = []
    for step in range(1, 5):
        control = TrainerControl()
        monitor.on_step_begin(args, state, control)
        clock["now"] += 1.0  # the step
        state.global_step = step
        control.should_log = control.should_evaluate = step % 2 == 0
        monitor.on_step_end(args, state, control)
        if control.should_log:
            measured.append(monitor.measure()["tokens_per_second"])
            clock["now"] += 100.0  # evaluation
        clock["now"] += 0.5  # loading the next batch
    # each window: 2 steps x 20 tokens in 1 + 0.5 + 1 seconds
    assert measured == [16.0, 16.0]
