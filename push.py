"""Publish a trained model to the Hugging Face Hub, with a model card, and optionally a Gradio Space.

    python push.py --repo-id me/smollm2-135m-shakespeare              # output_dir/final of the YAML
    python push.py --checkpoint runs/smollm2-135M/checkpoint-5000 --repo-id me/name --private
    python push.py --repo-id me/name --dry-run --out /tmp/pushed        # build and check, upload nothing
    python push.py --repo-id me/name --space me/name-demo                # also a Gradio Space serving it

First a local folder is built: model.safetensors (in --dtype, bfloat16 by default), config, generation
config, tokenizer, and a README.md model card with the training details, the loss curve and samples. It is
reloaded and made to generate before anything is uploaded. The token comes from HF_TOKEN or `hf auth login`.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import tempfile
from pathlib import Path

import torch
import yaml

from config import RecipeConfig, RecipeError, first_line, load_config

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SPACE_FILES = ("app.py", "generate.py")
CARD_TAGS = ["smollm2", "llama", "pretraining", "smollm2-recipe"]


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config (default: config_smollm2_135M.yaml)")
    parser.add_argument("--checkpoint", default=None, help="folder to publish (default: training.output_dir/final)")
    parser.add_argument("--repo-id", default=None, help="user/name on the Hub (default: hub.repo_id of the YAML)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo private")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="weights dtype in the repo")
    parser.add_argument("--out", default=None, help="where to build the repo folder (default: a temporary one)")
    parser.add_argument("--dry-run", action="store_true", help="build and check the folder, upload nothing")
    parser.add_argument("--space", default=None, metavar="USER/NAME", help="also create/update a Gradio Space")
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides, as for train.py")
    return parser.parse_args(argv)


# --- what to publish -----------------------------------------------------------------------------


def find_source(checkpoint: str | None, cfg: RecipeConfig) -> Path:
    source = Path(checkpoint) if checkpoint else Path(cfg.training["output_dir"]) / "final"
    if not source.is_dir():
        hint = "train first, or pass --checkpoint PATH" if not checkpoint else "pass an existing folder"
        raise RecipeError(f"no such checkpoint: {source} ({hint})")
    if not (source / "config.json").is_file() or not any(source.glob("*.safetensors")):
        raise RecipeError(f"{source} holds no model (config.json and *.safetensors); pass a final/ or checkpoint-N")
    return source


def run_file(source: Path, name: str) -> Path | None:
    """A file of the training run: in the checkpoint folder itself, or in the run folder above final/."""
    for folder in (source, source.parent):
        if (folder / name).is_file():
            return folder / name
    return None


def hub_token(dry_run: bool) -> str | None:
    from huggingface_hub import get_token

    token = get_token()
    if token is None and not dry_run:
        raise RecipeError("no Hugging Face token: run `hf auth login` or set HF_TOKEN (or use --dry-run)")
    return token


# --- the repo folder -----------------------------------------------------------------------------


def build_repo_folder(source: Path, out: Path, dtype: torch.dtype, cfg: RecipeConfig, repo_id: str) -> Path:
    """Write the folder to a temporary sibling and rename it into place: never a half-built folder."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    if out.exists() and any(out.iterdir()) and not (out / "config.json").is_file():
        raise RecipeError(f"--out {out} exists and was not made by push.py; choose an empty or new folder")
    tmp = out.with_name(f".{out.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        try:
            tokenizer = AutoTokenizer.from_pretrained(source)
        except Exception:
            tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer)
        model.config.use_cache = True
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        write_model_card(tmp, source, model, cfg, repo_id, dtype)
    except RecipeError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RecipeError(f"could not build the repo folder from {source}: {first_line(e)}") from None
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    return out


def plot_loss_curve(log_history: list[dict], path: Path) -> bool:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h]
    if not train and not evals:
        return False
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return True


def training_summary(source: Path) -> tuple[list[dict], int | None]:
    state_file = run_file(source, "trainer_state.json")
    if state_file is None:
        return [], None
    state = json.loads(state_file.read_text())
    return state.get("log_history", []), state.get("global_step")


def last(history: list[dict], key: str, until_step: int | None) -> float | None:
    values = [h[key] for h in history if key in h and (until_step is None or h.get("step", 0) <= until_step)]
    return values[-1] if values else None


def write_model_card(folder: Path, source: Path, model, cfg: RecipeConfig, repo_id: str, dtype) -> None:
    from huggingface_hub import ModelCard, ModelCardData

    recipe_file = run_file(source, "recipe_config.yaml")
    run_cfg = yaml.safe_load(recipe_file.read_text()) if recipe_file else cfg.to_dict()
    history, step = training_summary(source)
    ckpt_state = source / "trainer_state.json"
    if ckpt_state.is_file():
        step = json.loads(ckpt_state.read_text()).get("global_step", step)
    has_curve = plot_loss_curve(history, folder / "loss_curve.png")

    dataset = run_cfg.get("hub", {}).get("dataset") or cfg.hub.dataset
    init_from = run_cfg.get("init_from")
    card_data = ModelCardData(
        license=run_cfg.get("hub", {}).get("license") or cfg.hub.license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=CARD_TAGS,
        datasets=[dataset] if dataset else None,
        base_model=init_from or None,
    )
    n_params = sum(p.numel() for p in model.parameters())
    c = model.config
    train_loss, eval_loss = last(history, "loss", step), last(history, "eval_loss", step)
    training = run_cfg.get("training", {})
    data = run_cfg.get("data", {})
    keys = [
        "max_steps", "per_device_train_batch_size", "gradient_accumulation_steps", "learning_rate",
        "lr_scheduler_type", "lr_scheduler_kwargs", "warmup_steps", "optim", "adam_beta1", "adam_beta2",
        "adam_epsilon", "weight_decay", "max_grad_norm", "bf16", "activation_checkpointing", "seed",
    ]  # fmt: skip
    hyper = "\n".join(f"| `{k}` | `{training[k]}` |" for k in keys if k in training)
    results = []
    if train_loss is not None:
        results.append(f"| train loss (last logged) | {train_loss:.4f} |")
    if eval_loss is not None:
        results.append(f"| validation loss | {eval_loss:.4f} |")
        results.append(f"| validation perplexity | {torch.tensor(eval_loss).exp().item():.2f} |")
    for key, label in [("tokens_per_second", "training throughput (tokens/s, last logged)"), ("mfu", "MFU")]:
        value = last(history, key, step)
        if value is not None:
            results.append(f"| {label} | {value:.1%} |" if key == "mfu" else f"| {label} | {value:,.0f} |")
    samples = read_samples(run_file(source, "samples.jsonl"), step)
    sample_text = "\n\n".join(f"```text\n{s['prompt']}{s['completion']}\n```" for s in samples) or "_none recorded_"
    name = repo_id.split("/")[-1]
    body = f"""
# {name}

A [SmolLM2-135M](https://huggingface.co/HuggingFaceTB/SmolLM2-135M)-architecture model
{"continued from `" + init_from + "`" if init_from else "trained from scratch"} with
smollm2-recipe (Hugging Face `Trainer`), for {step if step is not None else "?"} optimizer steps
on `{data.get("path", "?")}` in blocks of {data.get("block_size", "?")} tokens.

## Architecture

| | |
| --- | --- |
| architecture | `LlamaForCausalLM` |
| parameters | {n_params:,} |
| layers | {c.num_hidden_layers} |
| hidden size | {c.hidden_size} |
| attention heads / KV heads | {c.num_attention_heads} / {c.num_key_value_heads} |
| MLP size | {c.intermediate_size} |
| vocabulary | {c.vocab_size:,} |
| tied embeddings | {c.tie_word_embeddings} |
| weights | {str(dtype).replace("torch.", "")} |

## Training

| hyperparameter | value |
| --- | --- |
{hyper or "| (not recorded) | |"}

## Results

| metric | value |
| --- | --- |
{chr(10).join(results) or "| (no logged losses) | |"}

{"![loss curve](loss_curve.png)" if has_curve else ""}

## Samples at step {samples[0]["step"] if samples else "?"}

{sample_text}

## Use it

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
model = AutoModelForCausalLM.from_pretrained("{repo_id}")
inputs = tokenizer("ROMEO:", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=50, do_sample=True)[0]))
```
"""
    card = ModelCard(f"---\n{card_data.to_yaml()}\n---\n{body}")
    card.save(folder / "README.md")


def read_samples(path: Path | None, step: int | None) -> list[dict]:
    if path is None:
        return []
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if step is None or r["step"] <= step]
    if not rows:
        return []
    newest = max(r["step"] for r in rows)
    return [r for r in rows if r["step"] == newest]


def check_folder(folder: Path) -> str:
    """Reload the folder as a user would and generate a few tokens; return them."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    try:
        tokenizer = AutoTokenizer.from_pretrained(folder)
        model = AutoModelForCausalLM.from_pretrained(folder)
        inputs = tokenizer("The", return_tensors="pt")
        output = model.generate(**inputs, max_new_tokens=5, do_sample=False, pad_token_id=tokenizer.eos_token_id)
    except Exception as e:
        raise RecipeError(f"the built folder {folder} fails the reload check: {first_line(e)}") from None
    return tokenizer.decode(output[0], skip_special_tokens=True)


def describe_files(folder: Path) -> str:
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    lines = [f"  {p.relative_to(folder)}  ({p.stat().st_size / 1e6:,.2f} MB)" for p in files]
    total = sum(p.stat().st_size for p in files) / 1e6
    return "\n".join(lines + [f"  total {total:,.2f} MB"])


# --- the Hub -------------------------------------------------------------------------------------


def hub_error(e: Exception, token: str | None) -> RecipeError:
    text = first_line(e)
    if token:
        text = text.replace(token, "***")
    return RecipeError(f"the Hub refused the upload: {text}")


def upload(folder: Path, repo_id: str, token: str, private: bool, revision: str | None, message: str | None) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    try:
        url = api.create_repo(repo_id, private=private, exist_ok=True)
        if revision:
            api.create_branch(repo_id, branch=revision, exist_ok=True)
        api.upload_folder(
            folder_path=folder,
            repo_id=repo_id,
            revision=revision,
            commit_message=message or "Upload SmolLM2 model trained with smollm2-recipe",
        )
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

Try [{repo_id}](https://huggingface.co/{repo_id}), a SmolLM2-135M trained with smollm2-recipe.
"""


def push_space(space_id: str, repo_id: str, token: str, private: bool) -> str:
    from huggingface_hub import HfApi

    api = HfApi(token=token)
    here = Path(__file__).resolve().parent
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        for name in SPACE_FILES:
            shutil.copy(here / name, folder / name)
        (folder / "requirements.txt").write_text("torch\ntransformers>=5.23\ngradio>=5\n")
        (folder / "README.md").write_text(space_readme(space_id, repo_id))
        try:
            url = api.create_repo(space_id, repo_type="space", space_sdk="gradio", private=private, exist_ok=True)
            api.add_space_variable(space_id, "MODEL_ID", repo_id)
            api.upload_folder(folder_path=folder, repo_id=space_id, repo_type="space", commit_message="Gradio demo")
        except Exception as e:
            raise hub_error(e, token) from None
    return str(url)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        source = find_source(args.checkpoint, cfg)
        repo_id = args.repo_id or cfg.hub.repo_id
        if not repo_id or repo_id.count("/") != 1:
            raise RecipeError("no repo id: pass --repo-id user/name or set hub.repo_id in the YAML")
        token = hub_token(args.dry_run)
        private = cfg.hub.private if args.private is None else args.private
        with tempfile.TemporaryDirectory() as tmp:
            out = Path(args.out) if args.out else Path(tmp) / repo_id.split("/")[-1]
            print(f"building the repo folder for {repo_id} from {source} in {out}", flush=True)
            build_repo_folder(source, out, DTYPES[args.dtype], cfg, repo_id)
            sample = check_folder(out)
            print(f"reload check passed: {sample!r}")
            if args.dry_run:
                print(f"dry run: would upload to {repo_id} ({'private' if private else 'public'}):")
                print(describe_files(out))
                return 0
            url = upload(out, repo_id, token, private, args.revision, args.commit_message)
            print(f"uploaded to {url}")
            if args.space:
                print(f"Space: {push_space(args.space, repo_id, token, private)}")
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
