"""Generate text from a trained model: a `final/` folder, a `checkpoint-N` folder or a Hub id.

    python generate.py runs/smollm2-135M/final --prompt "ROMEO:"
    echo "ROMEO:" | python generate.py runs/smollm2-135M/final --max-new-tokens 50
    python generate.py HuggingFaceTB/SmolLM2-135M          # no prompt, a terminal: an interactive loop

Tokens are printed as they are generated. The loading and streaming code here is also what app.py serves.
"""

from __future__ import annotations

import argparse
import json
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import torch


class LoadError(Exception):
    """The model could not be loaded; the message says why, in one line."""


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    name: str
    step: int | None
    device: torch.device

    @property
    def title(self) -> str:
        return f"{self.name} (step {self.step:,})" if self.step is not None else self.name


@dataclass
class SamplingSettings:
    max_new_tokens: int = 100
    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 50
    seed: int | None = 42

    def generate_kwargs(self) -> dict:
        if self.temperature <= 0:
            return {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        return {
            "max_new_tokens": self.max_new_tokens,
            "do_sample": True,
            "temperature": self.temperature,
            "top_p": self.top_p,
            "top_k": self.top_k,
        }


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def training_step_of(folder: Path) -> int | None:
    """The optimizer step a saved folder was taken at: its own trainer_state.json, or the run's for final/."""
    for state_file in (folder / "trainer_state.json", folder.parent / "trainer_state.json"):
        try:
            return int(json.loads(state_file.read_text())["global_step"])
        except (OSError, ValueError, KeyError):
            continue
    return None


def load_model(source: str, device: str = "auto", dtype: torch.dtype | None = None) -> LoadedModel:
    """Load model and tokenizer from a local folder or a Hub id, in eval mode on the chosen device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(source).expanduser()
    is_local = folder.exists()
    if not is_local and (source.startswith((".", "/", "~")) or source.count("/") != 1):
        raise LoadError(f"no model at '{source}': pass a final/ or checkpoint-N folder, or a Hub id (user/name)")
    target = torch.device(pick_device(device))
    if dtype is None:
        dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    try:
        tokenizer = AutoTokenizer.from_pretrained(str(folder) if is_local else source)
        model = AutoModelForCausalLM.from_pretrained(str(folder) if is_local else source, dtype=dtype)
    except Exception as e:
        # generate.py runs alone on a Space, without config.py: hence no shared helper here
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise LoadError(f"could not load a model from '{source}': {first_line}") from None
    model.to(target).eval()
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    name = f"{folder.parent.name}/{folder.name}" if is_local else source
    step = training_step_of(folder) if is_local else None
    return LoadedModel(model, tokenizer, name, step, target)


def stream_completion(loaded: LoadedModel, prompt: str, settings: SamplingSettings) -> Iterator[str]:
    """Yield the completion of `prompt` piece by piece as the model generates it."""
    from transformers import TextIteratorStreamer

    tokenizer, model = loaded.tokenizer, loaded.model
    inputs = tokenizer(prompt, return_tensors="pt").to(loaded.device)
    if inputs["input_ids"].shape[1] == 0:  # an empty prompt starts from the document separator
        inputs = {"input_ids": torch.tensor([[tokenizer.eos_token_id]], device=loaded.device)}
    streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    errors: list[BaseException] = []

    def run():
        try:
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            with torch.no_grad():
                model.generate(**inputs, streamer=streamer, **settings.generate_kwargs())
        except BaseException as e:  # surface it in the caller's thread
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    yield from streamer
    thread.join()
    if errors:
        raise errors[0]


def print_completion(loaded: LoadedModel, prompt: str, settings: SamplingSettings) -> None:
    print(prompt, end="", flush=True)
    for piece in stream_completion(loaded, prompt, settings):
        print(piece, end="", flush=True)
    print(flush=True)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("model", help="a final/ or checkpoint-N folder, or a Hub model id")
    parser.add_argument("--prompt", default=None, help="text to continue (default: stdin, or a prompt loop)")
    defaults = SamplingSettings()
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=defaults.top_p)
    parser.add_argument("--top-k", type=int, default=defaults.top_k)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    settings = SamplingSettings(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.seed)
    try:
        loaded = load_model(args.model, args.device)
    except LoadError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.prompt is not None:
        print_completion(loaded, args.prompt, settings)
    elif not sys.stdin.isatty():
        print_completion(loaded, sys.stdin.read().rstrip("\n"), settings)
    else:
        print(f"{loaded.title} on {loaded.device}. Type a prompt, Enter to generate, Ctrl-D to quit.")
        while True:
            try:
                prompt = input(">>> ")
            except (EOFError, KeyboardInterrupt):
                print()
                break
            print_completion(loaded, prompt, settings)
    return 0


if __name__ == "__main__":
    sys.exit(main())
