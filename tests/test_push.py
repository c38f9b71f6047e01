"""push.py builds a checked repo folder whose model card is true for every run, uploads it to the Hub API (a
local stand-in here), and fails on any bad flag in one line with nothing written."""

import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import push
from recipe import card
from recipe.run_state import Phase, RunState

import pytest
import torch
import yaml
from conftest import ROOT, TOKEN, TOKENIZER, tiny_overrides
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

# --- a run folder written by hand: a main phase of 60 steps and a resume phase to step 110 ---------------

PHASES = [  # on 2 processes of 4 sequences x 2 accumulation
    Phase("main", 1, 60, "warmup_stable_decay", 0.003, 10, {}, processes=2, samples_per_step=16),
    Phase("resume", 61, 110, "constant", 0.0003, 0, {}, processes=2, samples_per_step=16),
]
CORPUS = {"hub_id": None, "files": ["tinyshakespeare.txt"]}


def run_state(global_step: int = 110, **fields) -> RunState:
    """The run state after the main run and --resume: 16 sequences of 64 tokens a step."""
    fields = {"corpus": CORPUS, "global_step": global_step, "tokens_trained": global_step * 16 * 64, **fields}
    return RunState("r", PHASES, **fields)


def logged_lr(step: int) -> float:
    """What the Trainer logs for the two phases: warmup to 3e-3, stable, linear decay over the last 12 steps of
    the main phase, then 3e-4 held constant."""
    if step > 60:
        return 0.0003
    if step <= 10:
        return 0.003 * step / 10
    return 0.003 * min(1.0, (60 - step) / 12)


def trainer_state(global_step: int) -> dict:
    history = []
    for step in range(1, global_step + 1):
        if step == 1 or step % 10 == 0:
            history.append(
                {
                    "step": step,
                    "loss": 10 - step / 20,
                    "learning_rate": logged_lr(step),
                    "tokens_per_second": 2000.0,
                    "tokens_per_second_per_device": 1000.0,
                }
            )
        if step % 20 == 0:
            history.append({"step": step, "eval_loss": 10.2 - step / 25})
    return {
        "global_step": global_step,
        "max_steps": 110,
        "train_batch_size": 4,
        "num_input_tokens_seen": 0,
        "log_history": history,
    }


RECIPE = {
    "name": "SmolLM2-360M",
    "tokenizer": TOKENIZER,
    "data": {"path": "../shared/data/tinyshakespeare.txt", "block_size": 64},
    "training": {
        "max_steps": 60,
        "per_device_train_batch_size": 4,
        "gradient_accumulation_steps": 2,
        "learning_rate": 0.003,
        "lr_scheduler_type": "warmup_stable_decay",
        "warmup_steps": 10.0,
        "weight_decay": 0.01,
        "bf16": False,
    },
    "init_from": None,
    "hub": {"license": "apache-2.0", "dataset": None},
}


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory, tokenizer) -> Path:
    """A saved tiny model (random weights) with the recipe's tokenizer, and nothing else: no training record."""
    from transformers import LlamaConfig, LlamaForCausalLM

    folder = tmp_path_factory.mktemp("weights") / "published"
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        tie_word_embeddings=True,
        bos_token_id=0,
        eos_token_id=0,
    )
    LlamaForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder


def write_run(root: Path, weights: Path, global_step: int = 110) -> Path:
    """A run folder as train.py leaves it after the main run and --resume: final/ and the run's files above it."""
    run = root / "run"
    shutil.copytree(weights, run / "final")
    (run / "trainer_state.json").write_text(json.dumps(trainer_state(global_step)))
    (run / "recipe_config.yaml").write_text(yaml.safe_dump(RECIPE))
    (run / "run.json").write_text(json.dumps(run_state(global_step).to_dict()))
    samples = [{"step": s, "prompt": "ROMEO:", "completion": f" at step {s}"} for s in (50, 100)]
    (run / "samples.jsonl").write_text("".join(json.dumps(s) + "\n" for s in samples))
    return run


def push_dry_run(source: Path, out: Path) -> str:
    assert push.main(["--checkpoint", str(source), "--repo-id", "me/tiny", "--dry-run", "--out", str(out)]) == 0
    return (out / "README.md").read_text()


def section(card: str, title: str) -> str:
    return card.split(f"## {title}\n", 1)[1].split("\n## ", 1)[0]


def phase_rows(card: str) -> list[dict]:
    rows = []
    for line in section(card, "Training phases").splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if not line.startswith("| ") or cells[0] in ("phase", "---"):
            continue
        first, last = (int(x.replace(",", "")) for x in cells[1].split("–"))
        rows.append(
            {
                "name": cells[0],
                "first": first,
                "last": last,
                "steps": int(cells[2].replace(",", "")),
                "schedule": cells[3].strip("`"),
                "lr": float(cells[4]),
                "warmup": cells[5],
            }
        )
    return rows


def assert_phases_match_trainer_state(rows: list[dict], state: dict) -> None:
    """Each phase's steps are contiguous and end at global_step; its lr is what the Trainer logged in it."""
    assert rows and rows[0]["first"] == 1 and rows[-1]["last"] == state["global_step"]
    for row, following in zip(rows, rows[1:] + [None], strict=True):
        assert row["steps"] == row["last"] - row["first"] + 1
        if following:
            assert following["first"] == row["last"] + 1
        logged = [
            h["learning_rate"]
            for h in state["log_history"]
            if "learning_rate" in h and row["first"] <= h["step"] <= row["last"]
        ]
        assert logged, row
        if row["schedule"] == "constant":
            assert logged == pytest.approx([row["lr"]] * len(logged))
        else:
            assert max(logged) == pytest.approx(row["lr"])


def test_card_of_a_resumed_run_states_its_phases_steps_and_tokens(tiny_weights, tmp_path):
    run = write_run(tmp_path, tiny_weights)
    card = push_dry_run(run / "final", tmp_path / "pushed")
    rows = phase_rows(card)
    assert [(r["name"], r["first"], r["last"], r["schedule"]) for r in rows] == [
        ("main", 1, 60, "warmup_stable_decay"),
        ("resume", 61, 110, "constant"),
    ]
    assert rows[0]["warmup"] == "10"  # an integer, not 10.0
    assert_phases_match_trainer_state(rows, trainer_state(110))
    intro = card.split("\n## ", 1)[0]
    assert "110 optimizer steps in 2 phases, 112,640 tokens on 2 processes." in intro  # as the Trainer counted them
    assert "in the [SmolLM2-360M](https://huggingface.co/HuggingFaceTB/SmolLM2-360M) configuration" in intro
    assert "135M" not in card
    assert "`tinyshakespeare.txt`" in intro and "../shared" not in card and "datasets:" not in card
    assert "max_steps" not in card and "10.0" not in card
    assert "| `gradient_accumulation_steps` | `2` |" in section(card, "Settings")
    assert "## Samples at step 100" in card and "ROMEO: at step 100" in card
    assert (tmp_path / "pushed" / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"


def test_card_of_an_interrupted_phase_says_where_it_stopped(tiny_weights, tmp_path):
    run = write_run(tmp_path, tiny_weights, global_step=80)
    card = push_dry_run(run / "final", tmp_path / "pushed")
    rows = phase_rows(card)
    assert [(r["name"], r["first"], r["last"]) for r in rows] == [("main", 1, 60), ("resume", 61, 80)]
    assert_phases_match_trainer_state(rows, trainer_state(80))
    assert "planned to step 110 and stopped at 80" in card and "80 optimizer steps" in card


@pytest.mark.parametrize(
    "global_step, expected",
    [(40, [("main", 1, 40)]), (60, [("main", 1, 60)]), (80, [("main", 1, 60), ("resume", 61, 80)])],
)
def test_training_phases_end_where_the_run_got_to(global_step, expected):
    record = card.TrainingRecord(recipe=RECIPE, state=None, run=run_state(global_step), samples_file=None)
    assert [(p.name, p.first_step, p.last_step) for p in card.training_phases(record)] == expected


def test_loss_curve_marks_each_phase_and_shows_the_learning_rate():
    state = trainer_state(110)
    record = card.TrainingRecord(recipe=RECIPE, state=state, run=run_state(), samples_file=None)
    figure = card.draw_loss_curve(state["log_history"], card.training_phases(record))
    loss_axis, lr_axis = figure.axes
    boundaries = [line.get_xdata()[0] for line in loss_axis.get_lines() if line.get_linestyle() == ":"]
    assert boundaries == [60.5]
    assert [t.get_text().strip() for t in loss_axis.texts] == ["main", "resume"]
    assert lr_axis.get_ylabel() == "learning rate"
    assert max(lr_axis.get_lines()[0].get_ydata()) == pytest.approx(0.003)


@pytest.mark.parametrize(
    "path, corpus, hub_dataset, expected",
    [
        ("../shared/data/tinyshakespeare.txt", CORPUS, None, "`tinyshakespeare.txt`"),
        (["a/b.txt", "c/d.txt"], {"files": ["b.txt", "d.txt"]}, None, "`b.txt`, `d.txt`"),
        (
            "/home/me/books",
            {"files": [f"{i}.txt" for i in range(7)]},
            None,
            "`0.txt`, `1.txt`, `2.txt`, `3.txt`, `4.txt` and 2 more files",
        ),
        (
            "karpathy/tiny_shakespeare",
            {"hub_id": "karpathy/tiny_shakespeare"},
            None,
            "[karpathy/tiny_shakespeare](https://huggingface.co/datasets/karpathy/tiny_shakespeare)",
        ),
        ("input.txt", None, "me/corpus", "[me/corpus](https://huggingface.co/datasets/me/corpus)"),
    ],
)
def test_dataset_is_a_hub_id_or_a_file_name_never_a_local_path(path, corpus, hub_dataset, expected):
    run = run_state(corpus=corpus)
    record = card.TrainingRecord(recipe={"data": {"path": path}}, state=None, run=run, samples_file=None)
    assert card.dataset_description(record, hub_dataset) == expected


def test_settings_print_integers_as_integers():
    assert [card.plain(v) for v in (10.0, 0.0003, 1e-08, 4, True, {"num_decay_steps": 12.0})] == [
        "10",
        "0.0003",
        "1e-08",
        "4",
        "True",
        "num_decay_steps=12",
    ]


def test_card_of_weights_the_recipe_did_not_train_says_only_what_is_known(tiny_weights, tmp_path):
    card = push_dry_run(tiny_weights, tmp_path / "pushed")
    header, body = card.split("---")[1], card.split("---", 2)[2]
    assert "base_model" not in header and "datasets" not in header and "smollm2-recipe" not in header
    assert "| parameters | 3,219,776 |" in body and "| layers | 2 |" in body
    claims = body.replace("No record of its training", "")
    for claim in (
        r"\btrained\b",
        "optimizer steps",
        "input.txt",
        "Training phases",
        "Settings",
        "learning_rate",
        "SmolLM2-135M",
        "Samples",
    ):
        assert not re.search(claim, claims), claim
    assert not (tmp_path / "pushed" / "loss_curve.png").exists()


@pytest.mark.parametrize("init_from", ["HuggingFaceTB/SmolLM2-135M", "/some/local/folder"])
def test_card_of_continued_pretraining_names_a_hub_base_model_never_a_local_path(tiny_weights, tmp_path, init_from):
    folder = tmp_path / "final"
    shutil.copytree(tiny_weights, folder)
    recipe = {**RECIPE, "init_from": init_from, "name": "SmolLM2-135M"}
    (folder / "recipe_config.yaml").write_text(yaml.safe_dump(recipe))
    base_model = None if init_from.startswith("/") else init_from  # a Hub id, as train.py records it
    (folder / "run.json").write_text(json.dumps(run_state(base_model=base_model).to_dict()))
    text = push_dry_run(folder, tmp_path / "pushed")
    if init_from.startswith("/"):
        assert "base_model" not in text.split("---")[1] and init_from not in text
        assert "continued from local weights" in text
    else:
        assert "base_model: HuggingFaceTB/SmolLM2-135M" in text.split("---")[1]
        assert "continued from [HuggingFaceTB/SmolLM2-135M](https://huggingface.co/HuggingFaceTB/SmolLM2-135M)" in text


# --- flags: each mistake is one line, exit 2, nothing written ------------------------------------


@pytest.fixture
def fake_model(tmp_path) -> Path:
    """Enough of a model folder for the checks that run before any loading."""
    folder = tmp_path / "model"
    folder.mkdir()
    (folder / "config.json").write_text("{}")
    (folder / "model.safetensors").write_bytes(b"")
    (tmp_path / "a-file").write_text("not a folder")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "keep.txt").write_text("somebody's file")
    return folder


FLAG_ERRORS = [
    (["--repo-id", "a/b/c"], "error: --repo-id 'a/b/c' is not a Hub repo id"),
    (["--repo-id", "noslash"], "error: --repo-id 'noslash' is not a Hub repo id"),
    (["--repo-id", "me/has space"], "error: --repo-id 'me/has space' is not a Hub repo id"),
    (["--repo-id", "/name"], "error: --repo-id '/name' is not a Hub repo id"),
    ([], "error: no repo id: pass --repo-id"),
    (["--space", "me/demo"], "error: --space needs the model's repo"),
    (["--repo-id", "me/x", "--space", "demo"], "error: --space 'demo' is not a Hub repo id"),
    (["--repo-id", "me/x", "--space"], "error: argument --space: expected one argument"),
    (["--repo-id", "me/x", "--checkpoint", "{tmp}/a-file"], "error: --checkpoint {tmp}/a-file is a file"),
    (["--repo-id", "me/x", "--checkpoint", "{tmp}/nope"], "error: no such checkpoint"),
    (["--repo-id", "me/x", "--checkpoint", "{tmp}/full"], "error: {tmp}/full holds no model"),
    (["--repo-id", "me/x", "--out", "{tmp}/full"], "error: --out {tmp}/full already holds files"),
    (["--repo-id", "me/x", "--out", "{tmp}/a-file"], "error: --out {tmp}/a-file is a file"),
    (["--repo-id", "me/x", "--out", "{tmp}/a-file/sub"], "error: --out {tmp}/a-file/sub lies under the file"),
    (["--repo-id", "me/x", "--out", "/proc/pushed"], "error: --out /proc/pushed cannot be created in /proc"),
    (["--repo-id", "a/b/c", "--out", "{tmp}/new/sub"], "error: --repo-id 'a/b/c'"),
    (["--repo-id", "me/x", "--out", "{tmp}/new/sub"], "error: could not build the repo folder from"),  # no weights
    (["--repo-id", "me/x", "--dtype", "int8"], "error: argument --dtype: invalid choice: 'int8'"),
    (["--repo-id", "me/x", "--bogus"], "error: unrecognized arguments: --bogus"),
    (["--repo-id", "me/x", "training.max_stepz=3"], "error: unknown config key 'training.max_stepz'"),
    (["--repo-id", "me/x", "--config", "{tmp}/missing.yaml"], "error: config file not found"),
]


@pytest.mark.parametrize("flags, expected", FLAG_ERRORS, ids=[" ".join(f) or "(none)" for f, _ in FLAG_ERRORS])
def test_bad_flag_is_one_line_exit_2_and_nothing_written(fake_model, tmp_path, capsys, flags, expected):
    argv = [f.replace("{tmp}", str(tmp_path)) for f in flags]
    argv += [] if "--checkpoint" in argv else ["--checkpoint", str(fake_model)]
    argv += [] if "--out" in argv else ["--out", str(tmp_path / "pushed")]
    before = sorted(tmp_path.rglob("*"))
    assert push.main([*argv, "--dry-run"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(expected.replace("{tmp}", str(tmp_path))), err
    assert sorted(tmp_path.rglob("*")) == before


def test_without_checkpoint_the_newest_run_final_is_used(tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    cfg = push.load_config(None, ["training.output_dir=runs/not-trained"])
    with pytest.raises(
        push.RecipeError, match=r"no trained model: looked in .*/runs/not-trained/final and runs/\*/final"
    ):
        push.find_source(None, cfg)
    for age, name in [(200, "older"), (100, "newer"), (0, "no-model")]:
        final = tmp_path / "runs" / name / "final"
        final.mkdir(parents=True)
        if name != "no-model":
            (final / "config.json").write_text("{}")
            (final / "model.safetensors").write_bytes(b"")
            os.utime(final / "model.safetensors", (time.time() - age, time.time() - age))
    assert push.find_source(None, cfg) == Path("runs/newer/final")
    printed = capsys.readouterr().out.strip().splitlines()
    assert printed == [
        f"no --checkpoint and no {tmp_path}/runs/not-trained/final: using runs/newer/final, the newest model in runs/"
    ]


# --- end to end, with a trained model ------------------------------------------------------------


@pytest.mark.slow
def test_card_after_a_real_resume_matches_trainer_state(tiny_run, cache_dir, tmp_path):
    import train

    run = tmp_path / "run"
    shutil.copytree(tiny_run, run)
    overrides = tiny_overrides(run, cache_dir, max_steps=4, save_steps=2, eval_steps=2) + ["samples.every_n_steps=2"]
    assert train.main(["--resume", *overrides, "resume.extra_steps=3"]) == 0
    card = push_dry_run(run / "final", tmp_path / "pushed")
    state = json.loads((run / "trainer_state.json").read_text())
    rows = phase_rows(card)
    assert [r["name"] for r in rows] == ["main", "resume"] and state["global_step"] == 7
    assert_phases_match_trainer_state(rows, state)
    assert "7 optimizer steps in 2 phases, 1,792 tokens" in card  # 7 x 4 sequences x 64 tokens, one process


@pytest.mark.slow
def test_dry_run_builds_a_bf16_folder_that_round_trips(tiny_run, tmp_path, capsys):
    out = tmp_path / "pushed"
    code = push.main(
        ["--checkpoint", str(tiny_run / "final"), "--repo-id", "me/tiny-smollm2", "--dry-run", "--out", str(out)]
    )
    assert code == 0
    printed = capsys.readouterr().out
    assert "dry run: would upload to me/tiny-smollm2" in printed and "model.safetensors" in printed
    with safe_open(str(out / "model.safetensors"), "pt") as f:
        assert {f.get_tensor(k).dtype for k in f.keys()} == {torch.bfloat16}
    source = AutoModelForCausalLM.from_pretrained(tiny_run / "final", dtype=torch.float32)
    pushed = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    for name, tensor in source.state_dict().items():  # the weights are the source's, rounded to bf16
        assert torch.equal(pushed.state_dict()[name], tensor.to(torch.bfloat16).float())
    ids = AutoTokenizer.from_pretrained(out)("ROMEO: what light", return_tensors="pt")["input_ids"]
    with torch.no_grad():
        a, b = source(ids).logits, pushed(ids).logits
    assert torch.allclose(a, b, rtol=0, atol=0.05 * a.abs().max().item())  # bf16 precision
    assert a.argmax(-1).eq(b.argmax(-1)).float().mean() > 0.9


@pytest.mark.slow
def test_model_card_has_metadata_results_curve_and_samples(tiny_run, tmp_path):
    out = tmp_path / "pushed"
    assert (
        push.main(["--checkpoint", str(tiny_run / "final"), "--repo-id", "me/tiny", "--dry-run", "--out", str(out)])
        == 0
    )
    card = (out / "README.md").read_text()
    header = card.split("---")[1]
    for line in ["license: apache-2.0", "library_name: transformers", "pipeline_tag: text-generation", "- smollm2"]:
        assert line in header
    assert "| parameters | 3,219,776 |" in card
    assert "| validation loss |" in card and "| validation perplexity |" in card and "| train loss" in card
    assert "| training throughput (tokens/s, last logged) |" in card
    assert "![loss curve](loss_curve.png)" in card and (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Samples at step 4" in card and "ROMEO:" in card
    assert "| main | 1–4 | 4 | `warmup_stable_decay` | 0.003 | 2 |" in card  # tiny_run: 4 steps, warmup 2
    assert 'from_pretrained("me/tiny")' in card


@pytest.mark.slow
def test_checkpoint_folder_can_be_pushed(tiny_run, tmp_path):
    out = tmp_path / "pushed"
    assert (
        push.main(
            ["--checkpoint", str(tiny_run / "checkpoint-2"), "--repo-id", "me/tiny", "--dry-run", "--out", str(out)]
        )
        == 0
    )
    assert "## Samples at step 2" in (out / "README.md").read_text()


@pytest.mark.slow
def test_upload_sends_the_folder_to_the_hub_api(tiny_run, hub, tmp_path, capsys):
    code = push.main(
        [
            "--checkpoint",
            str(tiny_run / "final"),
            "--repo-id",
            "me/tiny-smollm2",
            "--private",
            "--revision",
            "v1",
            "--space",
            "me/tiny-demo",
        ]
    )
    assert code == 0, capsys.readouterr().err
    repo = hub.repos["model:me/tiny-smollm2"]
    assert repo["private"] is True and repo["branches"] == ["v1"]
    assert set(repo["files"]) == {
        "README.md",
        "config.json",
        "generation_config.json",
        "loss_curve.png",
        "model.safetensors",
        "tokenizer.json",
        "tokenizer_config.json",
    }
    local = tmp_path / "received"
    local.mkdir()
    for name, content in repo["files"].items():
        (local / name).write_bytes(content)
    assert AutoModelForCausalLM.from_pretrained(local).config.num_hidden_layers == 2
    space = hub.repos["space:me/tiny-demo"]
    assert set(space["files"]) == {*push.SPACE_FILES, "requirements.txt", "README.md"}
    assert b"sdk: gradio" in space["files"]["README.md"]
    assert hub.variables["me/tiny-demo"] == {"MODEL_ID": "me/tiny-smollm2"}
    printed = capsys.readouterr()
    assert TOKEN not in printed.out + printed.err
    assert TOKEN.encode() not in repo["files"]["README.md"]


@pytest.mark.slow
def test_hub_refusal_is_one_line(tiny_run, hub, capsys):
    assert push.main(["--checkpoint", str(tiny_run / "final"), "--repo-id", "me/forbidden"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the Hub refused the upload:") and "403" in last
    assert TOKEN not in err and "Traceback" not in err
    assert "model:me/forbidden" not in hub.repos


@pytest.mark.slow
def test_no_token_is_one_line_and_non_zero(tiny_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env["HF_HOME"] = str(tmp_path / "empty-hf-home")
    result = subprocess.run(
        [sys.executable, str(ROOT / "push.py"), "--checkpoint", str(tiny_run / "final"), "--repo-id", "me/x"],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: no Hugging Face token: run `hf auth login` or set HF_TOKEN (or use --dry-run)"
    ]


@pytest.mark.slow
def test_missing_checkpoint_and_failed_reload_check(tiny_run, tmp_path, capsys):
    assert push.main(["--checkpoint", str(tmp_path / "nope"), "--repo-id", "me/x", "--dry-run"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run / "final", broken)
    with pytest.raises(push.RecipeError, match="fails the reload check"):
        (broken / "model.safetensors").write_bytes(b"not a safetensors file")
        push.check_folder(broken)


@pytest.mark.slow
def test_generate_py_streams_a_continuation(tiny_run):
    result = subprocess.run(
        [sys.executable, str(ROOT / "generate.py"), str(tiny_run / "final"), "--max-new-tokens", "20"],
        input="ROMEO:\n",
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:") and len(result.stdout.strip()) > len("ROMEO:")


@pytest.mark.slow
def test_card_of_an_evaluated_model_carries_a_model_index(tiny_run, tmp_path):
    import eval

    final = tmp_path / "final"
    shutil.copytree(tiny_run / "final", final)
    results = {
        "format": 1,
        "model": {"source": str(final)},
        "tasks": [
            {
                "task": "tinyshakespeare_nextline",
                "dataset": {
                    "type": "tinyshakespeare",
                    "name": "tiny Shakespeare",
                    "config": "nextline",
                    "split": "test",
                },
                "num_fewshot": 0,
                "examples": 500,
                "examples_total": 500,
                "limit": None,
                "lm_eval_version": "0.4.13",
                "metrics": [{"name": "acc", "value": 0.25, "stderr": 0.02}],
            }
        ],
    }
    (final / "eval_results.json").write_text(json.dumps(results))
    assert eval.read_eval_results(final) == results
    card = push_dry_run(final, tmp_path / "pushed")
    meta = yaml.safe_load(card.split("---")[1])
    (index,) = meta["model-index"]
    assert index["name"] == "tiny" and index["results"][0]["metrics"] == [{"type": "acc", "value": 0.25, "name": "acc"}]
    assert "| tinyshakespeare_nextline | acc | 0.25 | 500 | 0 |" in card.split("## Evaluation", 1)[1]
