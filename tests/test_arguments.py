"""TrainingArguments for the hardware: precision on any CPU, speed switches chosen for CUDA and memory,
and each learning-rate schedule with its own kwargs, all checked before any data work."""

from recipe import arguments
from recipe.cli import RecipeError
from recipe.config import load_config
from recipe.model import build_llama_config, build_meta_model

import pytest
import torch
from conftest import TINY_MODEL
from transformers import Trainer, get_scheduler


def args_for(overrides, **changes):
    cfg = load_config(None, [*TINY_MODEL, "training.report_to=none", *overrides])
    config = build_llama_config(cfg)
    n_params = sum(p.numel() for p in build_meta_model(config).parameters())
    return arguments.build_training_arguments(cfg, config, n_params, **changes)


@pytest.mark.parametrize(
    "native, bf16, line",
    [
        ("AMX", True, "precision: bf16 autocast on CPU (this CPU has AMX)"),
        ("AVX512-BF16", True, "precision: bf16 autocast on CPU (this CPU has AVX512-BF16)"),
        (None, False, "precision: fp32 on CPU (this CPU has no native bf16"),
    ],
)
def test_cpu_keeps_bf16_only_where_it_is_native(native, bf16, line, monkeypatch, capsys):
    monkeypatch.setattr(arguments, "cpu_bf16_support", lambda: native)
    args = args_for([])
    assert args.use_cpu and args.bf16 is bf16
    assert line in capsys.readouterr().out


def test_explicit_fp32_is_kept_and_said(monkeypatch, capsys):
    monkeypatch.setattr(arguments, "cpu_bf16_support", lambda: "AMX")
    assert not args_for(["training.bf16=false"]).bf16
    assert "precision: fp32 on CPU (training.bf16 is false)" in capsys.readouterr().out


GiB = 2**30


@pytest.mark.parametrize("memory, checkpointing", [(80 * GiB, False), (16 * GiB, True)])
def test_cuda_compiles_and_checkpoints_only_when_memory_is_short(memory, checkpointing, monkeypatch):
    """The real 135M model at 8 x 2,048: about 25 GiB without checkpointing, which fits an 80 GiB H100 and
    not a 16 GiB card."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(arguments, "device_memory", lambda: memory)
    cfg = load_config()
    config = build_llama_config(cfg)
    training = dict(cfg.training)
    line = arguments.choose_speed(training, config, 134_515_008, cfg.data.block_size)
    assert training["torch_compile"] is True
    assert training["activation_checkpointing"] is checkpointing
    assert line.startswith(f"speed: torch.compile on, activation checkpointing {'on' if checkpointing else 'off'}")
    assert f"(estimated peak 25.1 GiB of {memory / GiB:.0f} GiB without it)" in line


def test_cpu_does_not_compile_and_explicit_switches_win(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    training = {"torch_compile": "auto", "activation_checkpointing": "auto", "per_device_train_batch_size": 8}
    cfg = load_config(None, TINY_MODEL)
    line = arguments.choose_speed(training, build_llama_config(cfg), 3_000_000, 128)
    assert training["torch_compile"] is False and training["activation_checkpointing"] is False
    assert line.startswith("speed: torch.compile off (auto on a CPU: compiling pays off only in long runs)")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    training = {"torch_compile": False, "activation_checkpointing": True}
    line = arguments.choose_speed(training)
    assert training == {
        "torch_compile": False,
        "activation_checkpointing": True,
        "activation_checkpointing_kwargs": {"use_reentrant": False},
    }
    assert line == "speed: torch.compile off (set in the config), activation checkpointing on (set in the config)"


def test_liger_under_compile_keeps_only_the_kernels_that_compile(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    training = {"torch_compile": "auto", "activation_checkpointing": False, "use_liger_kernel": True}
    line = arguments.choose_speed(training)
    assert training["liger_kernel_config"] == {"rope": False, "rms_norm": False, "swiglu": False}
    assert "fused linear cross-entropy on (rope, rms_norm, swiglu kernels off" in line


def test_estimated_peak_memory_is_near_the_h100_measurements():
    """Measured on an H100 (BENCHMARKS.md): 25.4 GB without checkpointing, 12.3 GB with it (eager)."""
    from recipe.model import estimate_peak_memory

    config = build_llama_config(load_config())
    off = estimate_peak_memory(config, 134_515_008, 8, 2048, checkpointing=False)
    on = estimate_peak_memory(config, 134_515_008, 8, 2048, checkpointing=True)
    assert 23 * GiB < off < 27 * GiB and 10.5 * GiB < on < 13.5 * GiB


@pytest.mark.parametrize(
    "schedule", ["cosine", "linear", "constant_with_warmup", "cosine_with_min_lr", "warmup_stable_decay"]
)
def test_every_schedule_gets_only_its_own_kwargs(schedule):
    args = args_for([f"training.lr_scheduler_type={schedule}", "training.max_steps=100"])
    expected = {
        "warmup_stable_decay": {"num_decay_steps": 20, "decay_type": "linear", "min_lr_ratio": 0.0},
        "cosine_with_min_lr": {"min_lr_rate": 0.1},
    }.get(schedule, {})
    assert args.lr_scheduler_kwargs == expected
    arguments.check_optimizer_and_schedule(args)  # what the Trainer will build, built
    optimizer_cls, kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
    optimizer = optimizer_cls([torch.nn.Parameter(torch.zeros(1))], **kwargs)
    scheduler = get_scheduler(
        args.lr_scheduler_type,
        optimizer,
        num_warmup_steps=5,
        num_training_steps=100,
        scheduler_specific_kwargs=args.lr_scheduler_kwargs,
    )
    assert scheduler.get_last_lr()[0] == 0.0  # warm-up starts at zero


def test_flat_schedule_kwargs_still_work_and_bad_ones_fail_before_data():
    args = args_for(["training.lr_scheduler_type=cosine_with_min_lr", "training.lr_scheduler_kwargs={min_lr: 1.0e-5}"])
    assert args.lr_scheduler_kwargs == {"min_lr": 1e-5}
    arguments.check_optimizer_and_schedule(args)
    args = args_for(["training.lr_scheduler_type=cosine", "training.lr_scheduler_kwargs={num_decay_steps: 3}"])
    with pytest.raises(RecipeError, match="do not fit the 'cosine' schedule"):
        arguments.check_optimizer_and_schedule(args)
