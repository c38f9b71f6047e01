"""Export to llama.cpp: llama.cpp's convert_hf_to_gguf.py turns final/ into a GGUF file that reads back the same model.

The converter is not on PyPI as a package; .ci/run unpacks it from the llama-cpp-python source distribution
and sets LLAMA_CPP_CONVERTER. Outside CI the tests skip without it; in CI (CI=true) they fail instead, so
they can never silently not run. The file is read back with transformers' GGUF loader (the `gguf` package).
"""

from __future__ import annotations

import functools
import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

PROMPT = "ROMEO: But soft, what light"


def missing(reason: str):
    """Skip on a developer's machine; fail in CI, where .ci/run prepares everything."""
    if os.environ.get("CI") == "true":
        pytest.fail(f"{reason} (CI must run the GGUF export tests; see .ci/run)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def converter() -> Path:
    path = os.environ.get("LLAMA_CPP_CONVERTER")
    if not path:
        missing("set LLAMA_CPP_CONVERTER to llama.cpp's convert_hf_to_gguf.py to test the GGUF export")
    if not Path(path).is_file():
        pytest.fail(f"LLAMA_CPP_CONVERTER={path} is not a file")
    for package in ("gguf", "sentencepiece"):
        if importlib.util.find_spec(package) is None:
            missing(f"the `{package}` package is not installed (pip install -r requirements-dev.txt)")
    return Path(path)


@pytest.fixture(scope="module")
def final(converter, request) -> Path:
    """The tiny run's final/, trained only once the converter is known to exist (so a skip is instant)."""
    return request.getfixturevalue("tiny_run") / "final"


@pytest.fixture(scope="module")
def convert(converter, final, tmp_path_factory):
    """convert(outtype) -> the GGUF file of final/, made by the README's command."""
    out_dir = tmp_path_factory.mktemp("gguf")

    @functools.cache
    def run(outtype: str) -> Path:
        out = out_dir / f"model-{outtype}.gguf"
        cmd = [sys.executable, str(converter), str(final), "--outtype", outtype, "--outfile", str(out)]
        done = subprocess.run(cmd, capture_output=True, text=True)
        assert done.returncode == 0 and out.is_file(), done.stderr[-3000:]
        return out

    return run


def load_original(final: Path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    return AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32).eval(), AutoTokenizer.from_pretrained(final)


def load_gguf_model(path: Path):
    from transformers import AutoModelForCausalLM

    return AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32).eval()


def load_gguf_tokenizer(path: Path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)


def greedy_text(model, tokenizer, prompt: str = PROMPT) -> str:
    ids = tokenizer(prompt, return_tensors="pt").input_ids
    out = model.generate(ids, max_new_tokens=16, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    return tokenizer.decode(out[0])


def prompt_logits(model, tokenizer) -> torch.Tensor:
    with torch.no_grad():
        return model(tokenizer(PROMPT, return_tensors="pt").input_ids).logits


@pytest.mark.slow
def test_gguf_names_the_smollm_pre_tokenizer(convert):
    """llama.cpp splits text with the pre-tokenizer named in the file; cosmo2's is registered as "smollm"."""
    from gguf import GGUFReader

    fields = GGUFReader(convert("f32")).fields
    assert fields["general.architecture"].contents() == "llama"
    assert fields["tokenizer.ggml.model"].contents() == "gpt2"
    assert fields["tokenizer.ggml.pre"].contents() == "smollm"


@pytest.mark.slow
def test_f32_gguf_gives_the_same_logits_and_greedy_text(convert, final):
    original, tokenizer = load_original(final)
    path = convert("f32")
    model, gguf_tokenizer = load_gguf_model(path), load_gguf_tokenizer(path)

    tricky = "KING RICHARD III:\nNow is the winter   of our discontent...  naïve 3.14 <|endoftext|>"
    assert gguf_tokenizer(tricky).input_ids == tokenizer(tricky).input_ids
    torch.testing.assert_close(prompt_logits(model, gguf_tokenizer), prompt_logits(original, tokenizer))
    assert greedy_text(model, gguf_tokenizer) == greedy_text(original, tokenizer)


@pytest.mark.slow
def test_q8_0_gguf_stays_close_to_the_original(convert, final):
    """The README's quantization: 8-bit blocks move each logit by a few hundredths at most."""
    original, tokenizer = load_original(final)
    model = load_gguf_model(convert("q8_0"))

    drift = (prompt_logits(model, tokenizer) - prompt_logits(original, tokenizer)).abs().max().item()
    assert 0 < drift < 0.1, f"q8_0 logits moved by {drift:.4f}"
