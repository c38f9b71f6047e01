"""Callbacks leave training as they found it; a phase after the main one runs on its own schedule."""

import random
from types import SimpleNamespace

import pytest
import torch
from conftest import TINY_MODEL
from transformers import get_wsd_schedule

from callbacks import PhaseScheduleCallback
from recipe.config import SamplesConfig, load_config
from recipe.model import build_llama_config, build_model
from recipe.sampling import generate_samples


@pytest.fixture(scope="module")
def tiny_model():
    cfg = load_config(None, TINY_MODEL)
    model = build_model(cfg, build_llama_config(cfg), "sdpa")
    model.gradient_checkpointing_enable()
    model.train()
    return model


def test_generate_samples_leaves_mode_rng_and_checkpointing_untouched(tiny_model, tokenizer):
    samples = SamplesConfig(
        every_n_steps=1, prompts=["ROMEO:", "JULIET:"], max_new_tokens=5, temperature=0.8, top_p=0.9, top_k=50, seed=7
    )
    torch.manual_seed(123)
    random.seed(5)
    expected_torch, expected_py = torch.rand(3), random.random()
    torch.manual_seed(123)
    random.seed(5)
    first = generate_samples(tiny_model, tokenizer, samples.prompts, samples.sampling())
    assert torch.equal(torch.rand(3), expected_torch) and random.random() == expected_py
    assert tiny_model.training and tiny_model.is_gradient_checkpointing
    assert (
        generate_samples(tiny_model, tokenizer, samples.prompts, samples.sampling()) == first
    )  # fixed seed: same samples
    assert [p for p, _ in first] == ["ROMEO:", "JULIET:"]


def finished_schedule():
    params = [torch.nn.Parameter(torch.zeros(2))]
    optimizer = torch.optim.AdamW(params, lr=1e-3)
    scheduler = get_wsd_schedule(optimizer, num_warmup_steps=2, num_decay_steps=2, num_training_steps=10)
    for _ in range(10):
        optimizer.step()
        scheduler.step()
    assert scheduler.get_last_lr()[0] == 0.0  # end of the decay
    return optimizer, scheduler


class State:
    max_steps = 20

    def compute_steps(self, args, max_steps):
        self.computed = max_steps


def test_phase_schedule_holds_the_constant_lr_of_the_resume_phase():
    optimizer, scheduler = finished_schedule()
    state = State()
    phase = {
        "name": "resume",
        "first_step": 11,
        "last_step": 20,
        "lr_scheduler_type": "constant",
        "learning_rate": 1e-4,
        "warmup_steps": 0,
    }
    PhaseScheduleCallback(phase).on_train_begin(None, state, None, optimizer=optimizer, lr_scheduler=scheduler)
    assert state.computed == 20
    assert scheduler.get_last_lr() == [1e-4]
    for _ in range(5):
        assert optimizer.param_groups[0]["lr"] == 1e-4
        optimizer.step()
        scheduler.step()
        assert scheduler.get_last_lr() == [1e-4]


def test_phase_schedule_rewarms_an_extension_and_decays_over_its_own_steps():
    optimizer, scheduler = finished_schedule()
    phase = {
        "name": "extend",
        "first_step": 11,
        "last_step": 20,
        "lr_scheduler_type": "warmup_stable_decay",
        "learning_rate": 1e-3,
        "warmup_steps": 2,
        "lr_scheduler_kwargs": {"num_decay_steps": 4},
    }
    PhaseScheduleCallback(phase).on_train_begin(None, State(), None, optimizer=optimizer, lr_scheduler=scheduler)
    used = []
    for _ in range(10):
        used.append(optimizer.param_groups[0]["lr"])
        optimizer.step()
        scheduler.step()
    assert used[0] == 0.0 and used[1] == pytest.approx(5e-4)  # from 0, never a jump to the peak
    assert used[2:6] == [pytest.approx(1e-3)] * 4  # stable
    assert used[6] > used[7] > used[8] > used[9] > 0  # decayed over the last 4 of its own steps


def test_samples_are_skipped_under_fsdp_from_either_source(monkeypatch):
    from callbacks import uses_fsdp

    class Args:
        fsdp = ""

    monkeypatch.delenv("ACCELERATE_USE_FSDP", raising=False)
    assert not uses_fsdp(Args())
    monkeypatch.setenv("ACCELERATE_USE_FSDP", "true")  # accelerate launch --config_file launch/fsdp.yaml
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
