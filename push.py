"""Publish a trained model to the Hugging Face Hub, with a model card, and optionally a Gradio Space.

    python push.py --repo-id me/smollm2-135m-shakespeare              # output_dir/final, else the newest runs/*/final
    python push.py --checkpoint runs/smollm2-135M/checkpoint-5000 --repo-id me/name --private
    python push.py --repo-id me/name --dry-run --out /tmp/pushed        # build and check, upload nothing
    python push.py --repo-id me/name --space me/name-demo                # also a Gradio Space serving it

First a local folder is built: model.safetensors (in --dtype, bfloat16 by default), config, generation
config, tokenizer, and a README.md model card that states only what the run recorded: its training phases
(training_phases.json), real steps and tokens (trainer_state.json), settings (recipe_config.yaml), the loss
curve and samples. It is reloaded and made to generate before anything is uploaded. The token comes from
HF_TOKEN or `hf auth login`.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch
import yaml

from checkpoints import atomic_folder, read_trainer_state
from config import RecipeConfig, RecipeError, first_line, load_config

DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}
SPACE_FILES = ("app.py", "generate.py")
CARD_TAGS = ["smollm2", "llama", "pretraining", "smollm2-recipe"]
RUNS_DIR = Path("runs")
PHASES_FILE = "training_phases.json"
# settings of recipe_config.yaml shown in the card; the schedule and step counts are in the phase table
SETTING_KEYS = [
    "per_device_train_batch_size", "gradient_accumulation_steps", "lr_scheduler_kwargs", "optim", "adam_beta1",
    "adam_beta2", "adam_epsilon", "weight_decay", "max_grad_norm", "bf16", "activation_checkpointing", "seed",
]  # fmt: skip
SETTINGS_NOTE = (
    "As configured in the run's recipe_config.yaml (on a CPU without native bf16, train.py trains in fp32 "
    "whatever `bf16` says)."
)
PUBLISHED_SMOLLM2 = re.compile(r"SmolLM2-(135M|360M|1\.7B)")


class OneLineParser(argparse.ArgumentParser):
    """argparse, but a bad flag is the recipe's one `error:` line instead of usage text."""

    def error(self, message: str):
        raise RecipeError(f"{message}; see python push.py --help")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config (default: config_smollm2_135M.yaml)")
    parser.add_argument(
        "--checkpoint", default=None, help="folder to publish (default: training.output_dir/final, else runs/*/final)"
    )
    parser.add_argument("--repo-id", default=None, help="user/name on the Hub (default: hub.repo_id of the YAML)")
    parser.add_argument("--private", action="store_true", default=None, help="create the repo private")
    parser.add_argument("--revision", default=None, help="branch to push to (created if missing)")
    parser.add_argument("--commit-message", default=None)
    parser.add_argument("--dtype", choices=sorted(DTYPES), default="bfloat16", help="weights dtype in the repo")
    parser.add_argument("--out", default=None, help="a new or empty folder to build the repo in (default: temporary)")
    parser.add_argument("--dry-run", action="store_true", help="build and check the folder, upload nothing")
    parser.add_argument("--space", default=None, metavar="USER/NAME", help="also create/update a Gradio Space")
    parser.add_argument("overrides", nargs="*", help="section.key=value config overrides, as for train.py")
    return parser.parse_args(argv)


# --- checking the flags, before any work ---------------------------------------------------------


def chosen_repo_ids(args: argparse.Namespace, cfg: RecipeConfig) -> str:
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
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

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
    out = Path(text).expanduser().resolve()
    if out.exists() and not out.is_dir():
        raise RecipeError(f"--out {text} is a file; pass a new or empty folder")
    if out.is_dir() and any(out.iterdir()):
        raise RecipeError(f"--out {text} already holds files; pass a new or empty folder, or remove it first")
    ancestor = next(p for p in out.parents if p.exists())
    if not ancestor.is_dir():
        raise RecipeError(f"--out {text}: {ancestor} is a file, not a folder; pass a folder path")
    try:  # os.access says yes to root even on a read-only file system: try it
        os.rmdir(tempfile.mkdtemp(prefix=".push-probe-", dir=ancestor))
    except OSError as e:
        raise RecipeError(f"--out {text} cannot be written ({e.strerror}); pass a folder you can write to") from None
    return out


# --- what to publish -----------------------------------------------------------------------------


def holds_model(folder: Path) -> bool:
    return (folder / "config.json").is_file() and any(folder.glob("*.safetensors"))


def newest_run_model(configured: Path) -> Path:
    """Without --checkpoint and without the config's final/: the newest model of any run (generate.py's
    finder: a final/ or a complete checkpoint-N), said in one line."""
    from generate import LoadError, find_newest_model

    try:
        newest = find_newest_model(RUNS_DIR)
    except LoadError:
        raise RecipeError(
            f"no trained model: looked in {configured} and {RUNS_DIR}/*/final or checkpoint-N; train first, "
            "or pass --checkpoint PATH"
        ) from None
    print(f"no --checkpoint and no {configured}: using {newest}, the newest model in {RUNS_DIR}/")
    return newest


def find_source(checkpoint: str | None, cfg: RecipeConfig) -> Path:
    if checkpoint:
        source = Path(checkpoint).expanduser()
        if source.exists() and not source.is_dir():
            raise RecipeError(f"--checkpoint {checkpoint} is a file; pass the folder that holds the model")
        if not source.is_dir():
            raise RecipeError(f"no such checkpoint: {source} (pass an existing folder)")
    else:
        configured = Path(cfg.training["output_dir"]) / "final"
        source = configured if configured.is_dir() else newest_run_model(configured)
    if not holds_model(source):
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


# --- what the run recorded -----------------------------------------------------------------------


@dataclass
class RunRecord:
    """What train.py left next to the weights; None where the file is missing."""

    recipe: dict | None  # recipe_config.yaml
    state: dict | None  # trainer_state.json
    phases: list[dict] | None  # training_phases.json
    samples_file: Path | None  # samples.jsonl

    @property
    def trained_here(self) -> bool:
        return self.recipe is not None or self.state is not None

    @property
    def global_step(self) -> int | None:
        return self.state.get("global_step") if self.state else None

    @property
    def history(self) -> list[dict]:
        return self.state.get("log_history", []) if self.state else []

    def training(self, key: str, default=None):
        return ((self.recipe or {}).get("training") or {}).get(key, default)

    def data(self, key: str, default=None):
        return ((self.recipe or {}).get("data") or {}).get(key, default)


def read_run_file(source: Path, name: str, parse):
    path = run_file(source, name)
    if path is None:
        return None
    try:
        return parse(path.read_text())
    except (OSError, ValueError, yaml.YAMLError) as e:
        raise RecipeError(f"cannot read {path}: {first_line(e)}; fix or remove the file") from None


def read_run_record(source: Path) -> RunRecord:
    phases = read_run_file(source, PHASES_FILE, json.loads)
    return RunRecord(
        recipe=read_run_file(source, "recipe_config.yaml", yaml.safe_load),
        state=read_trainer_state(source) or read_trainer_state(source.parent),
        phases=phases["phases"] if isinstance(phases, dict) and phases.get("phases") else None,
        samples_file=run_file(source, "samples.jsonl"),
    )


@dataclass
class Phase:
    name: str
    first_step: int
    last_step: int  # the real last step where trainer_state.json says it, else the planned one
    planned_last_step: int | None
    schedule: str | None
    learning_rate: float | None
    warmup_steps: float | None = None


def training_phases(record: RunRecord) -> list[Phase]:
    """The phases from training_phases.json, ended where trainer_state.json says; else what the log shows."""
    if record.phases:
        return phases_from_file(record.phases, record.global_step)
    return phases_from_log(record)


def phases_from_file(spec: list[dict], global_step: int | None) -> list[Phase]:
    ran = [p for p in spec if global_step is None or p["first_step"] <= global_step]
    phases = []
    for p, following in zip(ran, [*ran[1:], None], strict=True):
        planned = p.get("last_step")
        if following is not None:
            last = following["first_step"] - 1
        else:
            last = global_step if global_step is not None else planned
        schedule = p.get("lr_scheduler_type"), p.get("learning_rate"), p.get("warmup_steps")
        phases.append(Phase(p["name"], p["first_step"], last, planned, *schedule))
    return phases


def phases_from_log(record: RunRecord) -> list[Phase]:
    """Without training_phases.json: the main phase of recipe_config.yaml, and any steps past its max_steps
    (the extra phase of --resume) with the learning rate the log shows."""
    step, planned = record.global_step, record.training("max_steps")
    if step is None and planned is None:
        return []
    if record.recipe is None:
        return [Phase("training", 1, step, None, None, max(logged_lrs(record.history, 1, step), default=None))]
    main = Phase(
        "main", 1, min(step, planned) if step and planned else (step or planned), planned,
        record.training("lr_scheduler_type"), record.training("learning_rate"), record.training("warmup_steps"),
    )  # fmt: skip
    if step is None or planned is None or step <= planned:
        return [main]
    lrs = set(logged_lrs(record.history, planned + 1, step))
    lr = lrs.pop() if len(lrs) == 1 else None
    return [main, Phase("resume", planned + 1, step, None, "constant" if lr is not None else None, lr)]


def logged_lrs(history: list[dict], first: int, last: int) -> list[float]:
    return [h["learning_rate"] for h in history if "learning_rate" in h and first <= h.get("step", 0) <= last]


def processes_from_log(history: list[dict]) -> int | None:
    """The number of processes, from the throughput the recipe logs in total and per device."""
    for h in reversed(history):
        total, per_device = h.get("tokens_per_second"), h.get("tokens_per_second_per_device")
        if total and per_device:
            return max(1, round(total / per_device))
    return None


def trained_tokens(record: RunRecord) -> str | None:
    """The real number of trained tokens, with how it was counted; None when the run did not record enough."""
    step = record.global_step
    if step is None:
        return None
    seen = record.state.get("num_input_tokens_seen") or 0
    if seen > 0:
        return f"{seen:,} tokens (counted by the Trainer)"
    batch = record.training("per_device_train_batch_size") or record.state.get("train_batch_size")
    accumulation = record.training("gradient_accumulation_steps", 1)
    block = record.data("block_size")
    if not batch or not block:
        return None
    per_process = step * batch * accumulation * block
    how = f"{step:,} steps × {batch} sequences × {accumulation} accumulation"
    processes = processes_from_log(record.history)
    if processes is None:
        return f"{per_process:,} tokens per process ({how} × {block} tokens; the number of processes is not recorded)"
    process_count = f"{processes} process{'es' if processes > 1 else ''}"
    return f"{per_process * processes:,} tokens ({how} × {process_count} × {block} tokens)"


def hub_dataset_id(path) -> str | None:
    """data.path when it names a Hub dataset (user/name or name, not a local file, folder or glob)."""
    if not isinstance(path, str) or os.path.exists(path) or path.startswith((".", "~", "/")):
        return None
    parts = path.split("/")
    if len(parts) > 2 or not all(re.fullmatch(r"[\w.-]+", p) for p in parts) or "." in parts[-1]:
        return None
    return path


def dataset_description(path, hub_dataset: str | None) -> str | None:
    """The corpus as a Hub id or file names: a local path says nothing on the Hub and leaks the trainer's disk."""
    if hub_dataset:
        return f"[{hub_dataset}](https://huggingface.co/datasets/{hub_dataset})"
    if hub_dataset_id(path):
        return f"[{path}](https://huggingface.co/datasets/{path})"
    paths = [path] if isinstance(path, str) else list(path or [])
    names = [Path(p).name or str(p) for p in paths]
    return ", ".join(f"`{n}`" for n in names) or None


def plain(value) -> str:
    """A setting as a reader expects it: 10 not 10.0, 0.0003 not 0.00030000000000000003."""
    if isinstance(value, bool) or value is None:
        return str(value)
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={plain(v)}" for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value)
    return str(value)


# --- the repo folder -----------------------------------------------------------------------------


def first_missing(folder: Path) -> Path | None:
    """The outermost folder on the way to `folder` that does not exist yet (to remove it on failure)."""
    missing = None
    for p in (folder, *folder.parents):
        if p.exists():
            break
        missing = p
    return missing


def build_repo_folder(source: Path, out: Path, dtype: torch.dtype, cfg: RecipeConfig, repo_id: str) -> str:
    """Build and reload-check the folder in a temporary sibling, then rename it into place: never a half-built
    or unchecked folder, and nothing left behind on failure. Returns the reload check's text."""
    from transformers import AutoModelForCausalLM

    made = first_missing(out.parent)
    try:
        with atomic_folder(out) as tmp:
            record = read_run_record(source)
            model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
            tokenizer = load_tokenizer(source, record, cfg)
            model.config.use_cache = True
            model.save_pretrained(tmp)
            tokenizer.save_pretrained(tmp)
            write_model_card(tmp, record, model, cfg, repo_id, dtype)
            sample = check_folder(tmp)
    except BaseException as e:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        if isinstance(e, RecipeError) or not isinstance(e, Exception):
            raise
        raise RecipeError(f"could not build the repo folder from {source}: {first_line(e)}") from None
    return sample


def load_tokenizer(source: Path, record: RunRecord, cfg: RecipeConfig):
    from transformers import AutoTokenizer

    try:
        return AutoTokenizer.from_pretrained(source)
    except Exception:
        return AutoTokenizer.from_pretrained((record.recipe or {}).get("tokenizer") or cfg.tokenizer)


def plot_loss_curve(history: list[dict], phases: list[Phase], path: Path) -> bool:
    figure = draw_loss_curve(history, phases)
    if figure is None:
        return False
    import matplotlib.pyplot as plt

    figure.savefig(path)
    plt.close(figure)
    return True


def draw_loss_curve(history: list[dict], phases: list[Phase]):
    """Train and validation loss against step, the learning rate on a second axis, and a dotted line with the
    phase's name where each phase after the first begins."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    lrs = [(h["step"], h["learning_rate"]) for h in history if "learning_rate" in h]
    if not train and not evals:
        return None
    fig, ax = plt.subplots(figsize=(7, 4), dpi=120)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss")
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss")
    handles, labels = ax.get_legend_handles_labels()
    if lrs:
        lr_axis = ax.twinx()
        lr_axis.plot(*zip(*lrs, strict=True), color="gray", linestyle="--", linewidth=1, label="learning rate")
        lr_axis.set_ylabel("learning rate")
        lr_axis.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        handles, labels = handles + lr_axis.get_lines(), labels + ["learning rate"]
    for i, phase in enumerate(phases):
        x = phase.first_step - 0.5 if i else phase.first_step
        if i:
            ax.axvline(x, color="black", linestyle=":", linewidth=1)
        ax.annotate(f" {phase.name}", (x, 1), xycoords=("data", "axes fraction"), va="top", fontsize=8)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("cross-entropy loss")
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, loc="best")
    fig.tight_layout()
    return fig


def last(history: list[dict], key: str, until_step: int | None) -> float | None:
    values = [h[key] for h in history if key in h and (until_step is None or h.get("step", 0) <= until_step)]
    return values[-1] if values else None


def write_model_card(folder: Path, record: RunRecord, model, cfg: RecipeConfig, repo_id: str, dtype) -> None:
    from huggingface_hub import ModelCard, ModelCardData

    recipe = record.recipe or {}
    hub = recipe.get("hub") or {}
    hub_dataset = hub.get("dataset") or cfg.hub.dataset or hub_dataset_id(record.data("path"))
    card_data = ModelCardData(
        license=hub.get("license") or cfg.hub.license,
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=CARD_TAGS if record.trained_here else [model.config.model_type],
        datasets=[hub_dataset] if hub_dataset else None,
        base_model=recipe.get("init_from") or None,
    )
    if record.trained_here:
        phases = training_phases(record)
        has_curve = plot_loss_curve(record.history, phases, folder / "loss_curve.png")
        sections = [
            introduction(record, model, cfg, repo_id, phases, hub_dataset),
            architecture_section(model, dtype),
            phases_section(record, phases),
            settings_section(record),
            results_section(record, has_curve),
            samples_section(read_samples(record.samples_file, record.global_step)),
        ]
    else:
        sections = [untrained_introduction(model, repo_id), architecture_section(model, dtype)]
    body = "\n\n".join(s for s in [*sections, usage_section(repo_id)] if s)
    ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}\n").save(folder / "README.md")


def model_name(record: RunRecord, cfg: RecipeConfig) -> str | None:
    """The config's `name`; for a run whose recipe_config.yaml predates the key, the name in today's YAML."""
    if record.recipe is None:
        return None
    name = record.recipe.get("name") or cfg.name
    return f"[{name}](https://huggingface.co/HuggingFaceTB/{name})" if PUBLISHED_SMOLLM2.fullmatch(name) else name


def introduction(record: RunRecord, model, cfg, repo_id: str, phases: list[Phase], hub_dataset) -> str:
    name = model_name(record, cfg)
    init_from = (record.recipe or {}).get("init_from")
    what = f"A {name}-architecture model" if name else f"A `{architecture(model)}` model"
    how = f"continued from `{init_from}`" if init_from else "trained from scratch"
    lines = [f"# {repo_id.split('/')[-1]}", "", f"{what} {how} with smollm2-recipe (Hugging Face `Trainer`)"]
    dataset = dataset_description(record.data("path"), hub_dataset)
    block = record.data("block_size")
    if dataset:
        lines[-1] += f" on {dataset}" + (f" in blocks of {block:,} tokens" if block else "")
    step = record.global_step
    if step is None:
        lines[-1] += ". How many steps ran was not recorded (no trainer_state.json came with it)."
    else:
        phase_count = f" in {len(phases)} phases" if len(phases) > 1 else ""
        lines[-1] += f": {step:,} optimizer steps{phase_count}"
        tokens = trained_tokens(record)
        lines[-1] += f", {tokens}." if tokens else "."
    return "\n".join(lines)


def untrained_introduction(model, repo_id: str) -> str:
    return (
        f"# {repo_id.split('/')[-1]}\n\nA `{architecture(model)}` model. No record of its training came with it "
        "(no recipe_config.yaml or trainer_state.json), so this card shows only what its `config.json` says."
    )


def architecture(model) -> str:
    return (model.config.architectures or [type(model).__name__])[0]


def architecture_section(model, dtype) -> str:
    c = model.config
    n_params = sum(p.numel() for p in model.parameters())
    return f"""## Architecture

| | |
| --- | --- |
| architecture | `{architecture(model)}` |
| parameters | {n_params:,} |
| layers | {c.num_hidden_layers} |
| hidden size | {c.hidden_size} |
| attention heads / KV heads | {c.num_attention_heads} / {c.num_key_value_heads} |
| MLP size | {c.intermediate_size} |
| vocabulary | {c.vocab_size:,} |
| context length | {c.max_position_embeddings:,} |
| tied embeddings | {c.tie_word_embeddings} |
| weights | {str(dtype).replace("torch.", "")} |"""


def phases_section(record: RunRecord, phases: list[Phase]) -> str:
    if not phases:
        return ""
    rows = ["| phase | steps | optimizer steps | schedule | learning rate | warmup steps |", "| --- | --- | --- | --- | --- | --- |"]  # fmt: skip
    for p in phases:
        rows.append(
            f"| {p.name} | {p.first_step:,}–{p.last_step:,} | {p.last_step - p.first_step + 1:,} "
            f"| {f'`{p.schedule}`' if p.schedule else 'not recorded'} "
            f"| {plain(p.learning_rate) if p.learning_rate is not None else 'not recorded'} "
            f"| {plain(p.warmup_steps) if p.warmup_steps else ''} |"
        )
    notes = []
    end = phases[-1]
    if record.global_step is None:
        notes.append("The steps are the planned ones: no trainer_state.json recorded how far the run went.")
    elif end.planned_last_step and end.planned_last_step != end.last_step:
        notes.append(
            f"The {end.name} phase was planned to step {end.planned_last_step:,} and stopped at {end.last_step:,}."
        )
    if not record.phases:
        read = " and trainer_state.json's log" if record.state else ""
        notes.append(f"No training_phases.json came with the run: the phases are read from recipe_config.yaml{read}.")
    return "\n".join(["## Training phases", "", *rows, *(["", " ".join(notes)] if notes else [])])


def setting(record: RunRecord, key: str):
    """A training setting as recorded; the schedule's kwargs as the run used them (only its schedule's)."""
    value = record.training(key)
    if key == "lr_scheduler_kwargs" and isinstance(value, dict) and record.training("max_steps"):
        from arguments import schedule_kwargs

        try:
            return schedule_kwargs(record.recipe["training"]) or None
        except RecipeError:
            return value
    return value


def settings_section(record: RunRecord) -> str:
    if record.recipe is None:
        return ""
    rows = [f"| `{k}` | `{plain(setting(record, k))}` |" for k in SETTING_KEYS if setting(record, k) is not None]
    block = record.data("block_size")
    if block:
        rows.insert(2, f"| `data.block_size` | `{plain(block)}` |")
    return "\n".join(["## Settings", "", SETTINGS_NOTE, "", "| setting | value |", "| --- | --- |", *rows])  # fmt: skip


def results_section(record: RunRecord, has_curve: bool) -> str:
    history, step = record.history, record.global_step
    rows = []
    train_loss, eval_loss = last(history, "loss", step), last(history, "eval_loss", step)
    if train_loss is not None:
        rows.append(f"| train loss (last logged) | {train_loss:.4f} |")
    if eval_loss is not None:
        rows.append(f"| validation loss | {eval_loss:.4f} |")
        rows.append(f"| validation perplexity | {torch.tensor(eval_loss).exp().item():,.2f} |")
    throughput, mfu = last(history, "tokens_per_second", step), last(history, "mfu", step)
    if throughput is not None:
        rows.append(f"| training throughput (tokens/s, last logged) | {throughput:,.0f} |")
    if mfu is not None:
        rows.append(f"| MFU | {mfu:.1%} |")
    if not rows:
        return ""
    curve = ["", "![loss curve](loss_curve.png)"] if has_curve else []
    return "\n".join(["## Results", "", "| metric | value |", "| --- | --- |", *rows, *curve])


def samples_section(samples: list[dict]) -> str:
    if not samples:
        return ""
    text = "\n\n".join(f"```text\n{s['prompt']}{s['completion']}\n```" for s in samples)
    return f"## Samples at step {samples[0]['step']:,}\n\n{text}"


def usage_section(repo_id: str) -> str:
    return f"""## Use it

```python
from transformers import AutoModelForCausalLM, AutoTokenizer

tokenizer = AutoTokenizer.from_pretrained("{repo_id}")
model = AutoModelForCausalLM.from_pretrained("{repo_id}")
inputs = tokenizer("ROMEO:", return_tensors="pt")
print(tokenizer.decode(model.generate(**inputs, max_new_tokens=50, do_sample=True)[0]))
```"""


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
        raise RecipeError(f"the built folder fails the reload check: {first_line(e)}") from None
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
            commit_message=message or "Upload a model trained with smollm2-recipe",
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

Try [{repo_id}](https://huggingface.co/{repo_id}): its model card says how it was trained.
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
    try:
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
            print(f"reload check passed: {sample!r}")
            if args.dry_run:
                space = f", and the Space {args.space}" if args.space else ""
                print(f"dry run: would upload to {repo_id} ({'private' if private else 'public'}){space}:")
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
