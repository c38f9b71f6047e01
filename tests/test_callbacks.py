"""Callbacks leave training as they found it; every phase of a run is one schedule, restored by its step."""

import random
import re
from types import SimpleNamespace

from recipe.config import SamplesConfig, load_config
from recipe.model import build_llama_config, build_model
from recipe.run_state import Phase, RunSchedule, RunState
from recipe.sampling import generate_samples

import pytest
import torch
from conftest import ROOT, TINY_MODEL


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


PHASES = [
    Phase("main", 1, 10, "warmup_stable_decay", 1e-3, 2, {"num_decay_steps": 2}, processes=1, samples_per_step=4),
    Phase("resume", 11, 15, "constant", 1e-4, 0, {}, processes=1, samples_per_step=4),
    Phase("extend", 16, 25, "warmup_stable_decay", 1e-3, 2, {"num_decay_steps": 4}, processes=1, samples_per_step=4),
]


def rates_used(scheduler, optimizer, steps: int) -> list[float]:
    used = []
    for _ in range(steps):
        used.append(optimizer.param_groups[0]["lr"])
        assert scheduler.get_last_lr() == [used[-1]]  # the rate logged is the rate used
        optimizer.step()
        scheduler.step()
    return used


def test_one_schedule_runs_every_phase_on_its_own_from_its_first_step():
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    used = rates_used(RunSchedule(optimizer, RunState("r", PHASES)), optimizer, 25)
    assert used[:2] == [0.0, pytest.approx(5e-4)] and used[2:8] == [pytest.approx(1e-3)] * 6  # main: warm-up
    assert used[8] == pytest.approx(1e-3) and used[9] == pytest.approx(5e-4)  # ... and its decay
    assert used[10:15] == [pytest.approx(1e-4)] * 5  # the extra phase at lr/10, constant
    assert used[15] == 0.0 and used[16] == pytest.approx(5e-4)  # the extension: re-warmed from 0, never a jump
    assert used[17:21] == [pytest.approx(1e-3)] * 4 and used[21] > used[22] > used[23] > used[24] > 0


@pytest.mark.parametrize("checkpoint_step", [5, 10, 12, 15])
def test_a_restored_schedule_goes_on_from_the_checkpoints_step_whatever_the_optimizer_restored(checkpoint_step):
    """The Trainer loads the optimizer's state (its rate of the checkpoint's own schedule) and then the
    scheduler's: from the step after the checkpoint the rates are those of one run straight through."""
    straight_optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    straight = rates_used(RunSchedule(straight_optimizer, RunState("r", PHASES)), straight_optimizer, 25)
    before = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    old = RunSchedule(before, RunState("r", PHASES[:1]))  # the checkpoint knew only the main phase
    rates_used(old, before, checkpoint_step)
    optimizer = torch.optim.AdamW([torch.nn.Parameter(torch.zeros(2))], lr=1e-3)
    scheduler = RunSchedule(optimizer, RunState("r", PHASES))
    optimizer.load_state_dict(before.state_dict())
    scheduler.load_state_dict(old.state_dict())
    assert rates_used(scheduler, optimizer, 25 - checkpoint_step) == straight[checkpoint_step:]


def test_no_code_edits_a_schedulers_fields():
    """The schedule is built whole by the Trainer (RecipeTrainer.create_scheduler): nothing patches one."""
    edits = re.compile(r"^\s*(\w+\.)+(lr_lambdas|base_lrs|_last_lr)\b[^=\n]*=(?!=)")  # an assignment to one
    found = [
        (path.name, line)
        for path in [*ROOT.glob("*.py"), *ROOT.glob("recipe/*.py")]
        for line in path.read_text().splitlines()
        if edits.search(line)
    ]
    assert found == []


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
    import callbacks

    from transformers import TrainerControl

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


def test_a_stop_names_the_step_whose_checkpoint_it_will_save():
    """While a step runs, that step; between steps (logging, evaluating, loading the next batch), this step if
    it saves, else the next one."""
    from callbacks import GracefulInterruptCallback

    from transformers import TrainerControl

    stop, args, state = GracefulInterruptCallback(), SimpleNamespace(), SimpleNamespace(global_step=10)
    stop.on_step_begin(args, state, TrainerControl())
    assert "stopping after step 11 " in stop.what_happens_now()
    state.global_step = 11
    stop.on_step_end(args, state, TrainerControl())
    assert "stopping after step 12 " in stop.what_happens_now()
    stop.on_step_end(args, state, TrainerControl(should_save=True))
    assert "stopping after step 11 " in stop.what_happens_now()
    stop.on_save(args, state, TrainerControl())
    assert "stopping after step 12 " in stop.what_happens_now()
