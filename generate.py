"""Generate text from a trained model: a `final/` folder, a `checkpoint-N` folder or a Hub id.

    python generate.py --prompt "ROMEO:"                         # the newest run under runs/
    python generate.py runs/smollm2-135M/final --prompt "ROMEO:" --seed 42
    echo "ROMEO:" | python generate.py runs/smollm2-135M/final --max-new-tokens 50
    python generate.py HuggingFaceTB/SmolLM2-135M                # no prompt, a terminal: an interactive loop

Tokens are printed as they are generated. Without --seed every run samples fresh text; a seed makes it repeatable.
A prompt that does not fit the model's context together with --max-new-tokens is refused (never cut silently).
The loading and streaming code here is also what app.py serves; with recipe/cli.py, recipe/sampling.py and recipe/run_folder.py
beside it, this file runs on a Hugging Face Space next to app.py.
"""

from __future__ import annotations

import contextlib
import sys
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from recipe import cli
from recipe.cli import RecipeError, first_line, hub_is_reachable
from recipe.run_folder import (
    FINAL,
    RUNS_DIR,
    checkpoint_number,
    local_model,
    read_dict,
    recorded_name_and_step,
    trained_block_size,
)
from recipe.sampling import SamplingSettings, SettingError, StopWhen

import torch
import yaml
from huggingface_hub import hf_hub_download
from transformers import AutoModelForCausalLM, AutoTokenizer, StoppingCriteriaList, TextIteratorStreamer
from transformers.utils import logging as transformers_logging


class GenerationError(RecipeError):
    """A request the model cannot serve (a prompt too long for its context); the message says how to fix it."""


@dataclass
class LoadedModel:
    model: object
    tokenizer: object
    name: str
    step: int | None
    device: torch.device
    block_size: int | None = None  # the length of the blocks it was trained on, where its run config says

    @property
    def title(self) -> str:
        return f"{self.name} (step {self.step:,})" if self.step is not None else self.name


def pick_device(name: str = "auto") -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise RecipeError(f"--device {name} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RecipeError(f"--device {name} asks for CUDA, but no CUDA GPU is available; use --device cpu or auto")
    return device


# --- finding and naming a model ------------------------------------------------------------------


def name_in_card(card: Path | None) -> str | None:
    """A model card's `model_name` (its YAML header), else its first `# ` heading."""
    try:
        text = card.read_text() if card else ""
    except OSError:
        return None
    if text.startswith("---"):
        header, _, text = text[3:].partition("\n---")
        with contextlib.suppress(yaml.YAMLError):  # a header that is not YAML: the heading still names it
            meta = yaml.safe_load(header)
            if isinstance(meta, dict) and meta.get("model_name"):
                return str(meta["model_name"])
    return next((line[2:].strip() for line in text.splitlines() if line.startswith("# ")), None) or None


def describe_local(folder: Path) -> tuple[str, int | None]:
    """The model's name (its run's config, its card, its config.json, or the run folder's name) and its step."""
    name, step = recorded_name_and_step(folder)
    name = name or name_in_card(folder / "README.md") or (read_dict(folder / "config.json") or {}).get("_name_or_path")
    fallback = folder.parent.name if folder.name == FINAL or checkpoint_number(folder) is not None else folder.name
    return str(name or fallback), step


def describe_hub(repo_id: str, offline: bool) -> tuple[str, int | None]:
    try:
        card = Path(hf_hub_download(repo_id, "README.md", local_files_only=offline))
    except Exception:  # no card in the repo, or offline: the id names it
        card = None
    return name_in_card(card) or repo_id, None


# --- loading -------------------------------------------------------------------------------------


def load_model(source: str | None, device: str = "auto") -> LoadedModel:
    """Load model and tokenizer from a local folder, a Hub id or the newest run (None), in eval mode on the chosen
    device. Offline, a Hub id is looked up in the local cache only, and fails in seconds when it is not there."""
    folder = local_model(source)  # a run folder stands for its final/ (else its newest checkpoint)
    is_local = folder is not None
    source = source or str(folder)  # the messages name the newest run as it was chosen
    offline = not is_local and not hub_is_reachable()
    target = pick_device(device)
    dtype = torch.bfloat16 if target.type == "cuda" else torch.float32
    where = str(folder) if is_local else source
    try:
        model = AutoModelForCausalLM.from_pretrained(where, dtype=dtype, local_files_only=offline)
        tokenizer = AutoTokenizer.from_pretrained(where, local_files_only=offline)
        model.to(target).eval()
    except Exception as e:
        if offline:
            raise RecipeError(
                f"could not load '{source}': the Hub cannot be reached and it is not in the local "
                "cache; pass a local folder, or try again online"
            ) from None
        hint = "check the folder's files" if is_local else "check the id, or pass a local folder"
        raise RecipeError(f"could not load a model from '{source}': {first_line(e)}; {hint}") from None
    model.generation_config.pad_token_id = tokenizer.eos_token_id
    name, step = describe_local(folder) if is_local else describe_hub(source, offline)
    return LoadedModel(model, tokenizer, name, step, target, trained_block_size(folder)[0] if is_local else None)


# --- generating ----------------------------------------------------------------------------------


def prompt_ids(loaded: LoadedModel, prompt: str, settings: SamplingSettings) -> torch.Tensor:
    """The prompt's token ids, checked to fit the model's context together with the new tokens."""
    tokenizer = loaded.tokenizer
    ids = tokenizer(prompt, return_tensors="pt", verbose=False)["input_ids"]  # the check below says it in one line
    if ids.shape[1] == 0:  # an empty prompt starts from the document separator
        ids = torch.tensor([[tokenizer.eos_token_id]])
    limit = getattr(loaded.model.config, "max_position_embeddings", None)
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
    return _generate_in_thread(loaded, prompt_ids(loaded, prompt, settings), settings)


def _generate_in_thread(loaded: LoadedModel, input_ids: torch.Tensor, settings: SamplingSettings) -> Iterator[str]:
    stop = threading.Event()
    streamer = TextIteratorStreamer(loaded.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
    errors: list[BaseException] = []

    def run():
        try:
            if settings.seed is None:
                torch.seed()  # fresh, even after an earlier request fixed the seed
            else:
                torch.manual_seed(settings.seed)
            loaded.model.generate(  # generate() runs without gradients by itself
                input_ids=input_ids,
                attention_mask=torch.ones_like(input_ids),
                streamer=streamer,
                stopping_criteria=StoppingCriteriaList([StopWhen(stop.is_set)]),
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


def past_training_note(loaded: LoadedModel, prompt: str, settings: SamplingSettings) -> str | None:
    """One line when the text would run past the blocks the model was trained on (its context allows more,
    up to max_position_embeddings, but positions it never saw give worse text)."""
    total = prompt_ids(loaded, prompt, settings).shape[1] + settings.max_new_tokens  # as generate will count them
    if loaded.block_size and total > loaded.block_size:
        return (
            f"note: the prompt and max new tokens make {total:,} tokens, past the {loaded.block_size:,}-token "
            "blocks this model was trained on; the text after that is usually worse"
        )
    return None


def print_completion(loaded: LoadedModel, prompt: str, settings: SamplingSettings) -> None:
    pieces = stream_completion(loaded, prompt, settings)  # raises before anything is printed
    if note := past_training_note(loaded, prompt, settings):
        print(note, file=sys.stderr)
    print(prompt, end="", flush=True)
    try:
        for piece in pieces:
            print(piece, end="", flush=True)
    finally:  # on Ctrl-C too: the model's generation ends with the reading
        pieces.close()
        print(flush=True)


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None):
    parser = cli.parser("generate.py", __doc__)
    parser.add_argument(
        "model",
        nargs="?",
        help=f"a final/ or checkpoint-N folder, or a Hub id (default: the newest run in {RUNS_DIR}/)",
    )
    parser.add_argument("--prompt", help="text to continue (default: stdin, or a prompt loop)")
    defaults = SamplingSettings()
    parser.add_argument("--max-new-tokens", type=int, default=defaults.max_new_tokens)
    parser.add_argument("--temperature", type=float, default=defaults.temperature, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=defaults.top_p, help="in (0, 1]; 1 = off")
    parser.add_argument("--top-k", type=int, default=defaults.top_k, help="0 = off")
    parser.add_argument("--seed", type=int, default=defaults.seed, help="repeatable text (default: fresh each run)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present, else CPU), cpu, cuda, cuda:1, ...")
    return parser.parse(argv)


def utf8_text(text: str, where: str) -> str:
    """Text from the command line or stdin, refused in one line where it holds bytes that are not UTF-8
    (Python keeps them as lone surrogates, which the tokenizer cannot encode)."""
    bad = next((i for i, ch in enumerate(text) if "\udc80" <= ch <= "\udcff"), None)
    if bad is not None:
        raise RecipeError(
            f"{where} is not UTF-8 text (byte 0x{ord(text[bad]) - 0xDC00:02x} at character {bad + 1:,}); "
            "pass UTF-8 text (e.g. iconv -f latin1 -t utf-8)"
        )
    return text


@cli.command("stopped generating")
def main(argv: list[str] | None = None) -> int:
    transformers_logging.disable_progress_bar()  # stdout and stderr hold the text and one-line messages only
    args = parse_args(argv)
    settings = SamplingSettings(args.max_new_tokens, args.temperature, args.top_p, args.top_k, args.seed)
    try:
        settings.check()
    except SettingError as e:
        raise RecipeError(e.for_flag()) from None
    prompt = utf8_text(args.prompt, "--prompt") if args.prompt is not None else None
    pick_device(args.device)
    loaded = load_model(args.model, args.device)
    if prompt is not None:
        print_completion(loaded, prompt, settings)
    elif not sys.stdin.isatty():
        text = sys.stdin.buffer.read().decode("utf-8", errors="surrogateescape")
        print_completion(loaded, utf8_text(text, "the prompt on stdin").rstrip("\n"), settings)
    else:
        prompt_loop(loaded, settings)
    return 0


def prompt_loop(loaded: LoadedModel, settings: SamplingSettings) -> None:
    print(f"{loaded.title} on {loaded.device}. Type a prompt, Enter to generate, Ctrl-D to quit.")
    while True:
        try:
            prompt = input(">>> ")
        except EOFError:
            print()
            return
        try:
            print_completion(loaded, utf8_text(prompt, "the prompt"), settings)
        except RecipeError as e:  # a prompt too long: say so and ask again
            print(f"error: {e}", file=sys.stderr)
        except cli.Terminated:
            raise
        except KeyboardInterrupt:  # Ctrl-C during a completion stops it, not the loop
            print("[stopped]")


if __name__ == "__main__":
    sys.exit(main())
