"""Checkpoints backed up to the Hub while training (training.push_to_hub, hub_strategy: checkpoint), tested
against the local stand-in of the Hub: each checkpoint reaches last-checkpoint/ whole (its checksums too), a run
resumes from it with `--resume hub` exactly, in a new folder or its own, never in another run's; the card at the
end is the recipe's; a missing repo id, token, repo or Hub is one line before the data work."""

import hashlib
import json
import subprocess
import time
from concurrent.futures import Future
from pathlib import Path

import train
from recipe.trainer import RecipeTrainer

import pytest
from conftest import TOKEN, tiny_overrides, torchrun_command
from hub_stub import HubStub
from transformers import Trainer, TrainerCallback

BACKUP = ["training.push_to_hub=true", "training.hub_model_id=me/run", "training.hub_strategy=checkpoint"]
CHECKPOINT_FILES = {
    "checksums.json",
    "run.json",
    "recipe_config.yaml",
    "trainer_state.json",
    "model.safetensors",
    "optimizer.pt",
    "scheduler.pt",
    "rng_state.pth",
}


def hub_files(stub: HubStub, repo: str = "me/run") -> dict[str, bytes]:
    return stub.repos[f"model:{repo}"]["files"]


def hub_step(stub: HubStub) -> int | None:
    state = hub_files(stub).get("last-checkpoint/trainer_state.json") if "model:me/run" in stub.repos else None
    return json.loads(state)["global_step"] if state else None


# --- mistakes: one line, before the data work, nothing written ------------------------------------


@pytest.mark.parametrize(
    "flags, env, expected",
    [
        (["training.push_to_hub=true"], {}, "training.push_to_hub needs training.hub_model_id=user/name"),
        (["training.push_to_hub=true", "training.hub_model_id=run"], {}, "needs training.hub_model_id=user/name"),
        (["training.push_to_hub=true", "training.hub_model_id=me/a/b"], {}, "checkpoints (not 'me/a/b')"),
        (BACKUP, {"HF_TOKEN": None}, "training.push_to_hub: no Hugging Face token; run `hf auth login`"),
        (BACKUP, {"HF_TOKEN": "hf_wrong"}, "training.push_to_hub: the Hub refused the repo me/run: "),
        (BACKUP[:1] + ["training.hub_model_id=me/forbidden"], {}, "the Hub refused the repo me/forbidden: "),
        (BACKUP, {"offline": True}, "training.push_to_hub: the Hub (http://127.0.0.1:"),
        ([*BACKUP, "training.hub_token=hf_x"], {}, "training.hub_token would be uploaded in each checkpoint's config"),
        (["--resume", "hub"], {}, "--resume hub needs training.hub_model_id=user/name"),
        (
            ["--resume", "hub", "training.hub_model_id=me/run"],
            {"HF_TOKEN": None},
            "--resume hub: no Hugging Face token",
        ),
        (["--resume", "hub", "training.hub_model_id=me/missing"], {}, "--resume hub: no repo me/missing on the Hub"),
        (
            ["--resume", "hub", "training.hub_model_id=me/empty"],
            {},
            "--resume hub: me/empty has no complete last-checkpoint/",
        ),
    ],
    ids=[
        "no-repo-id",
        "no-user",
        "three-parts",
        "no-token",
        "wrong-token",
        "refused",
        "unreachable",
        "token-in-config",
        "resume-no-repo-id",
        "resume-no-token",
        "resume-missing-repo",
        "resume-no-checkpoint",
    ],
)
def test_a_hub_mistake_is_one_line_before_the_data_work(hub, tmp_path, monkeypatch, capsys, flags, env, expected):
    for key, value in env.items():
        if key == "offline":
            import huggingface_hub.constants as constants

            monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
        elif value is None:
            monkeypatch.delenv(key)
        else:
            monkeypatch.setenv(key, value)
    hub.repos["model:me/empty"] = {"private": False, "files": {"README.md": b"hi"}, "branches": [], "sha": "1" * 40}
    cache, out = tmp_path / "cache", tmp_path / "runs" / "run"
    assert train.main([*tiny_overrides(out, cache), *flags]) == 2
    stdout, err = capsys.readouterr()
    *progress, line = err.strip().splitlines()  # --resume hub: huggingface_hub's progress bar, then the line
    assert line.startswith("error: ") and expected in line and all("Fetching" in p or "No files" in p for p in progress)
    assert TOKEN not in err and "data:" not in stdout and not cache.exists() and not list(tmp_path.glob("runs/*"))


def test_a_failed_upload_is_said_when_training_ends(capsys):
    """The Trainer uploads in the background and never looks at how an upload ended."""
    from transformers.utils.hub import PushInProgress

    failed, done = Future(), Future()
    failed.set_exception(OSError("507 Insufficient Storage\nmore"))
    done.set_result(None)
    trainer = RecipeTrainer.__new__(RecipeTrainer)  # only what _finish_current_push reads
    trainer.push_in_progress, trainer.hub_model_id = PushInProgress([done, failed]), "me/run"
    trainer._finish_current_push()
    assert capsys.readouterr().out == "hub: an upload to me/run failed: 507 Insufficient Storage\n"


# --- the backup and the resume -------------------------------------------------------------------


class WaitForBackup(TrainerCallback):
    """After each save, wait until the Hub holds that checkpoint (the Trainer skips a push while the one before is
    still uploading); at `die_at` the machine dies with its run, after the backup."""

    def __init__(self, stub: HubStub, die_at: int | None = None):
        self.stub, self.die_at = stub, die_at

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step and state.global_step % args.save_steps == 0:
            deadline = time.time() + 60
            while hub_step(self.stub) != state.global_step and time.time() < deadline:
                time.sleep(0.05)
        if state.global_step == self.die_at:
            raise SystemError("the machine is gone")


def losses(out) -> list[tuple[int, float]]:
    history = json.loads((out / "trainer_state.json").read_text())["log_history"]
    return [(h["step"], h["loss"]) for h in history if "loss" in h] + [
        (h["step"], h["eval_loss"]) for h in history if "eval_loss" in h
    ]


def md5s(folder) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.md5(p.read_bytes()).hexdigest() for p in folder.rglob("*") if p.is_file()
    }


SETTINGS = dict(max_steps=12, save_steps=3, eval_steps=6, bf16="false")  # fp32: the same losses to the bit


def straight_and_died(hub, tmp_path, cache_dir) -> tuple[Path, Path]:
    """A run that never stops, and the same run backed up to the Hub, dead with its machine during step 7."""
    straight, died = tmp_path / "straight", tmp_path / "died"
    assert train.main(tiny_overrides(straight, cache_dir, **SETTINGS)) == 0
    with pytest.raises(SystemError):
        train.main([*tiny_overrides(died, cache_dir, **SETTINGS), *BACKUP], extra_callbacks=[WaitForBackup(hub, 6)])
    return straight, died


@pytest.mark.slow
def test_a_run_backed_up_to_the_hub_resumes_from_it_exactly_in_a_new_folder_or_its_own(
    hub, tmp_path, cache_dir, capsys, monkeypatch
):
    pushed_whole = []  # the Trainer pushes a checkpoint inside its save, before on_save writes the recipe's files
    push = Trainer._push_from_checkpoint
    monkeypatch.setattr(
        Trainer,
        "_push_from_checkpoint",
        lambda self, folder: pushed_whole.append((Path(folder) / "checksums.json").is_file()) or push(self, folder),
    )
    settings = SETTINGS
    straight, died = straight_and_died(hub, tmp_path, cache_dir)
    assert [m for r, m in hub.commits if m.endswith("checkpoint")] == [
        f"Training in progress, step {s}, checkpoint" for s in (3, 6)
    ]
    assert pushed_whole == [True, True]  # RecipeTrainer pushes each checkpoint once its checksums complete it
    backed_up = {p.split("/", 1)[1]: data for p, data in hub_files(hub).items() if p.startswith("last-checkpoint/")}
    assert CHECKPOINT_FILES <= set(backed_up)
    saved = {str(p.relative_to(died / "checkpoint-6")): p.read_bytes() for p in (died / "checkpoint-6").iterdir()}
    assert backed_up == saved  # every file as saved, its checksums too
    run_id = json.loads((died / "run.json").read_text())["run_id"]
    capsys.readouterr()

    # another machine: a new, empty folder (under a runs/ that does not exist yet) resumes from the Hub
    fresh = tmp_path / "elsewhere" / "runs" / "run"
    assert (
        train.main(
            ["--resume", "hub", *tiny_overrides(fresh, cache_dir, **settings), *BACKUP],
            extra_callbacks=[WaitForBackup(hub)],
        )
        == 0
    )
    out = capsys.readouterr().out
    assert f"resume: the Hub's last-checkpoint is now {fresh / 'checkpoint-6'}" in out
    assert "resuming from checkpoint-6 (step 6): continuing the main phase to step 12" in out
    assert "no checksums" not in out and not list(fresh.parent.glob(".*hub-download"))
    assert losses(fresh)[6:] and losses(fresh) == losses(straight)  # every loss, to the last bit (fp32)
    record = json.loads((fresh / "final" / "run.json").read_text())
    assert record["run_id"] == run_id and record["forked_from"] is None  # the same run, continued
    assert [m for r, m in hub.commits][-3:] == [
        "Training in progress, step 12",
        "Training in progress, step 12, checkpoint",
        "End of training: the final model and its card (smollm2-recipe)",
    ]

    # the card at the top of the repo is the recipe's, with the final model beside it
    files = hub_files(hub)
    card = files["README.md"].decode()
    assert "- smollm2-recipe" in card and "## Training phases" in card and "| main | 1–12 | 12 |" in card
    assert "More information needed" not in card and "This model was trained from scratch on an unknown" not in card
    assert (
        "loss_curve.png" in files and files["model.safetensors"] == (fresh / "final" / "model.safetensors").read_bytes()
    )
    assert hub_step(hub) == 12

    # another run's folder is refused, untouched; the run's own folder takes the checkpoint back and goes on exactly
    before = md5s(straight)
    assert train.main(["--resume", "hub", *tiny_overrides(straight, cache_dir, **settings), *BACKUP]) == 2
    assert f"--resume: {straight} holds another run" in capsys.readouterr().err
    assert md5s(straight) == before
    (died / "checkpoint-6" / "optimizer.pt").write_bytes(b"lost with the machine")
    hub_files(hub).update({f"last-checkpoint/{p}": data for p, data in backed_up.items()})  # step 6 again
    assert train.main(["--resume", "hub", *tiny_overrides(died, cache_dir, **settings), *BACKUP]) == 0
    assert losses(died) == losses(straight)
    assert json.loads((died / "final" / "run.json").read_text())["run_id"] == run_id


@pytest.mark.slow
def test_two_processes_resume_from_the_hub_moving_it_in_once(hub, tmp_path, cache_dir):
    """On a CPU the processes download side by side (huggingface_hub locks each file); the main one moves the
    checkpoint in once every process has checked it; one model and card reach the Hub at the end."""
    straight, _ = straight_and_died(hub, tmp_path, cache_dir)
    fresh = tmp_path / "two" / "run"
    overrides = [*tiny_overrides(fresh, cache_dir, **{**SETTINGS, "per_device_train_batch_size": 2}), *BACKUP]
    command = torchrun_command(2, "--resume", "hub", *overrides)
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    errors = [line for line in (result.stdout + result.stderr).splitlines() if line.startswith("error:")]
    assert result.returncode == 0, (
        "\n".join(errors) or result.stderr[-3000:]
    )  # torchrun's traceback hides the error line
    assert result.stdout.count("resume: the Hub's last-checkpoint is now") == 1
    assert "batch: 2 processes x 2 sequences" in result.stdout and not list(fresh.parent.glob(".*hub-download"))
    expected, got = losses(straight), losses(fresh)
    assert [s for s, _ in got] == [s for s, _ in expected]
    assert all(a == pytest.approx(b, abs=1e-4) for (_, a), (_, b) in zip(expected, got, strict=True))
    assert hub.commits[-1][1].startswith("End of training") and "README.md" in hub_files(hub)  # from one process
    assert sum(m.startswith("End of training") for _, m in hub.commits) == 1
