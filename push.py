"""Publish a trained model to the Hugging Face Hub, with a model card, and optionally a Gradio Space.

    python push.py --repo-id me/smollm2-135m-shakespeare              # output_dir/final, else the newest run's model
    python push.py --checkpoint runs/smollm2-135M/checkpoint-5000 --repo-id me/name --private
    python push.py --repo-id me/name --dry-run --out /tmp/pushed        # build and check, upload nothing
    python push.py --repo-id me/name --space me/name-demo                # also a Gradio Space serving it

First a local folder is built: model.safetensors (in --dtype, bfloat16 by default), config, generation
config, tokenizer, and a README.md model card (card.py) that states only what the run recorded. It is
reloaded and made to generate before anything is uploaded. The token comes from HF_TOKEN or `hf auth login`.
"""

from __future__ import annotations

import shutil
import sys
import tempfile
from dataclasses import asdict
from pathlib import Path

from recipe import cli
from recipe.card import TrainingRecord, read_training_record, write_model_card
from recipe.cli import RecipeError, first_line
from recipe.config import ROOT, RecipeConfig, load_config
from recipe.run_folder import FINAL, RUNS_DIR, RunFolder, atomic_folder, holds_model, model_folder, newest_model

import torch
from huggingface_hub import CommitOperationAdd, HfApi, get_token
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.utils import logging as transformers_logging

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SPACE_FILES = (
    "app.py",
    "generate.py",
    "recipe/__init__.py",
    "recipe/cli.py",
    "recipe/sampling.py",
    "recipe/run_folder.py",
)  # app.py and what it imports
SPACE_REQUIREMENTS = "torch\ntransformers>=5.23\naccelerate\ngradio>=5\npyyaml\nxxhash\n"


def parse_args(argv: list[str] | None = None):
    parser = cli.parser("push.py", __doc__)
    parser.add_argument("--config", help="YAML config (default: config_smollm2_135M.yaml)")
    parser.add_argument(
        "--checkpoint", help="folder to publish (default: training.output_dir/final, else runs/*/final)"
    )
    parser.add_argument("--repo-id", help="user/name on the Hub (default: hub.repo_id of the YAML)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo private")
    parser.add_argument("--revision", help="branch to push to (created if missing)")
    parser.add_argument("--commit-message", default="Upload a model trained with smollm2-recipe")
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="weights dtype in the repo")
    parser.add_argument("--out", help="a new or empty folder to build the repo in (default: temporary)")
    parser.add_argument("--dry-run", action="store_true", help="build and check the folder, upload nothing")
    parser.add_argument("--space", metavar="USER/NAME", help="also create/update a Gradio Space")
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides, as for train.py")
    return parser.parse(argv)


# --- checking the flags, before any work ---------------------------------------------------------


def chosen_repo_ids(args, cfg: RecipeConfig) -> str:
    """The model's repo id (and the Space's, if asked for), both checked before any work."""
    repo_id = args.repo_id or cfg.hub.repo_id
    if not repo_id:
        need = "--space needs the model's repo" if args.space else "no repo id"
        raise RecipeError(f"{need}: pass --repo-id user/name or set hub.repo_id in the YAML")
    check_repo_id(repo_id, "--repo-id" if args.repo_id else "hub.repo_id")
    if args.space is not None:
        check_repo_id(args.space, "--space")
    return repo_id


def check_repo_id(repo_id: str, where: str) -> None:
    try:
        if repo_id.count("/") != 1:
            raise HFValidationError("not user/name")
        validate_repo_id(repo_id)
    except HFValidationError:
        raise RecipeError(
            f"{where} '{repo_id}' is not a Hub repo id; write it as user/name (letters, digits, '-', '_', '.')"
        ) from None


def check_out(text: str) -> Path:
    """--out must be a new or empty folder in a place we can write: checked before anything is built."""
    out = RunFolder(text)
    if out.path.is_dir() and any(out.path.iterdir()):
        raise RecipeError(f"--out {text} already holds files; pass a new or empty folder, or remove it first")
    try:
        out.check_writable()
    except RecipeError as e:
        raise RecipeError(str(e).replace("training.output_dir", "--out")) from None
    return out.path


def find_source(checkpoint: str | None, cfg: RecipeConfig) -> Path:
    """--checkpoint, else the config's output_dir/final, else the newest model of any run (said in one line)."""
    if checkpoint:
        source = RunFolder(checkpoint).path
        if source.exists() and not source.is_dir():
            raise RecipeError(f"--checkpoint {checkpoint} is a file; pass the folder that holds the model")
        if not source.is_dir():
            raise RecipeError(f"no such checkpoint: {source} (pass an existing folder)")
    elif (configured := RunFolder(cfg.training["output_dir"]).final).is_dir():
        source = configured
    else:
        try:
            source = newest_model(RUNS_DIR)
        except RecipeError:
            raise RecipeError(
                f"no trained model: looked in {configured} and {RUNS_DIR}/*/final or checkpoint-N; "
                "train first, or pass --checkpoint PATH"
            ) from None
        print(f"no --checkpoint and no {configured}: using {source}, the newest model in {RUNS_DIR}/")
    if not (source / "config.json").is_file() and (RunFolder(source).checkpoints() or (source / FINAL).is_dir()):
        source = model_folder(source)  # a run folder: its final/, else its newest checkpoint
    if not holds_model(source):
        raise RecipeError(f"{source} holds no model (config.json and *.safetensors); pass a final/ or checkpoint-N")
    return source


def hub_token(dry_run: bool) -> str | None:
    token = get_token()
    if token is None and not dry_run:
        raise RecipeError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (or use --dry-run)")
    return token


# --- the repo folder -----------------------------------------------------------------------------


def first_missing(folder: Path) -> Path | None:
    """The outermost folder on the way to `folder` that does not exist yet (to remove it on failure)."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    return missing[-1] if missing else None


def build_repo_folder(source: Path, out: Path, dtype: torch.dtype, cfg: RecipeConfig, repo_id: str) -> str:
    """Build and reload-check the folder in a temporary sibling, then rename it into place: never a half-built
    or unchecked folder, and nothing left behind on failure. Returns what the reload check generated."""
    made = first_missing(out.parent)
    try:
        with atomic_folder(out) as tmp:
            record = read_training_record(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
            model.config.use_cache = True
            model.save_pretrained(tmp)
            load_tokenizer(source, record, cfg).save_pretrained(tmp)
            write_model_card(tmp, record, model, repo_id, dtype, asdict(cfg.hub))
            return check_folder(tmp)
    except BaseException as e:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        if isinstance(e, RecipeError) or not isinstance(e, Exception):
            raise
        raise RecipeError(f"could not build the repo folder from {source}: {first_line(e)}") from None


def load_tokenizer(source: Path, record: TrainingRecord, cfg: RecipeConfig):
    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception:
        return AutoTokenizer.from_pretrained((record.recipe or {}).get("tokenizer") or cfg.tokenizer)


def check_folder(folder: Path) -> str:
    """Reload the folder as a user would and generate a few tokens; say how many came."""
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        inputs = tokenizer("The", return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    except Exception as e:
        raise RecipeError(f"the built folder fails the reload check: {first_line(e)}") from None
    return f'it loads and generates {output.shape[1] - inputs["input_ids"].shape[1]} tokens after "The"'


def describe_files(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    lines = [f"  {p.relative_to(folder)}  ({p.stat().st_size / 1e6:,.2f} MB)" for p in files]
    total = sum(p.stat().st_size for p in files) / 1e6
    return "\n".join(lines + [f"  total {total:,.2f} MB"])


# --- the Hub -------------------------------------------------------------------------------------


def hub_error(e: Exception, token: str | None) -> RecipeError:
    text = first_line(e).replace(token, "***") if token else first_line(e)
    return RecipeError(f"the Hub refused the upload: {text}")


def upload(folder: Path, repo_id: str, token: str, private: bool, revision: str | None, message: str) -> str:
    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(folder_path=folder, repo_id=repo_id, revision=revision, commit_message=message)
    except Exception as e:
        raise hub_error(e, token) from None
    return str(url)


def space_readme(space_id: str, repo_id: str) -> str:
    return f"""---
title: {space_id.split("/")[-1]}
emoji: 📜
colorFrom: indigo
colorTo: blue
sdk: gradio
app_file: app.py
models:
  - {repo_id}
pinned: false
---

Try [{repo_id}](https://huggingface.co/{repo_id}): its model card says how it was trained.
"""


def push_space(space_id: str, repo_id: str, token: str, private: bool) -> str:
    written = {"requirements.txt": SPACE_REQUIREMENTS, "README.md": space_readme(space_id, repo_id)}
    files = [CommitOperationAdd(name, ROOT / name) for name in SPACE_FILES]  # uploaded from the clone, in one commit
    files += [CommitOperationAdd(name, text.encode()) for name, text in written.items()]
    api = HfApi(token=token)
    try:
        url = api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
        api.add_space_variable(space_id, "MODEL_ID", repo_id)
        api.create_commit(space_id, files, commit_message="Gradio demo", repo_type="space")
    except Exception as e:
        raise hub_error(e, token) from None
    return str(url)


@cli.command("stopped before the upload finished")
def main(argv: list[str] | None = None) -> int:
    transformers_logging.disable_progress_bar()  # loading and saving a small model: seconds, no bars
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    repo_id = chosen_repo_ids(args, cfg)
    out = check_out(args.out) if args.out is not None else None
    source = find_source(args.checkpoint, cfg)
    token = hub_token(args.dry_run)
    private = cfg.hub.private if args.private is None else args.private
    with tempfile.TemporaryDirectory() as tmp:
        out = out or Path(tmp) / repo_id.split("/")[-1]
        print(f"building the repo folder for {repo_id} from {source} in {out}", flush=True)
        sample = build_repo_folder(source, out, DTYPES[args.dtype], cfg, repo_id)
        print(f"reload check passed: {sample}")
        if args.dry_run:
            space = f", and the Space {args.space}" if args.space else ""
            print(f"dry run: would upload to {repo_id} ({'private' if private else 'public'}){space}:")
            print(describe_files(out))
            return 0
        print(f"uploaded to {upload(out, repo_id, token, private, args.revision, args.commit_message)}")
        if args.space:
            print(f"Space: {push_space(args.space, repo_id, token, private)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
