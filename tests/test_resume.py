"""--resume: which phase it trains, what it checks before writing anything, and what it refuses."""

import hashlib
import json
import shutil
from dataclasses import replace
from pathlib import Path

import train
from recipe import arguments, card, resume, run_folder
from recipe.cli import RecipeError
from recipe.config import load_config
from recipe.corpus import find_corpus
from recipe.run_folder import RunFolder
from recipe.run_state import Phase, RunState
from recipe.trainer import BlockOrder

import pytest
import torch
import yaml
from conftest import StopAt, tiny_overrides
from safetensors.torch import save_file
from transformers import TrainerCallback

MAIN = Phase("main", 1, 60, "warmup_stable_decay", 3e-4, 6, {"num_decay_steps": 12}, processes=1, samples_per_step=8)


def checkpoint(folder: Path, step: int, phases=(MAIN,), run_id="run-a", overrides=()) -> Path:
    """A checkpoint as the recipe leaves it, without the weights' contents: what plan_resume reads."""
    path = folder / f"checkpoint-{step}"
    path.mkdir(parents=True)
    run = RunState(run_id, list(phases), global_step=step, samples_trained=step * 8)
    state = {"global_step": step, "stateful_callbacks": {run_folder.RECORD_KEY: {"attributes": run.to_dict()}}}
    (path / "trainer_state.json").write_text(json.dumps(state))
    save_file({"a": torch.zeros(2)}, path / "model.safetensors")
    (path / "recipe_config.yaml").write_text(yaml.safe_dump(load_config(None, list(overrides)).to_dict()))
    (path / "run.json").write_text(json.dumps(run.to_dict()))
    run_folder.write_manifest(path)
    return path


def plan(tmp_path, step, phases=(MAIN,), overrides=(), **kw):
    checkpoint(tmp_path / "run", step, phases, **kw)
    cfg = load_config(None, ["training.max_steps=60", "training.warmup_steps=6", *overrides])
    args = arguments.build_training_arguments(cfg, quiet=True)
    return resume.plan_resume(cfg, "latest", RunFolder(tmp_path / "run"), args)


def test_an_interrupted_phase_continues_on_its_own_schedule(tmp_path):
    p = plan(tmp_path, 30)
    assert p.continues and p.run.phases == [MAIN] and p.max_steps == 60
    assert (
        p.describe()
        == "resuming from checkpoint-30 (step 30): continuing the main phase to step 60 on its own schedule"
    )


def test_a_finished_run_gets_the_extra_phase_at_a_tenth_of_the_learning_rate(tmp_path):
    p = plan(tmp_path, 60)
    assert not p.continues and p.run.phases[0] == MAIN
    assert p.phase == replace(
        MAIN,
        name="resume",
        first_step=61,
        last_step=110,
        lr_scheduler_type="constant",
        warmup_steps=0,
        learning_rate=pytest.approx(3e-5),
        lr_scheduler_kwargs={},
        samples_per_step=p.phase.samples_per_step,
    )
    assert "resuming from checkpoint-60 (step 60) for 50 steps at lr 3e-05: a new phase 'resume'" in p.describe()


def test_a_larger_max_steps_extends_a_finished_run_rewarmed_over_its_own_steps(tmp_path):
    p = plan(tmp_path, 60, overrides=["training.max_steps=80"])
    extend = p.phase
    assert (extend.name, extend.first_step, extend.last_step) == ("extend", 61, 80)
    assert extend.lr_scheduler_type == "warmup_stable_decay" and extend.learning_rate == 3e-4
    assert extend.warmup_steps == 2 and extend.lr_scheduler_kwargs["num_decay_steps"] == 4  # 20% of 20
    assert "re-warmed over 2 step(s) from 0 to lr 0.0003" in p.describe()


def test_an_interrupted_extra_phase_continues_it_and_a_finished_one_starts_another(tmp_path):
    extra = replace(
        MAIN,
        name="resume",
        first_step=61,
        last_step=110,
        lr_scheduler_type="constant",
        learning_rate=3e-5,
        warmup_steps=0,
    )
    p = plan(tmp_path / "a", 80, phases=(MAIN, extra))
    assert p.continues and p.run.phases == [MAIN, extra] and p.max_steps == 110
    p = plan(tmp_path / "b", 110, phases=(MAIN, extra))
    assert p.phase.name == "resume 2" and (p.phase.first_step, p.phase.last_step) == (111, 160)


def test_a_smaller_max_steps_ends_an_interrupted_main_phase_at_its_checkpoint(tmp_path, capsys):
    p = plan(tmp_path, 30, overrides=["training.max_steps=30"])
    assert p.run.phases[0] == replace(MAIN, last_step=30) and p.phase.name == "resume"
    assert (p.phase.first_step, p.phase.last_step) == (31, 80)
    assert "the main phase was planned to step 60; it ends here at step 30" in capsys.readouterr().out


def test_a_larger_max_steps_finishes_an_interrupted_main_phase_first_then_extends(tmp_path, capsys):
    p = plan(tmp_path, 30, overrides=["training.max_steps=80"])
    assert p.continues and p.run.phases == [MAIN] and p.max_steps == 60  # its own schedule: no jump in its decay
    assert "planned to step 60, then a phase 'extend' trains steps 61-80" in capsys.readouterr().out
    cfg = load_config(None, ["training.max_steps=80"])
    assert resume.next_phase_due(cfg, RunFolder(tmp_path / "run"), offer=False) == str(p.checkpoint)  # at once
    assert (
        resume.next_phase_due(load_config(None, ["training.max_steps=30"]), RunFolder(tmp_path / "run"), False) is None
    )


def test_a_max_steps_between_the_checkpoint_and_the_planned_end_is_one_line(tmp_path):
    with pytest.raises(
        RecipeError,
        match=r"training.max_steps 45 ends the main phase before its planned step 60 and "
        r"after checkpoint-30: set training.max_steps=60 to finish it \(then extend\), "
        r"or 30 to end it at the checkpoint",
    ):
        plan(tmp_path, 30, overrides=["training.max_steps=45"])


@pytest.mark.parametrize(
    "init_from, recorded",
    [("HuggingFaceTB/SmolLM2-135M", "HuggingFaceTB/SmolLM2-135M"), ("/some/local/folder", None), ("~/weights", None)],
)
def test_the_run_record_names_a_hub_base_model_never_a_local_path(init_from, recorded, tmp_path):
    corpus = tmp_path / "notes.txt"
    corpus.write_text("To be, or not to be")
    cfg = load_config(None, [f"init_from={init_from}"])
    run = resume.run_state(
        cfg, arguments.build_training_arguments(cfg, quiet=True), None, [find_corpus(str(corpus))], {}
    )
    assert run.base_model == recorded and run.corpus == {"hub_id": None, "files": ["notes.txt"]}


def test_resume_of_a_run_folder_takes_its_newest_complete_checkpoint(tmp_path):
    checkpoint(tmp_path / "run", 20)
    newest = checkpoint(tmp_path / "run", 40)
    (tmp_path / "run" / "trainer_state.json").write_text(json.dumps({"global_step": 40}))  # as save_state leaves it
    assert resume.find_checkpoint(RunFolder(tmp_path / "elsewhere"), str(tmp_path / "run")) == newest
    (tmp_path / "model").mkdir()
    with pytest.raises(RecipeError, match="is not a complete checkpoint-N folder"):
        resume.find_checkpoint(RunFolder(tmp_path / "elsewhere"), str(tmp_path / "model"))


def test_the_checkpoints_after_an_older_one_resumed_are_set_aside_not_followed(tmp_path, capsys):
    older = checkpoint(tmp_path / "run", 20)
    for step in (40, 60):
        checkpoint(tmp_path / "run", step)
    resume.later_files(resume.ResumePlan(older, 20, RunState("run-a", [MAIN])), RunFolder(tmp_path / "run"))
    assert [p.name for p in RunFolder(tmp_path / "run").checkpoints()] == ["checkpoint-20"]
    (aside,) = (tmp_path / "run" / "_superseded").iterdir()
    assert sorted(p.name for p in aside.iterdir()) == ["checkpoint-40", "checkpoint-60"]
    assert f"they come after checkpoint-20: moved checkpoint-40, checkpoint-60 to {aside}" in capsys.readouterr().out


def test_a_run_that_saved_no_checkpoint_leaves_a_folder_a_new_run_can_take(tmp_path, capsys):
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / "run.json").write_text(json.dumps({"run_id": "dead"}))
    (folder / "samples.jsonl").write_text("")
    resume.refuse_to_overwrite(RunFolder(folder))  # no checkpoint, no final/: nothing to resume
    assert RunFolder(folder).run_files() == [] and "holds the files of a run that saved no checkpoint" in (
        capsys.readouterr().out
    )
    checkpoint(folder, 10)
    with pytest.raises(RecipeError, match="already holds checkpoint-10"):
        resume.refuse_to_overwrite(RunFolder(folder))


def test_a_checkpoint_resumes_into_its_own_folder_or_a_new_one_never_another_runs(tmp_path, capsys):
    p = plan(tmp_path, 60)
    assert resume.check_ownership(p, RunFolder(tmp_path / "run")) is None
    forked = resume.check_ownership(p, RunFolder(tmp_path / "new"))
    assert forked == {"run_id": "run-a", "checkpoint": str(p.checkpoint)} and "is new" in capsys.readouterr().out
    other = tmp_path / "other"
    checkpoint(other, 10, run_id="run-b")
    (other / "run.json").write_text(json.dumps(RunState("run-b", [MAIN]).to_dict()))
    with pytest.raises(
        RecipeError, match=r"holds another run \(run-b: checkpoint-10, run.json\) and .* belongs to run run-a"
    ):
        resume.check_ownership(p, RunFolder(other))
    with pytest.raises(RecipeError, match="already holds checkpoint-10: continue it with --resume"):
        resume.refuse_to_overwrite(RunFolder(other))


def test_a_damaged_checkpoint_names_the_file_and_the_newest_intact_one(tmp_path):
    checkpoint(tmp_path / "run", 30)
    p = plan(tmp_path, 60)
    resume.refuse_if_damaged(p.checkpoint)
    save_file({"a": torch.ones(2)}, p.checkpoint / "model.safetensors")  # same header, other numbers
    with pytest.raises(RecipeError) as error:
        resume.refuse_if_damaged(p.checkpoint)
    assert str(error.value) == (
        f"--resume: {p.checkpoint} is damaged: model.safetensors differs from the hash recorded when it was saved; "
        f"resume from {tmp_path / 'run' / 'checkpoint-30'} instead: python train.py --resume {tmp_path / 'run' / 'checkpoint-30'} "
        "[the same --config and overrides]"
    )


@pytest.mark.parametrize(
    "change, listed",
    [
        (["model.rope_theta=10000.0"], "model.rope_theta 100000.0 -> 10000.0"),
        (["model.num_attention_heads=3", "model.num_key_value_heads=1"], "model.num_attention_heads 9 -> 3"),
        (["data.block_size=1024"], "data.block_size 2048 -> 1024"),
        (["tokenizer=/elsewhere/tokenizer"], "tokenizer "),
        (["data.path=other.txt"], "data.path "),
        (["training.learning_rate=1.0e-3"], "training.learning_rate 0.0003 -> 0.001"),
    ],
)
def test_resume_with_another_model_tokenizer_or_data_stops_listing_it(change, listed, tmp_path):
    p = resume.ResumePlan(checkpoint(tmp_path, 4), 4, RunState("run-a", [MAIN]))
    with pytest.raises(RecipeError, match="--resume: the config differs from checkpoint-4's: ") as error:
        resume.check_what_changed(p, load_config(None, change), {}, allow_changes=False)
    assert listed in str(error.value) and "pass --resume-changed if you mean it" in str(error.value)
    resume.check_what_changed(p, load_config(None, change), {}, allow_changes=True)  # said, and goes on


def test_free_changes_go_through_with_one_line_each(tmp_path, capsys):
    p = resume.ResumePlan(checkpoint(tmp_path, 4), 4, RunState("run-a", [MAIN]))
    changes = ["training.save_steps=100", "training.per_device_train_batch_size=16", "samples.every_n_steps=50"]
    resume.check_what_changed(p, load_config(None, changes), {}, allow_changes=False)
    out = capsys.readouterr().out.splitlines()
    assert "resume: training.save_steps changed from 500 to 100" in out
    assert "resume: training.per_device_train_batch_size changed from 8 to 16" in out
    assert "resume: samples.every_n_steps changed from 500 to 50" in out


def test_same_names_with_other_contents_are_changes_too(tmp_path):
    same = {"tokenizer": "abc", "data.path": "corpus-1"}
    p = resume.ResumePlan(checkpoint(tmp_path, 4), 4, RunState("run-a", [MAIN], fingerprints=same))
    resume.check_what_changed(p, load_config(), same, allow_changes=False)
    with pytest.raises(RecipeError, match="corpus files changed"):
        resume.check_what_changed(p, load_config(), {**same, "data.path": "corpus-2"}, allow_changes=False)
    with pytest.raises(RecipeError, match="tokenizer files changed"):
        resume.check_what_changed(p, load_config(), {**same, "tokenizer": "xyz"}, allow_changes=False)


def test_block_order_resumes_by_samples_whatever_the_batch():
    straight = [i for _, i in zip(range(25), BlockOrder(10, seed=3), strict=False)]
    assert sorted(straight[:10]) == list(range(10)) and sorted(straight[10:20]) == list(range(10))
    assert straight[:10] != straight[10:20]  # a new order each pass
    for start in (0, 4, 10, 13):
        resumed = [i for _, i in zip(range(25 - start), BlockOrder(10, seed=3, start=start), strict=False)]
        assert resumed == straight[start:]


# --- end to end: a real run, copied and resumed ----------------------------------------------------------------


def md5s(folder: Path) -> dict:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


@pytest.fixture
def checkpointed_run(tiny_run, tmp_path, cache_dir):
    """A copy of the session's tiny run (checkpoint-2, checkpoint-4, final/), free to be changed."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    overrides = tiny_overrides(out, cache_dir, max_steps=4, save_steps=2, eval_steps=2) + ["samples.every_n_steps=2"]
    return out, overrides


@pytest.mark.slow
def test_resume_without_checkpoint_is_one_line_and_writes_nothing(tmp_path, cache_dir, capsys):
    out = tmp_path / "empty-run"
    assert train.main(["--resume", *tiny_overrides(out, cache_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: --resume: no complete checkpoint in") and len(err) == 1
    assert not out.exists()


@pytest.mark.slow
def test_resume_with_mismatching_shapes_names_the_tensor(checkpointed_run, capsys):
    out, overrides = checkpointed_run
    before = md5s(out)
    assert train.main(["--resume", *overrides, "model.intermediate_size=96"]) == 2
    assert "tensor 'model.layers.0.mlp.gate_proj.weight' has shape (128, 64) but the config gives (96, 64)" in (
        capsys.readouterr().err
    )
    assert md5s(out) == before


CHECKPOINT_FILES = ["model.safetensors", "optimizer.pt", "scheduler.pt", "rng_state.pth", "trainer_state.json"]


@pytest.mark.slow
@pytest.mark.parametrize(
    "name, damage", [(name, "flipped") for name in CHECKPOINT_FILES] + [("trainer_state.json", "cut")]
)
def test_a_damaged_file_is_refused_in_one_line_with_nothing_written(checkpointed_run, capsys, name, damage):
    """A flipped byte leaves a file that still loads (past a safetensors header, with other numbers; JSON that
    may still parse); a cut one does not load at all. Either is found by its hash before anything is read."""
    out, overrides = checkpointed_run
    damaged = out / "checkpoint-4" / name
    data = bytearray(damaged.read_bytes())
    data[-len(data) // 3] ^= 0x04
    damaged.write_bytes(bytes(data if damage == "flipped" else data[: len(data) // 2]))
    before = md5s(out)
    assert train.main(["--resume", *overrides]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    intact = out / "checkpoint-2"
    assert err == [
        f"error: --resume: {out / 'checkpoint-4'} is damaged: {name} differs from the hash recorded when it "
        f"was saved; resume from {intact} instead: python train.py --resume {intact} "
        "[the same --config and overrides]"
    ]
    assert md5s(out) == before


@pytest.mark.slow
def test_resume_from_another_runs_checkpoint_into_a_finished_run_is_refused(
    checkpointed_run, tmp_path, cache_dir, capsys
):
    out, overrides = checkpointed_run
    other = tmp_path / "other"
    shutil.copytree(out, other)
    (other / "run.json").write_text(json.dumps({**json.loads((other / "run.json").read_text()), "run_id": "run-b"}))
    before = md5s(other)
    assert (
        train.main(["--resume", str(out / "checkpoint-2"), *[o.replace(str(out), str(other)) for o in overrides]]) == 2
    )
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"--resume: {other} holds another run (run-b: " in err[0], err
    assert md5s(other) == before
    fork = tmp_path / "fork"  # an empty folder: the checkpoint continues there as a run of its own
    assert (
        train.main(["--resume", str(out / "checkpoint-2"), *[o.replace(str(out), str(fork)) for o in overrides]]) == 0
    )
    record = json.loads((fork / "run.json").read_text())
    assert record["forked_from"]["checkpoint"] == str(out / "checkpoint-2")
    assert record["run_id"] != json.loads((out / "run.json").read_text())["run_id"]


@pytest.mark.slow
def test_a_new_run_into_a_folder_with_a_run_is_refused(checkpointed_run, capsys):
    out, overrides = checkpointed_run
    before = md5s(out)
    assert train.main(overrides) == 2
    assert "already holds checkpoint-4: continue it with --resume" in capsys.readouterr().err
    assert md5s(out) == before


@pytest.mark.slow
def test_home_relative_output_dir_is_one_folder_for_the_lock_the_refusal_and_resume(
    checkpointed_run, tmp_path, monkeypatch, capsys
):
    out, overrides = checkpointed_run
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path / "run")  # a literal ./~ would land here
    home_relative = [o.replace(str(out), "~/run") for o in overrides]
    assert train.main(home_relative) == 2
    assert f"{out} already holds checkpoint-4" in capsys.readouterr().err
    assert train.main(["--resume", *home_relative, "resume.extra_steps=2"]) == 0
    assert (out / "checkpoint-6").is_dir() and not (tmp_path / "run" / "~").exists()


@pytest.mark.slow
def test_extending_a_finished_run_is_its_own_rewarmed_phase(checkpointed_run, capsys):
    out, overrides = checkpointed_run
    assert train.main(["--resume", *overrides, "training.max_steps=8", "training.logging_steps=1"]) == 0
    assert "resuming from checkpoint-4 (step 4) for 4 steps: a new phase 'extend' after" in capsys.readouterr().out
    record = json.loads((out / "final" / "run.json").read_text())
    assert [p["name"] for p in record["phases"]] == ["main", "extend"] and record["global_step"] == 8
    assert record["tokens_trained"] == 8 * 4 * 64  # 8 steps of 4 blocks of 64 tokens
    logged = {
        h["step"]: h["learning_rate"]
        for h in json.loads((out / "trainer_state.json").read_text())["log_history"]
        if "learning_rate" in h
    }
    assert logged[5] == 0.0 and 0 < logged[6] <= 3e-3  # re-warmed from 0, no jump to the peak


@pytest.mark.slow
def test_an_interrupted_run_given_a_larger_max_steps_finishes_its_schedule_then_extends(tmp_path, cache_dir, capsys):
    from test_train_e2e import InterruptAt

    overrides = tiny_overrides(tmp_path / "run", cache_dir, max_steps=10, save_steps=100, eval_steps=100) + [
        "samples.every_n_steps=0",
        "training.lr_scheduler_type=linear",
    ]
    assert train.main(overrides, extra_callbacks=[InterruptAt(5)]) == train.EXIT_INTERRUPTED
    capsys.readouterr()
    assert train.main(["--resume", *overrides, "training.max_steps=14"]) == 0
    out = capsys.readouterr().out
    assert "then a phase 'extend' trains steps 11-14" in out and "a new phase 'extend' after the finished run" in out
    record = json.loads((tmp_path / "run" / "final" / "run.json").read_text())
    assert [(p["name"], p["first_step"], p["last_step"]) for p in record["phases"]] == [
        ("main", 1, 10),
        ("extend", 11, 14),
    ]
    state = json.loads((tmp_path / "run" / "trainer_state.json").read_text())
    lrs = [h["learning_rate"] for h in state["log_history"] if "learning_rate" in h]
    assert lrs[5:10] == sorted(lrs[5:10], reverse=True) and lrs[10] == 0.0  # the linear decay to step 10, then re-warm


class LearningRates(TrainerCallback):
    """The learning rate the optimizer used at each step, read right after its step."""

    def __init__(self):
        self.used = {}

    def on_optimizer_step(self, args, state, control, optimizer=None, **kwargs):
        self.used[state.global_step + 1] = optimizer.param_groups[0]["lr"]


@pytest.mark.slow
def test_main_extra_phase_and_extension_log_use_and_card_the_same_learning_rates(tmp_path, cache_dir):
    """One schedule over the main phase, the extra phase at lr/10 and an extension re-warmed over a tenth of its
    steps. The numbers are those of the code before the run state and the schedule were one (commit 1f9e2de)."""
    out, rates = tmp_path / "run", LearningRates()
    overrides = tiny_overrides(out, cache_dir, max_steps=6, save_steps=3, eval_steps=100) + [
        "samples.every_n_steps=0",
        "resume.extra_steps=3",
    ]
    assert train.main(overrides, extra_callbacks=[rates]) == 0  # main: steps 1-6, warmup 2, decay the last 20%
    stopped = train.main(["--resume", *overrides], extra_callbacks=[rates, StopAt(8)])  # resume: 7-9 at lr/10
    assert stopped == train.EXIT_INTERRUPTED
    assert train.main(["--resume", *overrides], extra_callbacks=[rates]) == 0  # inside the phase: on its schedule
    assert train.main(["--resume", *overrides, "training.max_steps=19"], extra_callbacks=[rates]) == 0  # extend
    log = json.loads((out / "trainer_state.json").read_text())["log_history"]
    logged = {h["step"]: round(h["learning_rate"], 8) for h in log if "learning_rate" in h}
    used = {step: round(lr, 8) for step, lr in rates.used.items()}
    assert used == USED_LEARNING_RATES
    assert logged == LOGGED_LEARNING_RATES
    record = card.read_training_record(out / "final")
    assert card.phases_section(record, card.training_phases(record)) == PHASE_TABLE

    recorded = json.loads((out / "final" / "run.json").read_text())
    assert (recorded["samples_trained"], recorded["tokens_trained"]) == (76, 4864)  # 19 steps of 4 blocks of 64


# The learning rates of steps 1-19 as commit 1f9e2de used and logged them: main (warmup 2, one decay step), the
# extra phase at lr/10, the extension re-warmed over one step and decayed over its last two. The same table too, but
# for the order of the schedule settings: the run state comes back from trainer_state.json, whose keys are sorted.
USED_LEARNING_RATES = {1: 0.0, 2: 0.0015, **dict.fromkeys(range(3, 7), 0.003), **dict.fromkeys(range(7, 10), 0.0003)}
USED_LEARNING_RATES |= {10: 0.0, **dict.fromkeys(range(11, 19), 0.003), 19: 0.0015}
LOGGED_LEARNING_RATES = USED_LEARNING_RATES
PHASE_TABLE = """## Training phases

| phase | steps | optimizer steps | schedule | learning rate | warmup steps |
| --- | --- | --- | --- | --- | --- |
| main | 1–6 | 6 | `warmup_stable_decay` | 0.003 | 2 |
| resume | 7–9 | 3 | `constant` | 0.0003 |  |
| extend | 10–19 | 10 | `warmup_stable_decay` | 0.003 | 1 |

Schedule settings: main: `decay_type=linear, min_lr_ratio=0, num_decay_steps=1`; extend: `decay_type=linear, \
min_lr_ratio=0, num_decay_steps=2`."""
