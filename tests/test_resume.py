"""--resume: which checkpoint, what it checks before writing anything, and what it refuses."""

import shutil

import pytest
from conftest import tiny_overrides

import train
from checkpoints import find_latest_checkpoint, plan_resume
from config import load_config

pytestmark = pytest.mark.slow


@pytest.fixture
def checkpointed_run(tiny_run, tmp_path, cache_dir):
    """A copy of the session's tiny run (checkpoint-2, checkpoint-4, final/), free to be changed."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    overrides = tiny_overrides(out, cache_dir, max_steps=4, save_steps=2, eval_steps=2) + ["samples.every_n_steps=2"]
    return out, overrides


def test_incomplete_checkpoint_is_never_latest(checkpointed_run, tmp_path, capsys):
    out, _ = checkpointed_run
    partial = out / "checkpoint-9"
    partial.mkdir()
    (partial / "model.safetensors").write_bytes(b"half")  # killed while writing: no trainer_state.json
    try:
        latest, skipped = find_latest_checkpoint(str(out))
        assert latest.name == "checkpoint-4" and skipped == [partial]
        cfg = load_config(None, [f"training.output_dir={out}", "training.max_steps=4"])
        plan = plan_resume(cfg, "latest")
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
    out, overrides = checkpointed_run
    copy = tmp_path / "copy"
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



def test_new_run_into_a_folder_with_checkpoints_is_refused(checkpointed_run, capsys):
    out, overrides = checkpointed_run
    before = sorted(p.name for p in out.iterdir())
    assert train.main(overrides) == 2
    assert "already holds checkpoint-4: continue it with --resume" in capsys.readouterr().err
    assert sorted(p.name for p in out.iterdir()) == before
