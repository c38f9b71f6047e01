"""generate.py: flag and folder mistakes in one line, the newest run found, names and steps, seeds, long prompts."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import generate
from recipe import run_folder
from recipe.cli import RecipeError
from recipe.sampling import SamplingSettings

import pytest
import torch
from conftest import ROOT

CONTEXT = 64  # the small model's max_position_embeddings, so that a long prompt is short to write


@pytest.fixture(scope="module")
def small_run(tmp_path_factory, tokenizer) -> Path:
    """A run folder with a final/ of a random one-layer model (no training): name and step on record."""
    from transformers import LlamaConfig, LlamaForCausalLM

    config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        intermediate_size=32,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=CONTEXT,
        bos_token_id=0,
        eos_token_id=0,
        tie_word_embeddings=True,
    )
    torch.manual_seed(0)
    run = tmp_path_factory.mktemp("small") / "shakespeare"
    LlamaForCausalLM(config).save_pretrained(run / "final")
    tokenizer.save_pretrained(run / "final")
    (run / "final" / "recipe_config.yaml").write_text("name: Tiny-Test\nmodel:\n  hidden_size: 16\n")
    (run / "trainer_state.json").write_text(json.dumps({"global_step": 7, "log_history": []}))
    return run


@pytest.fixture(scope="module")
def small(small_run) -> generate.LoadedModel:
    return generate.load_model(str(small_run / "final"), "cpu")


def complete(loaded, prompt="ROMEO:", **settings) -> str:
    return "".join(generate.stream_completion(loaded, prompt, SamplingSettings(**settings)))


# --- one table of mistakes -----------------------------------------------------------------------

FLAG_MISTAKES = [
    (["--max-new-tokens", "0"], "--max-new-tokens must be at least 1"),
    (["--max-new-tokens", "-5"], "--max-new-tokens must be at least 1"),
    (["--temperature", "-0.5"], "--temperature must be 0 (greedy) or more"),
    (["--temperature", "nan"], "--temperature must be 0 (greedy) or more"),
    (["--top-p", "0"], "--top-p must be more than 0 and at most 1"),
    (["--top-p", "1.5"], "--top-p must be more than 0 and at most 1"),
    (["--top-k", "-1"], "--top-k must be 0 (off) or more"),
    (["--seed", "-1"], "--seed must be between 0 and"),
    (["--top-k", "many"], "argument --top-k: invalid int value"),
    (["--device", "tpu"], "--device tpu is not a device"),
]
FOLDER_MISTAKES = [
    ("{missing}", [], "no model at"),
    ("{empty}", [], "no model in"),
    ("{no_weights}", [], "no weights in"),
    ("{no_tokenizer}", [], "no tokenizer in"),
    ("{model}", ["--prompt", "word " * CONTEXT], "the prompt ("),
    ("{model}", ["--prompt", "hi", "--max-new-tokens", str(CONTEXT)], "the prompt (1 tokens) and max new tokens (64)"),
]


def broken_folders(small_run: Path, root: Path) -> dict[str, str]:
    final = small_run / "final"
    no_weights, no_tokenizer = root / "no-weights", root / "no-tokenizer"
    for folder, skip in [(no_weights, "model.safetensors"), (no_tokenizer, "tokenizer.json")]:
        shutil.copytree(final, folder, ignore=shutil.ignore_patterns(skip))
    (root / "empty").mkdir()
    return {
        "model": str(final),
        "missing": str(root / "nowhere" / "final"),
        "empty": str(root / "empty"),
        "no_weights": str(no_weights),
        "no_tokenizer": str(no_tokenizer),
    }


def run_main(argv, capsys) -> tuple[int, str, str]:
    try:
        code = generate.main(argv)
    except SystemExit as e:  # argparse's own errors exit from inside parse_args
        code = e.code
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_error_line(code: int, out: str, err: str, first_words: str) -> None:
    assert code == 2
    assert out == ""  # no half-printed prompt
    assert err.count("\n") == 1 and "Traceback" not in err, err
    assert err.startswith(f"error: {first_words}"), err
    assert "; " in err  # what is wrong; how to fix it


@pytest.mark.parametrize(("flags", "first_words"), FLAG_MISTAKES, ids=[" ".join(f) for f, _ in FLAG_MISTAKES])
def test_bad_flag_is_one_line_before_the_model_loads(flags, first_words, small_run, capsys, monkeypatch):
    monkeypatch.setattr(generate, "load_model", lambda *a, **k: pytest.fail("loaded the model before checking flags"))
    assert_one_error_line(*run_main([str(small_run / "final"), "--prompt", "hi", *flags], capsys), first_words)


@pytest.mark.parametrize(
    ("folder", "flags", "first_words"), FOLDER_MISTAKES, ids=[f"{m} {' '.join(f)[:30]}" for m, f, _ in FOLDER_MISTAKES]
)
def test_bad_folder_or_prompt_is_one_line(folder, flags, first_words, small_run, tmp_path, capsys):
    path = folder.format(**broken_folders(small_run, tmp_path))
    assert_one_error_line(*run_main([path, *flags], capsys), first_words)


def test_the_script_itself_prints_one_line_and_exits_2(tmp_path):
    result = subprocess.run(
        [sys.executable, str(ROOT / "generate.py"), str(tmp_path), "--max-new-tokens", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert result.stderr == "error: --max-new-tokens must be at least 1 (got 0); pass e.g. --max-new-tokens 100\n"


def test_a_prompt_that_fits_exactly_generates(small):
    prompt = " ".join(["word"] * (CONTEXT - 4))
    room = CONTEXT - len(small.tokenizer(prompt)["input_ids"])
    assert complete(small, prompt, max_new_tokens=room, seed=1)
    with pytest.raises(generate.GenerationError, match=f"shorten the prompt to at most {CONTEXT - room - 1} tokens"):
        complete(small, prompt, max_new_tokens=room + 1, seed=1)


def test_text_past_the_trained_blocks_is_noted_in_one_line(small_run, tmp_path, capsys):
    """The context allows up to max_position_embeddings; past the blocks it was trained on, one line says so."""
    final = tmp_path / "final"
    shutil.copytree(small_run / "final", final)
    (final / "recipe_config.yaml").write_text("name: Tiny-Test\ndata:\n  block_size: 16\n")
    loaded = generate.load_model(str(final), "cpu")
    prompt_tokens = len(loaded.tokenizer("ROMEO:")["input_ids"])
    assert loaded.block_size == 16 and prompt_tokens < 12
    for new_tokens in (16 - prompt_tokens, 20):
        assert (
            generate.main([str(final), "--prompt", "ROMEO:", "--max-new-tokens", str(new_tokens), "--seed", "1"]) == 0
        )
        printed = capsys.readouterr()
        assert printed.out.startswith("ROMEO:")
        expected = (
            []
            if new_tokens + prompt_tokens <= 16
            else [
                f"note: the prompt and max new tokens make {prompt_tokens + 20} tokens, past the 16-token blocks this "
                "model was trained on; the text after that is usually worse"
            ]
        )
        assert printed.err.splitlines() == expected
    assert "make 17 tokens" in generate.past_training_note(
        loaded, "", SamplingSettings(max_new_tokens=16)
    )  # + separator


# --- the newest run ------------------------------------------------------------------------------


def fake_model(folder: Path, saved: float, state: bool = False, weights: bool = True) -> Path:
    folder.mkdir(parents=True)
    (folder / "config.json").write_text("{}")
    if weights:
        (folder / "model.safetensors").write_bytes(b"")
        os.utime(folder / "model.safetensors", (saved, saved))
    if state:
        (folder / "trainer_state.json").write_text(json.dumps({"global_step": 4}))
        run_folder.write_manifest(folder)  # complete: its checksums are written last
        os.utime(folder / "trainer_state.json", (saved, saved))
    os.utime(folder, (saved, saved))
    return folder


def test_newest_final_or_complete_checkpoint_is_chosen_by_save_time(tmp_path):
    runs = tmp_path / "runs"
    old_final = fake_model(runs / "a" / "final", saved=100)
    checkpoint = fake_model(runs / "b" / "checkpoint-4", saved=200, state=True)
    fake_model(runs / "b" / "checkpoint-6", saved=400)  # no trainer_state.json: still being written
    fake_model(runs / "c" / "final", saved=500, weights=False)  # an interrupted save
    assert run_folder.newest_model(runs) == checkpoint
    os.utime(old_final / "model.safetensors", (300, 300))
    assert run_folder.newest_model(runs) == old_final


def test_no_run_names_the_paths_it_looked_in(tmp_path):
    with pytest.raises(RecipeError, match=r"none found in .*runs/\*/final or .*runs/\*/checkpoint-N"):
        run_folder.newest_model(tmp_path / "runs")


def test_no_model_argument_uses_the_newest_run_and_says_which(small_run, tmp_path, capsys, monkeypatch):
    shutil.copytree(small_run, tmp_path / "runs" / "older")
    shutil.copytree(small_run, tmp_path / "runs" / "newer")
    os.utime(tmp_path / "runs" / "older" / "final" / "model.safetensors", (time.time() - 60,) * 2)
    monkeypatch.chdir(tmp_path)
    code, out, err = run_main(["--prompt", "ROMEO:", "--max-new-tokens", "3"], capsys)
    assert code == 0, err
    assert err == f"using the newest model under runs/: {Path('runs', 'newer', 'final')}\n"
    assert out.startswith("ROMEO:") and len(out) > len("ROMEO:\n")


def test_no_model_argument_and_no_run_is_one_line(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert_one_error_line(*run_main(["--prompt", "hi"], capsys), "no model given and none found in runs/*/final")


# --- name and step -------------------------------------------------------------------------------


def test_loaded_model_is_named_by_its_config_with_the_run_step(small):
    assert (small.name, small.step, small.title) == ("Tiny-Test", 7, "Tiny-Test (step 7)")


@pytest.mark.parametrize(
    ("files", "name"),
    [
        ({"final/recipe_config.yaml": "name: SmolLM2-135M\n", "final/README.md": "# other\n"}, "SmolLM2-135M"),
        ({"recipe_config.yaml": "name: SmolLM2-360M\n"}, "SmolLM2-360M"),  # the run folder's, above final/
        ({"final/README.md": "---\nmodel_name: Card-Name\nlicense: mit\n---\n\n# Heading\n"}, "Card-Name"),
        ({"final/README.md": "---\nlicense: mit\n---\n\nText.\n\n# my-smollm2\n"}, "my-smollm2"),
        ({"final/config.json": '{"_name_or_path": "me/base-model"}'}, "me/base-model"),
        ({"final/config.json": "{}"}, "myrun"),  # nothing recorded: the run folder's name, not "final"
    ],
)
def test_name_comes_from_config_then_card_then_folder(files, name, tmp_path):
    for path, text in files.items():
        (tmp_path / "myrun" / path).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / "myrun" / path).write_text(text)
    (tmp_path / "myrun" / "final").mkdir(exist_ok=True)
    assert generate.describe_local(tmp_path / "myrun" / "final") == (name, None)


def test_a_hub_model_without_recipe_files_is_named_by_its_id(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    assert generate.describe_hub("me/my-smollm2", offline=True) == ("me/my-smollm2", None)


def test_step_is_the_checkpoints_own_else_the_runs(tmp_path):
    run = tmp_path / "run"
    (run / "checkpoint-20").mkdir(parents=True)
    (run / "trainer_state.json").write_text('{"global_step": 60}')
    (run / "checkpoint-20" / "trainer_state.json").write_text('{"global_step": 20}')
    assert generate.describe_local(run / "checkpoint-20") == ("run", 20)
    (run / "final").mkdir()
    assert generate.describe_local(run / "final") == ("run", 60)


# --- seeds and stopping --------------------------------------------------------------------------


def test_a_seed_repeats_and_no_seed_is_fresh_every_time(small):
    fixed = complete(small, max_new_tokens=6, temperature=1.0, seed=5)
    fresh_1 = complete(small, max_new_tokens=6, temperature=1.0, seed=None)
    assert complete(small, max_new_tokens=6, temperature=1.0, seed=5) == fixed
    fresh_2 = complete(small, max_new_tokens=6, temperature=1.0, seed=None)  # right after the same fixed seed
    assert fresh_1 != fresh_2


def test_sampling_settings_default_to_fresh_randomness():
    assert SamplingSettings().seed is None


def test_closing_the_stream_stops_the_generation(small):
    forward_calls = []

    def slow_forward(module, args):
        forward_calls.append(1)
        time.sleep(0.05)

    hook = small.model.register_forward_pre_hook(slow_forward)
    try:
        pieces = generate.stream_completion(small, "", SamplingSettings(max_new_tokens=CONTEXT - 1, seed=1))
        next(iter(pieces))
        pieces.close()  # what the app's Stop button and Ctrl-C do
    finally:
        hook.remove()
    assert len(forward_calls) < (CONTEXT - 1) // 2


# --- offline and bytes that are not text ------------------------------------------------------------


@pytest.mark.parametrize("script", ["generate.py", "app.py"])
def test_a_hub_id_offline_fails_in_seconds_in_one_line(script, tmp_path):
    """No HF_HUB_OFFLINE set, and no network: the Hub's host does not answer, and the model is not cached. The
    message is the one of the local-files-only load (no minute of retries), so no clock is read."""
    env = {k: v for k, v in os.environ.items() if k not in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE")}
    env |= {"HF_HOME": str(tmp_path / "hf"), "HF_ENDPOINT": "http://hub.invalid"}  # a name no resolver answers
    args = (
        ["someone/not-a-model", "--prompt", "hi"]
        if script == "generate.py"
        else ["someone/not-a-model", "--port", "7999"]
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / script), *args], capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path
    )
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.splitlines() == [
        "error: could not load 'someone/not-a-model': the Hub cannot be reached and it is not in the local cache; "
        "pass a local folder, or try again online"
    ]


def test_a_prompt_that_is_not_utf8_is_one_line(small_run, capsys, tmp_path):
    assert_one_error_line(
        *run_main([str(small_run / "final"), "--prompt", "caf\udce9"], capsys),
        "--prompt is not UTF-8 text (byte 0xe9 at character 4",
    )
    result = subprocess.run(
        [sys.executable, str(ROOT / "generate.py"), str(small_run / "final")],
        input=b"caf\xe9 au lait\n",
        capture_output=True,
        timeout=120,
    )
    assert result.returncode == 2 and result.stdout == b""
    assert result.stderr.decode().splitlines() == [
        "error: the prompt on stdin is not UTF-8 text (byte 0xe9 at character 4); pass UTF-8 text "
        "(e.g. iconv -f latin1 -t utf-8)"
    ]
