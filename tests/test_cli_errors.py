"""Every mistake a user can make on the command line or in the YAML: one `error:` line naming the key and the
fix, exit code 2, no traceback, and nothing written: not the output folder, not a wandb folder."""

import socket
import threading
from pathlib import Path

import train
from recipe import cli

import pytest
from conftest import CORPUS, TINY_MODEL, TOKENIZER
from huggingface_hub import constants

# (extra arguments, the first words of the error). Each runs on the tiny model with the shipped files.
CASES = [
    (["training.max_step=10"], "unknown config key 'training.max_step': did you mean 'training.max_steps'?"),
    (["model.num_attention_heads=5"], "model: "),
    (["model.hidden_size=60"], "model: "),
    (["data.block_size=100000"], "data.block_size 100000 is longer than model.max_position_embeddings 8192"),
    (["training.gradient_accumulation_steps=0"], "training.gradient_accumulation_steps must be at least 1"),
    (["training.per_device_train_batch_size=0"], "training.per_device_train_batch_size must be at least 1"),
    (["training.per_device_eval_batch_size=-1"], "training.per_device_eval_batch_size must be at least 1"),
    (["training.max_steps=0"], "training.max_steps must be at least 1"),
    (["training.learning_rate=fast"], "training.learning_rate: expected float"),
    (
        [
            "training.lr_scheduler_type=cosine_with_min_lr",
            "training.lr_scheduler_kwargs.cosine_with_min_lr.min_lr_ratio=0.1",
        ],
        "training.lr_scheduler_kwargs do not fit the 'cosine_with_min_lr' schedule",
    ),
    (
        [
            "training.lr_scheduler_type=warmup_stable_decay",
            "training.lr_scheduler_kwargs.warmup_stable_decay.decay_kind=x",
        ],
        "training.lr_scheduler_kwargs do not fit the 'warmup_stable_decay' schedule",
    ),
    (["training.lr_scheduler_type=sideways"], "training arguments: "),
    (["training.lr_scheduler_type=reduce_lr_on_plateau"], "training.lr_scheduler_type 'reduce_lr_on_plateau' follows"),
    (["training.optim=adamw_imaginary"], "training arguments: "),
    (["attn_implementation=flash_attention_9"], "attn_implementation: 'flash_attention_9' is not one of"),
    (["data.sample_by=word"], "data.sample_by: 'word' is not one of document, paragraph, line"),
    (
        ["training.activation_checkpointing=maybe"],
        "training.activation_checkpointing: 'maybe' is not one of true, false, auto",
    ),
    (["data.validation_fraction=1.5"], "data.validation_fraction must be between 0 and 1"),
    (["samples.max_new_tokens=100000"], "samples.max_new_tokens must be at most 4,096"),
    (["samples.max_new_tokens=0"], "samples.max_new_tokens must be at least 1"),
    (["samples.top_p=0"], "samples.top_p must be more than 0 and at most 1"),
    (["samples.temperature=-1"], "samples.temperature must be 0 (greedy) or more"),
    (["samples.seed=-3"], "samples.seed must be between 0 and"),
    (["samples.every_n_steps=-5"], "samples.every_n_steps must be >= 0"),
    (["resume.extra_steps=0"], "resume.extra_steps must be at least 1"),
    (["resume.lr_factor=0"], "resume.lr_factor must be above 0"),
    (["model.vocab_size=1000"], "the tokenizer has 49,152 tokens but model.vocab_size is 1,000"),
    (["model.max_position_embeddings=64"], "samples: the longest prompt"),
    (["tokenizer=/nonexistent/tokenizer"], "could not load tokenizer '/nonexistent/tokenizer'"),
    (["data.path=/nonexistent/corpus.txt"], "data file not found: '/nonexistent/corpus.txt'"),
    (["--resume"], "--resume: no complete checkpoint in"),
    (["--resume", "/nonexistent/checkpoint-5"], "--resume: checkpoint folder not found"),
    (["--config", "/nonexistent.yaml"], "config file not found: /nonexistent.yaml"),
    (["training"], "cannot read override 'training': write it as section.key=value"),
    (["--bogus", "data.num_proc=1"], "unrecognized arguments: --bogus; see python train.py --help"),  # flags only
]


def base(out: Path) -> list[str]:
    return [
        *TINY_MODEL,
        f"tokenizer={TOKENIZER}",
        f"data.path={CORPUS}",
        "data.block_size=64",
        f"training.output_dir={out}",
        "training.report_to=wandb",  # a wandb folder would be made if anything got that far
    ]


@pytest.mark.parametrize("extra, message", CASES, ids=[" ".join(c[0])[:60] for c in CASES])
def test_mistake_is_one_line_and_writes_nothing(extra, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    code = train.main([*base(out), *extra])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert "Traceback" not in err[0]
    assert not out.exists() and not list(tmp_path.iterdir())


def test_data_file_problems_are_one_line(tmp_path, capsys):
    """Corpus mistakes found while reading it (after the lock is taken) leave no folder behind either."""
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    short = tmp_path / "short.txt"
    short.write_text("To be, or not to be")
    for corpus, message in ((empty, "data file is empty"), (short, "the corpus has 8 tokens, fewer than")):
        out = tmp_path / "run"
        code = train.main([*base(out), f"data.path={corpus}", f"data.cache_dir={tmp_path / 'cache'}"])
        printed = capsys.readouterr()
        err = printed.err
        errors = [line for line in err.splitlines() if line.startswith("error:")]  # below the progress bars
        assert code == 2 and errors == [err.strip().splitlines()[-1]] and errors[0].startswith(f"error: {message}")
        assert "Traceback" not in err and not out.exists() and "parameters" not in printed.out  # before the model


def test_yaml_mistakes(tmp_path, capsys):
    loop = tmp_path / "a.yaml"
    loop.write_text("extends: b.yaml\n")
    (tmp_path / "b.yaml").write_text("extends: a.yaml\n")
    partial = tmp_path / "partial.yaml"
    partial.write_text("name: mine\nmodel:\n  hidden_size: 64\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text("training:\n  max_steps: [1\n")
    for path, message in (
        (loop, "config file"),
        (partial, "the config has no 'tokenizer'"),
        (bad, f"config file {bad} is not valid YAML at line"),
    ):
        assert train.main(["--config", str(path)]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith(f"error: {message}"), err


def test_the_hub_counts_as_out_of_reach_only_when_a_lookup_says_so(monkeypatch):
    """A name lookup that fails means offline; one that does not answer in time (a loaded machine) means nothing,
    and must not refuse a run."""
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a: (_ for _ in ()).throw(socket.gaierror("no name")))
    assert cli.hub_is_reachable() is False
    answered = threading.Event()
    monkeypatch.setattr(socket, "getaddrinfo", lambda *a: answered.wait(5))
    assert cli.hub_is_reachable(timeout=0.1) is True
    answered.set()
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    assert cli.hub_is_reachable() is False
