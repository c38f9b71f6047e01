"""Generate text from a trained model: a `final/` folder, a `checkpoint-N` folder or a Hub id.

    python generate.py --prompt "ROMEO:"                         # the newest run under runs/
    python generate.py runs/smollm2-135M/final --prompt "ROMEO:" --seed 42
    echo "ROMEO:" | python generate.py runs/smollm2-135M/final --max-new-tokens 50
    python generate.py HuggingFaceTB/SmolLM2-135M                # no prompt, a terminal: an interactive loop

Tokens are printed as they are generated. Without --seed every run samples fresh text; a seed makes it repeatable.
A prompt that does not fit the model's context together with --max-new-tokens is refused (never cut silently).
The loading and streaming code here is also what app.py serves; this file needs nothing else from the repo,
so it runs on a Hugging Face Space next to app.py.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

RUNS_DIR = Path("runs")  # the parent of the YAML's training.output_dir
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
MAX_SEED = 2**32 - 1  # the range numpy and transformers.set_seed accept


class LoadError(Exception):
    """The model could not be found or loaded; the message says why and what to do, in one line."""


class GenerationError(Exception):
    """A request the model cannot serve (a prompt too long for its context); the message says how to fix it."""


class SettingError(ValueError):
    """A sampling setting out of range. The CLI names the flag, the app the slider."""

    def __init__(self, field: str, problem: str, example: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem, self.example = field, problem, example

    def for_flag(self) -> str:
        flag = "--" + self.field.replace("_", "-")
        return f"{flag} {self.problem}; pass e.g. {flag} {self.example}"

    def for_label(self, label: str) -> str:
        return f"{label} {self.problem}; use e.g. {self.example}"


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

    @property
    def context_length(self) -> int | None:
        return getattr(self.model.config, "max_position_embeddings", None)


@dataclass
class SamplingSettings:
    max_new_tokens: int = 100
    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 50
    seed: int | None = None  # None: fresh randomness each time; a number: the same text each time

    def check(self) -> None:
        """Raise SettingError for the first value out of range, before any model work."""
        if self.max_new_tokens < 1:
            raise SettingError("max_new_tokens", f"must be at least 1 (got {self.max_new_tokens})", "100")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise SettingError("temperature", f"must be 0 (greedy) or more (got {self.temperature})", "0.8")
        if not (0 < self.top_p <= 1):
            raise SettingError("top_p", f"must be more than 0 and at most 1 (got {self.top_p})", "0.9")
        if self.top_k < 0:
            raise SettingError("top_k", f"must be 0 (off) or more (got {self.top_k})", "50")
        if self.seed is not None and not (0 <= self.seed <= MAX_SEED):
            raise SettingError("seed", f"must be between 0 and {MAX_SEED:,} (got {self.seed})", "42")

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
    try:
        device = torch.device(name)
    except RuntimeError:
        raise LoadError(f"--device {name} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise LoadError(f"--device {name} asks for CUDA, but no CUDA GPU is available; use --device cpu or auto")
    return device


# --- finding and naming a model ------------------------------------------------------------------


def has_weights(folder: Path) -> bool:
    return any(any(folder.glob(pattern)) for pattern in WEIGHT_FILES)


def is_complete_model(folder: Path) -> bool:
    """A final/ with config and weights, or a checkpoint-N the Trainer finished writing (trainer_state.json last)."""
    if not ((folder / "config.json").is_file() and has_weights(folder)):
        return False
    return folder.name == "final" or (folder / "trainer_state.json").is_file()


def saved_at(folder: Path) -> float:
    """When a model folder was finished: final/ is renamed into place whole, a checkpoint ends with its state."""
    state = folder / "trainer_state.json"
    return (state if state.is_file() else folder).stat().st_mtime


def find_newest_model(runs_dir: Path = RUNS_DIR) -> Path:
    """The most recently saved final/ or complete checkpoint-N of any run under runs_dir."""
    candidates = [*runs_dir.glob("*/final"), *runs_dir.glob("*/checkpoint-*")]
    complete = [folder for folder in candidates if folder.is_dir() and is_complete_model(folder)]
    if not complete:
        raise LoadError(
            f"no model given and none found in {runs_dir}/*/final or {runs_dir}/*/checkpoint-N "
            f"(under {Path.cwd()}); pass a model folder or a Hub id, or train one first with train.py"
        )
    return max(complete, key=saved_at)


def check_model_folder(folder: Path) -> None:
    """Say in one line what a local folder lacks, before transformers fails on it with a longer message."""
    if not folder.is_dir():
        raise LoadError(f"no model in {folder} (a file, not a folder); pass a final/ or checkpoint-N folder")
    if not (folder / "config.json").is_file():
        raise LoadError(f"no model in {folder} (no config.json); pass a final/ or checkpoint-N folder")
    if not has_weights(folder):
        raise LoadError(f"no weights in {folder} (no *.safetensors); pass a final/ or a complete checkpoint-N folder")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise LoadError(f"no tokenizer in {folder} (no tokenizer.json); copy it there from the run's final/")


def read_json(path: Path | None) -> dict:
    try:
        return json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}


def read_yaml(path: Path | None) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) if path else {}
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def name_in_card(card: Path | None) -> str | None:
    """A model card's `model_name` (its YAML header), else its first `# ` heading."""
    try:
        text = card.read_text() if card else ""
    except OSError:
        return None
    if text.startswith("---"):
        header, _, text = text[3:].partition("\n---")
        try:
            meta = yaml.safe_load(header)
        except yaml.YAMLError:
            meta = None
        if isinstance(meta, dict) and meta.get("model_name"):
            return str(meta["model_name"])
    heading = next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), None)
    return heading or None


def describe_model(find: Callable[[str, bool], Path | None], fallback: str) -> tuple[str, int | None]:
    """The model's name and training step from its files; find(name, run_too) gives a file of the folder or
    (run_too) of the run folder above it, or None."""
    name = (
        read_yaml(find("recipe_config.yaml", True)).get("name")
        or name_in_card(find("README.md", False))
        or read_json(find("config.json", False)).get("_name_or_path")
        or fallback
    )
    step = read_json(find("trainer_state.json", True)).get("global_step")
    return str(name), int(step) if isinstance(step, (int, float)) else None


def local_files(folder: Path) -> Callable[[str, bool], Path | None]:
    def find(name: str, run_too: bool) -> Path | None:
        for where in (folder, folder.parent) if run_too else (folder,):
            if (where / name).is_file():
                return where / name
        return None

    return find


def describe_local(folder: Path) -> tuple[str, int | None]:
    return describe_model(local_files(folder), folder_fallback_name(folder))


def hub_files(repo_id: str) -> Callable[[str, bool], Path | None]:
    from huggingface_hub import hf_hub_download

    def find(name: str, run_too: bool) -> Path | None:
        try:
            return Path(hf_hub_download(repo_id, name))
        except Exception:  # not in the repo, or offline: the name falls back
            return None

    return find


def folder_fallback_name(folder: Path) -> str:
    """runs/shakespeare/final → "shakespeare": final/ and checkpoint-N say nothing about the model."""
    folder = folder.resolve()
    if folder.name == "final" or folder.name.startswith("checkpoint-"):
        return folder.parent.name
    return folder.name


# --- loading -------------------------------------------------------------------------------------


def looks_local(source: str) -> bool:
    """A Hub id is user/name; anything else, or a path whose first folder exists here, is meant as a folder."""
    parts = Path(source).parts
    return source.startswith((".", "/", "~")) or len(parts) != 2 or Path(parts[0]).is_dir()


def load_model(source: str, device: str = "auto", dtype: torch.dtype | None = None) -> LoadedModel:
    """Load model and tokenizer from a local folder or a Hub id, in eval mode on the chosen device."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    folder = Path(source).expanduser()
    is_local = folder.exists()
    if not is_local and looks_local(source):
        raise LoadError(f"no model at '{source}' (no such folder); pass a final/ or checkpoint-N folder, or a Hub id")
    if is_local:
        check_model_folder(folder)
    target = pick_device(device)
    if dtype is None:
        dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    where = str(folder) if is_local else source
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(where)
        model.to(target).eval()
    except Exception as e:
        # generate.py runs alone on a Space, without config.py: hence no shared helper here
        first_line = (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(":. ")
        hint = "check the folder's files" if is_local else "check the id, or pass a local folder"
        raise LoadError(f"could not load a model from '{source}': {first_line}; {hint}") from None
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    if is_local:
        name, step = describe_local(folder)
    else:
        name, step = describe_model(hub_files(source), source)
    return LoadedModel(model, tokenizer, name, step, target)


# --- generating ----------------------------------------------------------------------------------


def prompt_ids(loaded: LoadedModel, prompt: str, settings: SamplingSettings) -> torch.Tensor:
    """The prompt's token ids, checked to fit the model's context together with the new tokens."""
    tokenizer = loaded.tokenizer
    ids = tokenizer(prompt, return_tensors="pt", verbose=False)["input_ids"]  # the check below says it in one line
    if ids.shape[1] == 0:  # an empty prompt starts from the document separator
        ids = torch.tensor([[tokenizer.eos_token_id]])
    limit = loaded.context_length
    if limit and ids.shape[1] + settings.max_new_tokens > limit:
        raise GenerationError(
            f"the prompt ({ids.shape[1]:,} tokens) and max new tokens ({settings.max_new_tokens:,}) make "
            f"{ids.shape[1] + settings.max_new_tokens:,}, more than the model's context of {limit:,} tokens; "
            f"shorten the prompt to at most {max(limit - settings.max_new_tokens, 0):,} tokens or ask for fewer new tokens"
        )
    return ids.to(loaded.device)


def stream_completion(loaded: LoadedModel, prompt: str, settings: SamplingSettings) -> Iterator[str]:
    """Check the settings and the prompt now (SettingError, GenerationError), then return an iterator of
    the completion's pieces as the model generates them. Closing the iterator stops the generation."""
    settings.check()
    input_ids = prompt_ids(loaded, prompt, settings)
    return _generate_in_thread(loaded, input_ids, settings)


def _generate_in_thread(loaded: LoadedModel, input_ids: torch.Tensor, settings: SamplingSettings) -> Iterator[str]:
    from transformers import StoppingCriteria, StoppingCriteriaList, TextIteratorStreamer

    stop = threading.Event()

    class StopWhenAsked(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            return torch.full((input_ids.shape[0],), stop.is_set(), dtype=torch.bool, device=input_ids.device)

    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    errors: list[BaseException] = []

    def run():
        try:
            if settings.seed is None:
                torch.seed()  # fresh, even after an earlier request fixed the seed
            else:
                torch.manual_seed(settings.seed)
            with torch.no_grad():
                loaded.model.generate(
                    input_ids=input_ids,
                    attention_mask=torch.ones_like(input_ids),
                    streamer=streamer,
                    stopping_criteria=StoppingCriteriaList([StopWhenAsked()]),
                    **settings.generate_kwargs(),
                )
        except BaseException as e:  # surface it in the caller's thread
            errors.append(e)
            streamer.end()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield from streamer
    finally:  # also when the reader stops early (the app's Stop button, Ctrl-C): end the generation too
        stop.set()
        thread.join()
    if errors:
        raise errors[0]


def print_completion(loaded: LoadedModel, prompt: str, settings: SamplingSettings) -> None:
    pieces = stream_completion(loaded, prompt, settings)  # raises before anything is printed
    print(prompt, end="", flush=True)
    try:
        for piece in pieces:
            print(piece, end="", flush=True)
    except KeyboardInterrupt:
        pieces.close()
        print(" [stopped]", end="")
    print(flush=True)


# --- command line --------------------------------------------------------------------------------


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse's errors as one `error:` line (no usage block), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see python {self.prog} --help\n")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(
        prog="generate.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "model",
        nargs="?",
        help=f"a final/ or checkpoint-N folder, or a Hub id (default: the newest run in {RUNS_DIR}/)",
    )
    parser.add_argument("--prompt", default=None, help="text to continue (default: stdin, or a prompt loop)")
    defaults = SamplingSettings()
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help="in (0, 1]; 1 = off")
    parser.add_argument("--top-k", type=int, default=defaults.top_k, help="0 = off")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="repeatable text (default: fresh each run)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    return parser.parse_args(argv)


def resolve_source(model: str | None) -> str:
    """The model argument, or the newest run under runs/, said in one line on stderr."""
    if model:
        return model
    newest = find_newest_model()
    print(f"using the newest model under {RUNS_DIR}/: {newest}", file=sys.stderr)
    return str(newest)


def main(argv: list[str] | None = None) -> int:
    from transformers.utils import logging as transformers_logging

    args = parse_args(argv)
    transformers_logging.disable_progress_bar()  # stdout and stderr hold the text and one-line messages only
    settings = SamplingSettings(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.seed)
    try:
        settings.check()
        pick_device(args.device)
        loaded = load_model(resolve_source(args.model), args.device)
        if args.prompt is not None:
            print_completion(loaded, args.prompt, settings)
        elif not sys.stdin.isatty():
            print_completion(loaded, sys.stdin.read().rstrip("\n"), settings)
        else:
            prompt_loop(loaded, settings)
    except SettingError as e:
        print(f"error: {e.for_flag()}", file=sys.stderr)
        return 2
    except (LoadError, GenerationError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


def prompt_loop(loaded: LoadedModel, settings: SamplingSettings) -> None:
    print(f"{loaded.title} on {loaded.device}. Type a prompt, Enter to generate, Ctrl-D to quit.")
    while True:
        try:
            prompt = input(">>> ")
        except (EOFError, KeyboardInterrupt):
            print()
            return
        try:
            print_completion(loaded, prompt, settings)
        except GenerationError as e:  # a prompt too long: say so and ask again
            print(f"error: {e}", file=sys.stderr)


if __name__ == "__main__":
    sys.exit(main())
