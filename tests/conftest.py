"""Shared test settings: tiny overrides of the real YAML, with the tokenizer and corpus the repo ships."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import TrainerCallback

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER = str(ROOT / "assets" / "cosmo2-tokenizer")
CORPUS = str(ROOT / "assets" / "tinyshakespeare.txt")

sys.path.insert(0, str(ROOT))
os.environ.setdefault("WANDB_MODE", "disabled")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):  # `pytest -n 2`: the workers share the cores, so each of them and each
    os.environ.setdefault("OMP_NUM_THREADS", "1")  # run it starts takes one thread, not two that fight over both
    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))

# The real YAML made small: 2 layers, hidden 64, short blocks, the real tokenizer.
TINY_MODEL = [
    "model.num_hidden_layers=2",
    "model.hidden_size=64",
    "model.intermediate_size=128",
    "model.num_attention_heads=4",
    "model.num_key_value_heads=2",
]


def tiny_overrides(output_dir: Path, cache_dir: Path, **training) -> list[str]:
    settings = {
        "learning_rate": "3.0e-3",
        "warmup_steps": 2,
        "max_steps": 12,
        "per_device_train_batch_size": 4,
        "per_device_eval_batch_size": 4,
        "gradient_accumulation_steps": 1,
        "save_steps": 6,
        "eval_steps": 6,
        "logging_steps": 1,
        "report_to": "none",
        "output_dir": str(output_dir),
        "disable_tqdm": True,
        **training,
    }
    return [
        *TINY_MODEL,
        f"tokenizer={TOKENIZER}",
        f"data.path={CORPUS}",
        "data.block_size=64",
        "data.max_validation_blocks=8",
        f"data.cache_dir={cache_dir}",
        "samples.every_n_steps=6",
        "samples.max_new_tokens=8",
        *(f"training.{k}={v}" for k, v in settings.items()),
    ]


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("blocks-cache")


@pytest.fixture(scope="session")
def tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(TOKENIZER)


def tiny_run_overrides(out: Path, cache_dir: Path) -> list[str]:
    return tiny_overrides(out, cache_dir, max_steps=4, save_steps=2, eval_steps=2) + ["samples.every_n_steps=2"]


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, cache_dir) -> Path:
    """A finished 4-step run of the tiny model: checkpoints, samples, trainer_state and final/."""
    import train

    out = tmp_path_factory.mktemp("tiny-run") / "run"
    assert train.main(tiny_run_overrides(out, cache_dir)) == 0
    return out


@pytest.fixture
def checkpointed_run(tiny_run, tmp_path, cache_dir) -> tuple[Path, list[str]]:
    """A copy of the session's tiny run (checkpoint-2, checkpoint-4, final/), free to be changed, and the
    overrides it was trained with."""
    out = tmp_path / "run"
    shutil.copytree(tiny_run, out)
    return out, tiny_run_overrides(out, cache_dir)


def read_until(proc: subprocess.Popen, marker: str = " | loss ") -> list[str]:
    """The lines a process prints up to the first one holding `marker`; by default its first loss line, the
    sign that training has started."""
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if marker in line:
            break
    return lines


TOKEN = "hf_stubtoken1234567890"


@pytest.fixture
def hub(monkeypatch, tmp_path):
    from hub_stub import HubStub

    stub = HubStub(token=TOKEN, refuse={"me/forbidden"})
    monkeypatch.setenv("HF_ENDPOINT", stub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants as constants
    import transformers.utils.hub

    monkeypatch.setattr(constants, "ENDPOINT", stub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(tmp_path / "no-token-file"))
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", stub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(transformers.utils.hub, "_hf_api", None)  # the Trainer's shared client keeps its endpoint
    yield stub
    stub.close()


class StopAt(TrainerCallback):
    """Ctrl-C during optimizer step `step`: the run saves checkpoint-`step` and stops."""

    def __init__(self, step):
        self.step = step

    def on_step_begin(self, args, state, control, **kwargs):
        if state.global_step + 1 == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def torchrun_command(nproc: int, *args) -> list[str]:
    """train.py on `nproc` processes of this machine, as `torchrun --standalone` starts them."""
    return [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(nproc),
        "--standalone",
        str(ROOT / "train.py"),
        "--no-prompt",
        *args,
    ]
