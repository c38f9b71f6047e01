"""push.py builds a checked repo folder, uploads it to the Hub API (a local stand-in here), and fails clearly."""

import os
import shutil
import subprocess
import sys

import pytest
import torch
from conftest import ROOT
from hub_stub import HubStub
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoTokenizer

import push

pytestmark = pytest.mark.slow
TOKEN = "hf_stubtoken1234567890"


@pytest.fixture
def hub(monkeypatch):
    stub = HubStub(token=TOKEN, refuse={"me/forbidden"})
    monkeypatch.setenv("HF_ENDPOINT", stub.url)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    monkeypatch.setenv("HF_HUB_DISABLE_XET", "1")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "ENDPOINT", stub.url)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_DISABLE_XET", True)
    yield stub
    stub.close()


def test_dry_run_builds_a_bf16_folder_that_round_trips(tiny_run, tmp_path, capsys):
    out = tmp_path / "pushed"
    code = push.main(["--checkpoint", str(tiny_run / "final"), "--repo-id", "me/tiny-smollm2", "--dry-run",
                      "--out", str(out)])  # fmt: skip
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


def test_model_card_has_metadata_results_curve_and_samples(tiny_run, tmp_path):
    out = tmp_path / "pushed"
    assert push.main(["--checkpoint", str(tiny_run / "final"), "--repo-id", "me/tiny", "--dry-run",
                      "--out", str(out)]) == 0  # fmt: skip
    card = (out / "README.md").read_text()
    header = card.split("---")[1]
    for line in ["license: apache-2.0", "library_name: transformers", "pipeline_tag: text-generation", "- smollm2"]:
        assert line in header
    assert "| parameters | 3,219,776 |" in card
    assert "| validation loss |" in card and "| validation perplexity |" in card and "| train loss" in card
    assert "| training throughput (tokens/s, last logged) |" in card
    assert "![loss curve](loss_curve.png)" in card and (out / "loss_curve.png").read_bytes()[:4] == b"\x89PNG"
    assert "## Samples at step 4" in card and "ROMEO:" in card
    assert "| `learning_rate` | `0.003` |" in card
    assert 'from_pretrained("me/tiny")' in card


def test_checkpoint_folder_can_be_pushed(tiny_run, tmp_path):
    out = tmp_path / "pushed"
    assert push.main(["--checkpoint", str(tiny_run / "checkpoint-2"), "--repo-id", "me/tiny", "--dry-run",
                      "--out", str(out)]) == 0  # fmt: skip
    assert "## Samples at step 2" in (out / "README.md").read_text()


def test_upload_sends_the_folder_to_the_hub_api(tiny_run, hub, tmp_path, capsys):
    code = push.main(["--checkpoint", str(tiny_run / "final"), "--repo-id", "me/tiny-smollm2", "--private",
                      "--revision", "v1", "--space", "me/tiny-demo"])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    repo = hub.repos["model:me/tiny-smollm2"]
    assert repo["private"] is True and repo["branches"] == ["v1"]
    assert set(repo["files"]) == {
        "README.md", "config.json", "generation_config.json", "loss_curve.png", "model.safetensors",
        "tokenizer.json", "tokenizer_config.json",
    }  # fmt: skip
    local = tmp_path / "received"
    local.mkdir()
    for name, content in repo["files"].items():
        (local / name).write_bytes(content)
    assert AutoModelForCausalLM.from_pretrained(local).config.num_hidden_layers == 2
    space = hub.repos["space:me/tiny-demo"]
    assert set(space["files"]) == {"app.py", "generate.py", "requirements.txt", "README.md"}
    assert b"sdk: gradio" in space["files"]["README.md"]
    assert hub.variables["me/tiny-demo"] == {"MODEL_ID": "me/tiny-smollm2"}
    printed = capsys.readouterr()
    assert TOKEN not in printed.out + printed.err
    assert TOKEN.encode() not in repo["files"]["README.md"]


def test_hub_refusal_is_one_line(tiny_run, hub, capsys):
    assert push.main(["--checkpoint", str(tiny_run / "final"), "--repo-id", "me/forbidden"]) == 2
    err = capsys.readouterr().err
    last = err.strip().splitlines()[-1]
    assert last.startswith("error: the Hub refused the upload:") and "403" in last
    assert TOKEN not in err and "Traceback" not in err
    assert "model:me/forbidden" not in hub.repos


def test_no_token_is_one_line_and_non_zero(tiny_run, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "HF_TOKEN"}
    env["HF_HOME"] = str(tmp_path / "empty-hf-home")
    result = subprocess.run(
        [sys.executable, str(ROOT / "push.py"), "--checkpoint", str(tiny_run / "final"), "--repo-id", "me/x"],
        capture_output=True, text=True, env=env, timeout=300,
    )  # fmt: skip
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: no Hugging Face token: run `hf auth login` or set HF_TOKEN (or use --dry-run)"
    ]


def test_missing_checkpoint_and_failed_reload_check(tiny_run, tmp_path, capsys):
    assert push.main(["--checkpoint", str(tmp_path / "nope"), "--repo-id", "me/x", "--dry-run"]) == 2
    assert "no such checkpoint" in capsys.readouterr().err
    broken = tmp_path / "broken"
    shutil.copytree(tiny_run / "final", broken)
    with pytest.raises(push.RecipeError, match="fails the reload check"):
        (broken / "model.safetensors").write_bytes(b"not a safetensors file")
        push.check_folder(broken)


def test_generate_py_streams_a_continuation(tiny_run):
    result = subprocess.run(
        [sys.executable, str(ROOT / "generate.py"), str(tiny_run / "final"), "--max-new-tokens", "20"],
        input="ROMEO:\n", capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("ROMEO:") and len(result.stdout.strip()) > len("ROMEO:")
    missing = subprocess.run([sys.executable, str(ROOT / "generate.py"), "./nope"], capture_output=True, text=True)
    assert missing.returncode == 2 and missing.stderr.strip().startswith("error: no model at './nope'")
