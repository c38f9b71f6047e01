"""Checkpoints and resume, without training: the lock, atomic folders, shape checks both ways, what counts as
a change on --resume, and a data order that resumes by samples."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import checkpoints
from config import RecipeError, load_config
from trainer import BlockOrder


def test_second_run_into_a_locked_folder_stops_naming_the_first(tmp_path):
    first = checkpoints.RunLock(tmp_path / "run").acquire()
    with pytest.raises(RecipeError, match=rf"is in use by another run \(PID {os.getpid()} on "):
        checkpoints.RunLock(tmp_path / "run").acquire()
    first.release()
    assert not (tmp_path / "run").exists()  # made by the lock, left empty: removed with it
    with checkpoints.RunLock(tmp_path / "run"):
        assert (tmp_path / "run" / checkpoints.LOCK_NAME).is_file()


def test_stale_lock_of_a_dead_process_is_taken_over(tmp_path, capsys):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    folder = tmp_path / "run"
    folder.mkdir()
    (folder / checkpoints.LOCK_NAME).write_text(json.dumps({"pid": int(dead.stdout), "host": socket.gethostname()}))
    with checkpoints.RunLock(folder):
        assert json.loads((folder / checkpoints.LOCK_NAME).read_text())["pid"] == os.getpid()
    assert "taking over the stale lock" in capsys.readouterr().out
    # another machine's lock cannot be checked from here: it holds
    (folder / checkpoints.LOCK_NAME).write_text(json.dumps({"pid": 1, "host": "elsewhere"}))
    with pytest.raises(RecipeError, match="PID 1 on elsewhere"):
        checkpoints.RunLock(folder).acquire()


def test_atomic_folder_keeps_the_old_one_when_writing_fails(tmp_path):
    target = tmp_path / "final"
    with checkpoints.atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(OSError), checkpoints.atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("new, half")
        raise OSError(28, "No space left on device")
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


def test_shapes_are_checked_both_ways():
    expected = {"a": torch.empty(2, 3), "lm_head.weight": torch.empty(4)}
    checkpoints_found = {"a": torch.empty(2, 3)}  # a tied head need not be stored
    from model import check_shapes

    check_shapes(expected, checkpoints_found, "checkpoint-4")
    with pytest.raises(RecipeError, match=r"tensor 'a' has shape \(3, 2\) but the config gives \(2, 3\)"):
        check_shapes(expected, {"a": torch.empty(3, 2)}, "checkpoint-4")
    with pytest.raises(RecipeError, match="has no tensor 'a'"):
        check_shapes(expected, {}, "checkpoint-4")
    with pytest.raises(RecipeError, match="has tensor 'model.layers.2.x' and 1 more, which this model config lacks"):
        check_shapes(expected, {"a": torch.empty(2, 3), "model.layers.2.x": torch.empty(1), "y": torch.empty(1)}, "c")


def plan_with(tmp_path, recorded_overrides, record=None):
    checkpoint = tmp_path / "checkpoint-4"
    checkpoint.mkdir(parents=True, exist_ok=True)
    recorded = load_config(None, recorded_overrides)
    checkpoints.write_run_files(recorded, [], checkpoint)
    return checkpoints.ResumePlan(checkpoint, 4, 8, None, 16, record or {})


@pytest.mark.parametrize("change, listed", [
    (["model.rope_theta=10000.0"], "model.rope_theta 100000.0 -> 10000.0"),
    (["model.num_attention_heads=3", "model.num_key_value_heads=1"], "model.num_attention_heads 9 -> 3"),
    (["data.block_size=1024"], "data.block_size 2048 -> 1024"),
    (["tokenizer=/elsewhere/tokenizer"], "tokenizer "),
    (["data.path=other.txt"], "data.path "),
    (["training.learning_rate=1.0e-3"], "training.learning_rate 0.0003 -> 0.001"),
])  # fmt: skip
def test_resume_with_another_model_tokenizer_or_data_stops_listing_it(change, listed, tmp_path):
    plan = plan_with(tmp_path, [])
    with pytest.raises(RecipeError, match="--resume: the config differs from checkpoint-4's: ") as error:
        checkpoints.check_what_changed(plan, load_config(None, change), {}, allow_changes=False)
    assert listed in str(error.value) and "pass --resume-changed if you mean it" in str(error.value)
    checkpoints.check_what_changed(plan, load_config(None, change), {}, allow_changes=True)  # said, and goes on


def test_free_changes_go_through_with_one_line_each(tmp_path, capsys):
    plan = plan_with(tmp_path, [])
    changes = ["training.save_steps=100", "training.per_device_train_batch_size=16", "samples.every_n_steps=50"]
    checkpoints.check_what_changed(plan, load_config(None, changes), {}, allow_changes=False)
    out = capsys.readouterr().out.splitlines()
    assert "resume: training.save_steps changed from 500 to 100" in out
    assert "resume: training.per_device_train_batch_size changed from 8 to 16" in out
    assert "resume: samples.every_n_steps changed from 500 to 50" in out


def test_same_names_with_other_contents_are_changes_too(tmp_path):
    plan = plan_with(tmp_path, [], record={"tokenizer": "abc", "data.path": "corpus-1"})
    same = {"tokenizer": "abc", "data.path": "corpus-1"}
    checkpoints.check_what_changed(plan, load_config(), same, allow_changes=False)
    with pytest.raises(RecipeError, match="corpus files changed"):
        checkpoints.check_what_changed(plan, load_config(), {**same, "data.path": "corpus-2"}, allow_changes=False)
    with pytest.raises(RecipeError, match="tokenizer files changed"):
        checkpoints.check_what_changed(plan, load_config(), {**same, "tokenizer": "xyz"}, allow_changes=False)


def test_corpus_fingerprint_changes_when_the_corpus_grows(tmp_path):
    corpus = tmp_path / "c.txt"
    corpus.write_text("To be, or not to be.\n" * 100)
    data = load_config(None, [f"data.path={corpus}"]).data
    before = checkpoints.corpus_fingerprint(data)
    assert checkpoints.corpus_fingerprint(data) == before
    with corpus.open("a") as f:
        f.write("That is the question.\n")
    assert checkpoints.corpus_fingerprint(data) != before


def test_block_order_resumes_by_samples_whatever_the_batch():
    straight = [i for _, i in zip(range(25), BlockOrder(10, seed=3), strict=False)]
    assert sorted(straight[:10]) == list(range(10)) and sorted(straight[10:20]) == list(range(10))
    assert straight[:10] != straight[10:20]  # a new order each pass
    for start in (0, 4, 10, 13):
        resumed = [i for _, i in zip(range(25 - start), BlockOrder(10, seed=3, start=start), strict=False)]
        assert resumed == straight[start:]


def test_incomplete_checkpoint_is_removed_after_a_failed_save(tmp_path):
    complete, partial = tmp_path / "checkpoint-2", tmp_path / "checkpoint-4"
    for folder in (complete, partial):
        folder.mkdir()
        (folder / "model.safetensors").write_bytes(b"weights")
    (complete / "trainer_state.json").write_text(json.dumps({"global_step": 2}))
    assert checkpoints.remove_incomplete_checkpoint(tmp_path, 4) == partial and not partial.exists()
    assert checkpoints.remove_incomplete_checkpoint(tmp_path, 2) is None and complete.exists()
    assert checkpoints.find_latest_checkpoint(tmp_path) == (complete, [])


def test_disk_warning_comes_while_a_save_can_still_fit(tmp_path, monkeypatch, capsys):
    usage = type("Usage", (), {"free": 10 * 2**30})
    monkeypatch.setattr(checkpoints.shutil, "disk_usage", lambda path: usage)
    assert not checkpoints.warn_if_disk_is_short(tmp_path, 2 * 2**30)
    assert checkpoints.warn_if_disk_is_short(tmp_path, 12 * 2**30)
    assert "disk: 10.00 GiB free" in capsys.readouterr().out


def test_phases_record_the_main_run_and_each_extra_phase(tmp_path):
    from arguments import build_training_arguments

    cfg = load_config(None, [f"training.output_dir={tmp_path}", "training.max_steps=60", "training.warmup_steps=10",
                             "training.report_to=none"])  # fmt: skip
    args = build_training_arguments(cfg, quiet=True)
    main = checkpoints.phases_for(cfg, args, None)
    assert main == [{"name": "main", "first_step": 1, "last_step": 60, "lr_scheduler_type": "warmup_stable_decay",
                     "learning_rate": 3e-4, "warmup_steps": 10}]  # fmt: skip
    checkpoint = Path(tmp_path) / "checkpoint-60"
    checkpoints.write_run_files(cfg, main, checkpoint)
    extra = checkpoints.ResumePlan(checkpoint, 60, 110, 3e-5)
    phases = checkpoints.phases_for(cfg, args, extra)
    assert phases[0] == main[0] and phases[1] == {"name": "resume", "first_step": 61, "last_step": 110,
                                                   "lr_scheduler_type": "constant", "learning_rate": 3e-5}  # fmt: skip
    crashed = checkpoints.ResumePlan(checkpoint, 30, 60, None)
    assert checkpoints.phases_for(cfg, args, crashed) == main
