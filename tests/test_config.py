"""The YAML is the single source of truth: every key is checked, overrides keep the field's type."""

import subprocess
import sys

from recipe.cli import RecipeError
from recipe.config import DEFAULT_CONFIG, load_config

import pytest
from conftest import ROOT, TOKENIZER


def test_default_config_is_smollm2_135m():
    cfg = load_config()
    assert cfg.model["hidden_size"] == 576
    assert cfg.model["num_hidden_layers"] == 30
    assert cfg.model["num_attention_heads"] == 9
    assert cfg.model["num_key_value_heads"] == 3
    assert cfg.model["intermediate_size"] == 1536
    assert cfg.model["vocab_size"] == 49152
    assert cfg.model["tie_word_embeddings"] is True
    assert cfg.model["rope_theta"] == 100000.0
    assert cfg.tokenizer == "assets/cosmo2-tokenizer"  # the shipped copy of HuggingFaceTB/cosmo2-tokenizer
    assert cfg.data.path == "assets/tinyshakespeare.txt"
    assert cfg.data.block_size == 2048
    t = cfg.training
    assert (t["max_steps"], t["per_device_train_batch_size"], t["gradient_accumulation_steps"]) == (5000, 8, 4)
    assert t["learning_rate"] == 3.0e-4 and isinstance(t["learning_rate"], float)
    assert (t["adam_beta2"], t["adam_epsilon"], t["weight_decay"], t["max_grad_norm"]) == (0.95, 1e-8, 0.01, 1.0)
    assert t["optim"] == "adamw_torch_fused" and t["lr_scheduler_type"] == "warmup_stable_decay"
    assert t["save_steps"] == 500 and t["eval_steps"] == 500 and t["bf16"] is True
    assert cfg.attn_implementation == "flash_attention_2"
    assert cfg.samples.every_n_steps == 500
    assert (cfg.resume.extra_steps, cfg.resume.lr_factor) == (50, 0.1)
    assert cfg.init_from is None


def test_overrides_keep_the_type_of_the_field():
    cfg = load_config(
        None,
        [
            "training.learning_rate=1e-3",  # PyYAML reads this as a string
            "training.max_steps=20",
            "training.eval_strategy=no",  # PyYAML reads this as False
            "data.block_size=128",
            "samples.prompts=[a, b]",
            "training.lr_scheduler_kwargs.warmup_stable_decay.num_decay_steps=0.1",
            "init_from=some/model",
            f"tokenizer={TOKENIZER}",
        ],
    )
    assert cfg.training["learning_rate"] == 1e-3
    assert cfg.training["max_steps"] == 20
    assert cfg.training["eval_strategy"] == "no"
    assert cfg.data.block_size == 128
    assert cfg.samples.prompts == ["a", "b"]
    wsd = cfg.training["lr_scheduler_kwargs"]["warmup_stable_decay"]
    assert wsd["num_decay_steps"] == 0.1 and wsd["decay_type"] == "linear"  # the rest of the dict stays
    assert cfg.init_from == "some/model"
    assert cfg.tokenizer == TOKENIZER


@pytest.mark.parametrize(
    "override, message",
    [
        ("training.max_step=10", "unknown config key 'training.max_step': did you mean 'training.max_steps'?"),
        ("trainng.max_steps=10", "did you mean 'training'?"),
        ("model.hiden_size=64", "did you mean 'model.hidden_size'?"),
        ("data.blocksize=64", "did you mean 'data.block_size'?"),
        ("training.max_steps=ten", "training.max_steps: expected int"),
        ("data.block_size=1.5", "data.block_size: expected int"),
        ("data.streaming=maybe", "data.streaming: expected bool"),
        ("attn_implementation=flash", "attn_implementation: 'flash' is not one of"),
        ("data.sample_by=word", "data.sample_by: 'word' is not one of document, paragraph, line"),
        ("training.torch_compile=sometimes", "training.torch_compile: 'sometimes' is not one of true, false, auto"),
        ("max_steps", "write it as section.key=value"),
    ],
)
def test_config_mistakes_name_the_key(override, message):
    with pytest.raises(RecipeError, match=None) as error:
        load_config(None, [override])
    assert message in str(error.value)


def test_yaml_typo_is_caught(tmp_path):
    text = DEFAULT_CONFIG.read_text().replace("  max_steps: 5000", "  max_stepz: 5000")
    path = tmp_path / "typo.yaml"
    path.write_text(text)
    with pytest.raises(RecipeError, match="training.max_stepz': did you mean 'training.max_steps'"):
        load_config(path)


def test_missing_config_file():
    with pytest.raises(RecipeError, match="config file not found"):
        load_config("no-such.yaml")


def run_train(*args, cwd):
    return subprocess.run(
        [sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, capture_output=True, text=True, timeout=300
    )


@pytest.mark.slow  # a real process: the one-line error without a traceback; every other mistake, in-process:
# tests/test_cli_errors.py (the same main(), its exit code and stderr)
def test_cli_misspelled_key_exits_with_one_line_before_any_work(tmp_path):
    out = tmp_path / "run"
    result = run_train("training.max_step=10", f"training.output_dir={out}", cwd=tmp_path)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1] == (
        "error: unknown config key 'training.max_step': did you mean 'training.max_steps'?"
    )
    assert "Traceback" not in result.stderr
    assert not out.exists()
