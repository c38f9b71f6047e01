"""Loggers of training.report_to: a missing package is one line before the data work, naming the install
command; trackio logs a real run offline, into its local database, under the recipe's project."""

import json
import os
import sqlite3
import subprocess
import sys

import train
from recipe import arguments
from recipe.config import load_config

import pytest
from conftest import ROOT, tiny_overrides

INSTALL = {
    "trackio": "pip install -r requirements-trackio.txt",
    "tensorboard": "pip install -r requirements-tensorboard.txt",
    "wandb": "pip install wandb",
}


@pytest.mark.parametrize("logger", sorted(INSTALL))
def test_a_logger_that_is_not_installed_is_one_line_before_the_data_work(logger, tmp_path, monkeypatch, capsys):
    for module in (logger, "tensorboardX"):
        monkeypatch.setitem(sys.modules, module, None)  # as if it were not installed: find_spec answers None
    cache = tmp_path / "cache"
    assert train.main(tiny_overrides(tmp_path / "run", cache, report_to=logger)) == 2
    out, err = capsys.readouterr()
    assert err.splitlines() == [f"error: training.report_to={logger}: {logger} is not installed; {INSTALL[logger]}"]
    assert "data:" not in out and not cache.exists() and not (tmp_path / "run").exists()


def test_a_logger_among_several_is_checked_too(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "trackio", None)
    assert train.main(tiny_overrides(tmp_path / "run", tmp_path / "cache", report_to="[tensorboard,trackio]")) == 2
    assert capsys.readouterr().err.startswith("error: training.report_to=trackio: trackio is not installed")


def test_a_logger_the_trainer_does_not_know_is_one_line_too(tmp_path, capsys):
    assert train.main(tiny_overrides(tmp_path / "run", tmp_path / "cache", report_to="[wandb,wandbb]")) == 2
    assert capsys.readouterr().err == "error: training.report_to=wandbb: no such logger (see README.md)\n"


def test_trackio_project_is_the_recipe_s_and_stays_local_unless_the_config_says_otherwise(tmp_path):
    overrides = tiny_overrides(tmp_path / "run", tmp_path / "cache", report_to="trackio")
    args = arguments.build_training_arguments(load_config(None, overrides), quiet=True)
    assert args.report_to == ["trackio"] and args.project == "smollm2-recipe"
    assert args.trackio_space_id is None and args.trackio_static_space_id is False  # no Space, even with push_to_hub
    named = load_config(None, [*overrides, "training.project=shakespeare", "training.trackio_static_space_id=me/logs"])
    args = arguments.build_training_arguments(named, quiet=True)
    assert args.project == "shakespeare" and args.trackio_static_space_id == "me/logs"


@pytest.mark.slow
def test_a_short_run_logs_to_trackio_offline(tmp_path, cache_dir):
    """In a process of its own: trackio reads TRACKIO_DIR when it is imported."""
    overrides = tiny_overrides(
        tmp_path / "run", cache_dir, max_steps=4, save_steps=2, eval_steps=2, report_to="trackio"
    )
    env = {**os.environ, "TRACKIO_DIR": str(tmp_path / "trackio"), "HF_HUB_OFFLINE": "1"}
    run = subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *overrides],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert run.returncode == 0, run.stderr[-2000:]
    assert "* Trackio project initialized: smollm2-recipe" in run.stdout
    with sqlite3.connect(tmp_path / "trackio" / "smollm2-recipe.db") as db:
        rows = [json.loads(metrics) for (metrics,) in db.execute("SELECT metrics FROM metrics ORDER BY id")]
    losses = {r["train/global_step"]: r["train/loss"] for r in rows if "train/loss" in r}
    assert sorted(losses) == [1, 2, 3, 4] and all(loss > 0 for loss in losses.values())
    assert [r["train/global_step"] for r in rows if "eval/loss" in r] == [2, 4]
    assert all("train/learning_rate" in r and "train/tokens_per_second" in r for r in rows if "train/loss" in r)
    logged = json.loads((tmp_path / "run" / "trainer_state.json").read_text())["log_history"]
    assert losses == {h["step"]: h["loss"] for h in logged if "loss" in h}  # what the run itself recorded
