"""The run folder, without training: one path for every check, the lock, atomic writes, complete and damaged
checkpoints, what a folder holds, readable files."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

from recipe import run_folder
from recipe.cli import RecipeError
from recipe.run_folder import RunFolder, RunLock

import pytest
from conftest import ROOT


def fake_checkpoint(folder: Path, step: int, manifest: bool = True) -> Path:
    checkpoint = folder / f"checkpoint-{step}"
    checkpoint.mkdir(parents=True)
    (checkpoint / "model.safetensors").write_bytes(b"weights" * 100)
    (checkpoint / "optimizer.pt").write_bytes(b"moments" * 100)
    state = {"global_step": step, "stateful_callbacks": {run_folder.RECORD_KEY: {"attributes": {"run_id": "run-a"}}}}
    (checkpoint / "trainer_state.json").write_text(json.dumps(state))
    if manifest:
        run_folder.write_manifest(checkpoint)
    return checkpoint


def test_paths_are_resolved_once_home_relative_and_links(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    monkeypatch.chdir(tmp_path)
    assert RunFolder("~/runs/q").path == tmp_path / "runs" / "q"  # not ./~/runs/q
    assert RunFolder("runs/q").path == tmp_path / "runs" / "q"
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert RunFolder("link").path == tmp_path / "real"


def test_an_output_dir_that_is_or_lies_under_a_file_is_one_line(tmp_path):
    (tmp_path / "file").write_text("x")
    with pytest.raises(RecipeError, match="is a file; set training.output_dir to a folder"):
        RunFolder(tmp_path / "file").check_writable()
    with pytest.raises(RecipeError, match="lies under the file"):
        RunFolder(tmp_path / "file" / "run").check_writable()
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o500)
    try:
        if os.geteuid() != 0:  # root writes anywhere
            with pytest.raises(RecipeError, match="cannot be created in"):
                RunFolder(locked / "run").check_writable()
    finally:
        locked.chmod(0o700)


def test_second_run_into_a_locked_folder_stops_naming_the_first(tmp_path):
    first = RunLock(RunFolder(tmp_path / "run")).acquire()
    with pytest.raises(RecipeError, match=rf"is in use by another run \(PID {os.getpid()} on "):
        RunLock(RunFolder(tmp_path / "run")).acquire()
    first.release()
    assert not (tmp_path / "run").exists()  # made by the lock, left empty: removed with it
    with RunLock(RunFolder(tmp_path / "run")):
        assert (tmp_path / "run" / run_folder.LOCK).is_file()


def test_the_lock_of_another_process_stops_a_run_until_that_process_is_gone(tmp_path, capsys):
    """The OS lock dies with its process, killed or not: the lock file it leaves blocks no one."""
    folder = tmp_path / "run"
    hold = "import sys; from recipe import run_folder as f; lock = f.RunLock(f.RunFolder(sys.argv[1])).acquire(); "
    hold += "print('held', flush=True); input()"
    command = [sys.executable, "-c", hold, str(folder)]
    holder = subprocess.Popen(command, cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(
            RecipeError, match=rf"is in use by another run \(PID {holder.pid} on {socket.gethostname()}\)"
        ):
            RunLock(RunFolder(folder)).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RunLock(RunFolder(folder)):
        assert json.loads((folder / run_folder.LOCK).read_text())["pid"] == os.getpid()
    assert f"the run of PID {holder.pid} on {socket.gethostname()} ended without releasing" in capsys.readouterr().out
    assert not (folder / run_folder.LOCK).exists()


def test_atomic_folder_keeps_the_old_one_when_writing_fails(tmp_path):
    target = tmp_path / "final"
    with run_folder.atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("old")
    with pytest.raises(OSError), run_folder.atomic_folder(target) as tmp:
        (tmp / "a.txt").write_text("new, half")
        raise OSError(28, "No space left on device")
    assert (target / "a.txt").read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["final"]


def test_files_written_0600_become_readable_as_the_umask_says(tmp_path):
    old = os.umask(0o022)
    try:
        with run_folder.atomic_folder(tmp_path / "final") as tmp:
            (tmp / "model.safetensors").write_bytes(b"x")
            (tmp / "model.safetensors").chmod(0o600)  # as safetensors 0.8 writes it
    finally:
        os.umask(old)
    assert (tmp_path / "final" / "model.safetensors").stat().st_mode & 0o777 == 0o644


def test_a_checkpoint_is_complete_with_its_checksums(tmp_path):
    complete = fake_checkpoint(tmp_path, 2)
    cut = fake_checkpoint(tmp_path, 4, manifest=False)  # stopped before the checksums: incomplete
    assert run_folder.checkpoint_step(complete) == 2 and run_folder.checkpoint_step(cut) is None
    assert RunFolder(tmp_path).latest_checkpoint() == (complete, [cut])
    assert RunFolder(tmp_path).remove_incomplete_checkpoint(4) == cut and not cut.exists()
    assert RunFolder(tmp_path).remove_incomplete_checkpoint(2) is None and complete.exists()


@pytest.mark.parametrize("name", ["model.safetensors", "optimizer.pt", "trainer_state.json"])
def test_one_flipped_byte_in_any_file_is_found(tmp_path, name):
    checkpoint = fake_checkpoint(tmp_path, 2)
    assert run_folder.damaged_file(checkpoint) is None
    data = bytearray((checkpoint / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (checkpoint / name).write_bytes(bytes(data))
    assert run_folder.damaged_file(checkpoint) == f"{name} differs from the hash recorded when it was saved"
    (checkpoint / name).unlink()
    assert run_folder.damaged_file(checkpoint) == f"{name} is missing"
    assert run_folder.damaged_file(fake_checkpoint(tmp_path / "cut", 2, manifest=False)) == "checksums.json is missing"


def test_run_files_say_what_of_a_run_a_folder_holds(tmp_path):
    folder = RunFolder(tmp_path / "run")
    assert folder.run_files() == []
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "notes.txt").write_text("mine")  # not a run's file
    assert folder.run_files() == []
    (tmp_path / "run" / run_folder.SAMPLES).write_text("{}\n")
    assert folder.run_files() == [run_folder.SAMPLES]
    fake_checkpoint(tmp_path / "run", 3)
    run_folder.write_run_files(tmp_path / "run" / "final", {"a": 1}, {"run_id": "x"})
    assert folder.run_files() == ["checkpoint-3", "final", run_folder.SAMPLES]


def test_newest_model_is_the_last_saved_final_or_complete_checkpoint(tmp_path):
    def model_folder(path: Path, saved: float) -> Path:
        path.mkdir(parents=True, exist_ok=True)
        (path / "config.json").write_text("{}")
        (path / "model.safetensors").write_bytes(b"w")
        os.utime(path / "model.safetensors", (saved, saved))  # saved when its weights were
        return path

    with pytest.raises(RecipeError, match="no model given and none found"):
        run_folder.newest_model(tmp_path)
    first = model_folder(tmp_path / "a" / "final", saved=100)
    checkpoint = model_folder(fake_checkpoint(tmp_path / "b", 5), saved=200)
    model_folder(tmp_path / "c" / "checkpoint-9", saved=300)  # no trainer state, no checksums: being written
    assert run_folder.newest_model(tmp_path) == checkpoint
    (first / "eval_results.json").write_text("{}")  # written beside it later: the model is as old as before
    assert run_folder.newest_model(tmp_path) == checkpoint
    os.utime(first / "model.safetensors", (400, 400))
    assert run_folder.newest_model(tmp_path) == first


def test_disk_warning_comes_while_a_save_can_still_fit(tmp_path, monkeypatch, capsys):
    usage = type("Usage", (), {"free": 10 * 2**30})
    monkeypatch.setattr(run_folder.shutil, "disk_usage", lambda path: usage)
    assert not run_folder.warn_if_disk_is_short(tmp_path, 2 * 2**30)
    assert run_folder.warn_if_disk_is_short(tmp_path, 12 * 2**30)
    assert "disk: 10.00 GiB free" in capsys.readouterr().out
