"""eval.py: the model it finds, the block size as context, the offline task, eval_results.json, the
model card's model-index, and every mistake in one line.

The tests that go past eval.py's first check need lm-eval (pip install -r requirements-eval.txt). Outside CI they skip without it;
in CI (CI=true) they fail instead, so that CI cannot pass without evaluating.
"""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import eval
from recipe import run_folder
from recipe.run_folder import newest_model, write_atomically

import pytest
import yaml
from conftest import ROOT

EVAL_DATA = ROOT / "assets" / "eval"
OFFLINE_METRICS = {
    "tinyshakespeare_nextline": ["acc", "acc_norm"],
    "tinyshakespeare_perplexity": ["word_perplexity", "byte_perplexity", "bits_per_byte"],
}


@pytest.fixture(scope="session")  # session: checked before tiny_run trains
def lm_eval_installed():
    if importlib.util.find_spec("lm_eval") is None:
        reason = "lm-eval is not installed: pip install -r requirements-eval.txt"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason} (CI must run the evaluation tests)")
        pytest.skip(reason)


def fake_model(folder: Path, saved: float = 0, state: bool = False, weights: bool = True) -> Path:
    """A folder that looks like a saved model to the finder (nothing in it loads)."""
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    (folder / "tokenizer.json").write_text("{}")
    if weights:
        (folder / "model.safetensors").write_bytes(b"")
        os.utime(folder / "model.safetensors", (saved, saved))  # when it was saved: its weights' time
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
        run_folder.write_manifest(folder)  # complete: its checksums are written last
    return folder


def error_line(capsys) -> str:
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1, err
    assert err[0].startswith("error: ") and "Traceback" not in err[0]
    return err[0]


# --- which model ---------------------------------------------------------------------------------


def test_no_argument_takes_the_newest_final_or_complete_checkpoint(tmp_path, monkeypatch):
    fake_model(tmp_path / "runs" / "old" / "final", saved=1_000)
    fake_model(tmp_path / "runs" / "new" / "checkpoint-4", saved=3_000, state=True)
    fake_model(tmp_path / "runs" / "new" / "checkpoint-6", saved=4_000)  # no trainer_state.json: incomplete
    monkeypatch.chdir(tmp_path)
    assert eval.resolve_model(None)[1] == Path("runs/new/checkpoint-4")


def test_a_run_folder_means_its_final_else_its_newest_checkpoint(tmp_path):
    run = tmp_path / "run"
    fake_model(run / "checkpoint-2", saved=2_000, state=True)
    fake_model(run / "checkpoint-10", saved=1_000, state=True)  # the highest step, whatever the clock says
    assert eval.resolve_model(str(run))[1] == run / "checkpoint-10"
    fake_model(run / "final", saved=500)
    assert eval.resolve_model(str(run))[1] == run / "final"


def test_a_model_folder_is_used_as_it_is_and_a_hub_id_is_left_to_the_hub(tmp_path, monkeypatch):
    folder = fake_model(tmp_path / "exported")
    assert eval.resolve_model(str(folder))[1] == folder
    monkeypatch.setattr(eval, "hub_is_reachable", lambda timeout=3.0: True)
    assert eval.resolve_model("HuggingFaceTB/SmolLM2-135M") == (
        "HuggingFaceTB/SmolLM2-135M",
        None,
        "HuggingFaceTB/SmolLM2-135M",
    )


def test_block_size_comes_from_the_model_folder_or_the_run_folder_above_it(tmp_path):
    run = tmp_path / "run"
    final = fake_model(run / "final")
    assert eval.trained_block_size(final) == (None, "no recipe_config.yaml beside the model")
    (run / "recipe_config.yaml").write_text("data:\n  block_size: 256\n")
    assert eval.trained_block_size(final)[0] == 256
    (final / "recipe_config.yaml").write_text("name: x\ndata:\n  block_size: 64\n")
    assert eval.trained_block_size(final) == (64, f"data.block_size of {final / 'recipe_config.yaml'}")


# --- mistakes in one line ------------------------------------------------------------------------


def test_without_lm_eval_it_says_how_to_install_it(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # `import lm_eval` fails as if it were not installed
    assert eval.main([str(fake_model(tmp_path / "final"))]) == 2
    assert error_line(capsys) == "error: lm-eval is not installed: pip install -r requirements-eval.txt"


def test_python_eval_py_without_lm_eval_prints_one_line_and_exits_2(tmp_path):
    script = (
        f"import runpy, sys; sys.path.insert(0, {str(ROOT)!r}); sys.modules['lm_eval'] = None; sys.argv = ['eval.py']; "
        f"runpy.run_path({str(ROOT / 'eval.py')!r}, run_name='__main__')"
    )
    result = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr == "error: lm-eval is not installed: pip install -r requirements-eval.txt\n"


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda p: p, "no model in {p} (no config.json, and no final/ or complete checkpoint-N inside)"),
        (lambda p: fake_model(p / "final", weights=False).parent, "no weights in {p}/final"),
        (lambda p: fake_model(p / "m", weights=False), "no weights in {p}/m (no *.safetensors)"),
        (lambda p: p / "missing" / "final", "no model at '{p}/missing/final' (no such folder)"),
    ],
)
def test_a_folder_without_a_model_is_one_line(lm_eval_installed, tmp_path, capsys, make, message):
    target = make(tmp_path)
    assert eval.main([str(target)]) == 2
    assert message.format(p=tmp_path) in error_line(capsys)


def test_no_model_anywhere_is_one_line(lm_eval_installed, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert eval.main([]) == 2
    assert "no model given and none found in runs/*/final" in error_line(capsys)


def test_a_hub_id_offline_fails_in_seconds(
    lm_eval_installed, tmp_path, monkeypatch, capsys
):  # conftest: HF_HUB_OFFLINE=1
    monkeypatch.chdir(tmp_path)
    assert eval.main(["someone/not-cached-model"]) == 2  # the local-files-only branch's message: no retries
    assert "the Hugging Face Hub cannot be reached and 'someone/not-cached-model' is not in the local cache" in (
        error_line(capsys)
    )


def test_an_unknown_task_is_one_line_with_suggestions(lm_eval_installed, tmp_path, capsys):
    assert eval.main([str(fake_model(tmp_path / "final")), "--tasks", "tinyshakespeare,hellaswagg"]) == 2
    line = error_line(capsys)
    assert "unknown task 'hellaswagg' for --tasks: did you mean 'hellaswag'" in line


@pytest.mark.parametrize(
    "flags, message",
    [
        (["--limit", "0"], "argument --limit: must be a whole number of examples or a share in (0, 1)"),
        (["--limit", "2.5"], "argument --limit: must be a whole number"),
        (["--batch-size", "big"], "argument --batch-size: must be a whole number of at least 1 or auto"),
        (["--num-fewshot", "-1"], "argument --num-fewshot: must be a whole number of at least 0"),
        (["--max-length", "0"], "argument --max-length: must be a whole number of at least 1"),
    ],
)
def test_flag_mistakes_are_one_line(flags, message, capsys, monkeypatch):
    monkeypatch.setattr(eval, "harness", lambda: None)  # the flags are read before lm-eval is looked for
    assert eval.main(flags) == 2
    assert message in error_line(capsys)


# --- the offline task's data ---------------------------------------------------------------------


def test_the_shipped_data_is_what_the_script_derives_and_small():
    sys.path.insert(0, str(EVAL_DATA))
    try:
        import make_tinyshakespeare_data as make
    finally:
        sys.path.remove(str(EVAL_DATA))
    corpus = (ROOT / "assets" / "tinyshakespeare.txt").read_text().splitlines()
    for name, rows in make.build().items():
        path = EVAL_DATA / name
        assert path.read_text() == "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows)
        assert path.stat().st_size < 200_000
    questions = [json.loads(line) for line in (EVAL_DATA / "tinyshakespeare_nextline.jsonl").open()]
    assert len(questions) == 500
    for q in questions:
        assert len(set(q["choices"])) == 4
        assert corpus[q["line"] - 1] == q["choices"][q["label"]]  # the true next line of the play
        assert q["line"] > len(corpus) - 4_000  # in the slice
        assert corpus[q["line"] - 2] == q["context"].splitlines()[-1]


# --- eval_results.json and the model card --------------------------------------------------------

RESULTS = {
    "format": 1,
    "model": {"source": "runs/x/final", "name": "Tiny", "step": 4},
    "tasks": [
        {
            "task": "tinyshakespeare_nextline",
            "task_version": 1.0,
            "dataset": {"type": "tinyshakespeare", "name": "tiny Shakespeare", "config": None, "split": "test"},
            "num_fewshot": 0,
            "examples": 20,
            "examples_total": 500,
            "metrics": [{"name": "acc", "value": 0.25, "stderr": 0.1, "higher_is_better": True}],
            "lm_eval_version": "0.4.13",
            "date": "2026-01-01T00:00:00+00:00",
            "limit": 20,
            "max_length": 64,
            "device": "cpu",
            "dtype": "float32",
            "batch_size": "8",
        },
        {
            "task": "arc_easy",
            "task_version": 1.0,
            "dataset": {"type": "allenai/ai2_arc", "name": "arc_easy", "config": "ARC-Easy", "split": "test"},
            "num_fewshot": 5,
            "examples": 2376,
            "examples_total": 2376,
            "metrics": [
                {"name": "acc", "value": 0.5432, "stderr": 0.01, "higher_is_better": True},
                {"name": "acc_norm", "value": None, "stderr": None, "higher_is_better": True},
            ],
            "lm_eval_version": "0.4.13",
            "date": "2026-01-01T00:00:00+00:00",
            "limit": None,
            "max_length": 2048,
            "device": "cuda",
            "dtype": "bfloat16",
            "batch_size": "auto",
        },
    ],
}


def test_lm_eval_output_becomes_one_entry_per_task_and_group():
    """The shape simple_evaluate returns (lm-eval 0.4.13), for a group of one task."""
    output = {
        "results": {
            "tinyshakespeare_nextline": {
                "alias": "x",
                "acc,none": 0.5,
                "acc_stderr,none": 0.1,
                "acc_norm,none": 0.25,
                "acc_norm_stderr,none": "N/A",
            },
            "shakes": {"alias": "shakes", "acc,none": 0.5, "acc_stderr,none": 0.1, "sample_count": {"acc,none": 4}},
        },
        "group_subtasks": {"shakes": ["tinyshakespeare_nextline"]},
        "configs": {
            "tinyshakespeare_nextline": {
                "dataset_path": "json",
                "test_split": "test",
                "metadata": {
                    "dataset_type": "tinyshakespeare",
                    "dataset_config": "nextline",
                    "dataset_name": "tiny Shakespeare",
                },
            }
        },
        "versions": {"tinyshakespeare_nextline": 1.0, "shakes": 1.0},
        "n-shot": {"tinyshakespeare_nextline": 0},
        "higher_is_better": {"tinyshakespeare_nextline": {"acc": True, "acc_norm": True}, "shakes": {"acc": True}},
        "n-samples": {"tinyshakespeare_nextline": {"original": 500, "effective": 4}},
    }
    task, group = eval.task_results(output, {"limit": 4})
    assert task["dataset"] == {
        "type": "tinyshakespeare",
        "name": "tiny Shakespeare",
        "config": "nextline",
        "split": "test",
    }
    assert task["metrics"] == [
        {"name": "acc", "value": 0.5, "stderr": 0.1, "higher_is_better": True},
        {"name": "acc_norm", "value": 0.25, "stderr": None, "higher_is_better": True},  # "N/A": no stderr
    ]
    assert (task["examples"], task["examples_total"], task["limit"]) == (4, 500, 4)
    assert (group["task"], group["examples"], group["dataset"]["type"]) == ("shakes", 4, "tinyshakespeare")
    assert [m["name"] for m in group["metrics"]] == ["acc"]
    assert eval.result_lines([task])[1] == "tinyshakespeare_nextline | acc_norm 0.250 | 4 examples of 500"


def render_card(results: dict) -> dict:
    from huggingface_hub import ModelCard, ModelCardData

    data = ModelCardData(model_name="Tiny", library_name="transformers", eval_results=eval.model_index_results(results))
    card = ModelCard(f"---\n{data.to_yaml()}\n---\n\n# Tiny\n")
    assert card.data.eval_results  # parsed back from the YAML
    return yaml.safe_load(card.content.split("---")[1])


def test_model_index_results_make_a_card_with_a_model_index():
    meta = render_card(RESULTS)
    (index,) = meta["model-index"]
    assert index["name"] == "Tiny"
    by_dataset = {r["dataset"]["type"]: r for r in index["results"]}
    assert set(by_dataset) == {"tinyshakespeare", "allenai/ai2_arc"}
    arc = by_dataset["allenai/ai2_arc"]
    assert arc["task"] == {"type": "text-generation", "name": "arc_easy"}
    assert arc["dataset"] == {"name": "arc_easy", "type": "allenai/ai2_arc", "config": "ARC-Easy", "split": "test"}
    assert arc["metrics"] == [{"type": "acc", "value": 0.5432, "name": "acc (5-shot)"}]  # no value: left out
    assert by_dataset["tinyshakespeare"]["metrics"][0]["name"] == "acc (first 20 of 500 examples)"
    assert arc["source"]["name"] == "lm-evaluation-harness 0.4.13"


def test_new_results_replace_the_same_tasks_and_keep_the_others():
    new = {"format": 1, "model": RESULTS["model"], "tasks": [dict(RESULTS["tasks"][0], limit=None)]}
    merged, kept = eval.merge_results(RESULTS, new)
    assert kept == ["arc_easy"]
    assert [t["task"] for t in merged["tasks"]] == ["arc_easy", "tinyshakespeare_nextline"]
    assert merged["tasks"][1]["limit"] is None


def test_results_beside_an_old_model_do_not_make_it_the_newest(tmp_path, monkeypatch):
    old = fake_model(tmp_path / "runs" / "old" / "final", saved=1_000)
    new = fake_model(tmp_path / "runs" / "new" / "final", saved=2_000)
    write_atomically(old / "eval_results.json", json.dumps(RESULTS))
    assert eval.read_eval_results(old) == RESULTS
    assert newest_model(tmp_path / "runs") == new


# --- end to end ----------------------------------------------------------------------------------


@pytest.mark.slow
def test_evaluates_the_tiny_run_with_its_block_size_and_writes_eval_results(lm_eval_installed, tiny_run, capsys):
    final = tiny_run / "final"
    assert eval.main([str(final), "--limit", "16"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith(f"model: {final} | max_length 64 (data.block_size of ")  # not 8,192
    metric_lines = [line.split(" | ") for line in out[1:-1]]
    expected = [(task, metric) for task, metrics in OFFLINE_METRICS.items() for metric in metrics]
    assert [(task, shown.split(" ")[0]) for task, shown, _ in metric_lines] == expected
    assert {examples for _, _, examples in metric_lines} == {"16 examples of 500", "16 examples of 87"}
    assert out[-1] == f"wrote {final / 'eval_results.json'}"

    results = eval.read_eval_results(final)
    assert results["model"] == {"source": str(final), "name": "SmolLM2-135M", "step": 4}
    assert [t["task"] for t in results["tasks"]] == list(OFFLINE_METRICS)
    for entry in results["tasks"]:
        assert [m["name"] for m in entry["metrics"]] == OFFLINE_METRICS[entry["task"]]
        assert all(isinstance(m["value"], float) for m in entry["metrics"])
        assert entry["examples"] == 16 and entry["limit"] == 16 and entry["max_length"] == 64
        assert entry["lm_eval_version"] == eval.harness()[0]
        assert entry["dataset"]["type"] == "tinyshakespeare" and entry["dataset"]["split"] == "test"
        assert entry["date"].endswith("+00:00")
    nextline = results["tasks"][0]["metrics"][0]
    assert 0 <= nextline["value"] <= 1 and nextline["stderr"] > 0
    assert [p.name for p in final.glob(".eval_results.json*")] == []  # the temporary file was renamed
    (final / "eval_results.json").unlink()  # the session's tiny run, as other tests expect it

    meta = render_card(results)
    assert len(meta["model-index"][0]["results"]) == 2  # one per task, its metrics inside
