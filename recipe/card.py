"""The model card of a trained model: what the run recorded, and nothing it did not.

Everything comes from the run's own files (run_folder.py): the run record's phases with their schedules, processes
and tokens trained, trainer_state.json's log (steps, losses, learning rate), recipe_config.yaml's settings, the
samples. A folder the recipe did not train gets a card that says only what config.json says.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, replace
from pathlib import Path

from recipe.cli import RecipeError, first_line, log
from recipe.run_folder import (
    EVAL_RESULTS,
    RECIPE_CONFIG,
    RECORD,
    SAMPLES,
    read_dict,
    read_trainer_state,
    run_file,
)
from recipe.run_state import Phase, RunState

from huggingface_hub import EvalResult, HfApi, ModelCard, ModelCardData

CARD_TAGS = ["smollm2", "llama", "pretraining", "smollm2-recipe"]
# settings of recipe_config.yaml shown in the card; the schedule and step counts are in the phase table
SETTING_KEYS = [
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "optim",
    "adam_beta1",
    "adam_beta2",
    "adam_epsilon",
    "weight_decay",
    "max_grad_norm",
    "bf16",
    "activation_checkpointing",
    "seed",
]
SETTINGS_NOTE = (
    "As configured in the run's recipe_config.yaml (on a CPU without native bf16, train.py trains in fp32 "
    "whatever `bf16` says)."
)
PUBLISHED_SMOLLM2 = ("SmolLM2-135M", "SmolLM2-360M", "SmolLM2-1.7B")
RESULTS_FORMAT = 1  # of eval_results.json, which eval.py writes
HARNESS_URL = "https://github.com/EleutherAI/lm-evaluation-harness"


@dataclass
class TrainingRecord:
    """What train.py left next to the weights; None where a file is missing (a model the recipe did not train
    has no run state)."""

    recipe: dict | None  # recipe_config.yaml
    state: dict | None  # trainer_state.json, for its log
    run: RunState | None  # run.json
    samples_file: Path | None  # samples.jsonl
    evaluation: dict | None = None  # eval_results.json, next to the model

    trained_here = property(lambda self: self.run is not None)
    global_step = property(lambda self: self.run.global_step if self.run else None)
    history = property(lambda self: (self.state or {}).get("log_history", []))
    block_size = property(lambda self: ((self.recipe or {}).get("data") or {}).get("block_size"))  # trained context

    def training(self, key: str):
        return ((self.recipe or {}).get("training") or {}).get(key)


def read_training_record(source: Path) -> TrainingRecord:
    recipe, run = run_file(source, RECIPE_CONFIG), run_file(source, RECORD)
    settings = read_dict(recipe) if recipe else None
    if recipe is not None and settings is None:
        raise RecipeError(f"cannot read {recipe}: not valid YAML; fix or remove it")
    if run is not None and read_dict(run) is None:
        raise RecipeError(f"cannot read {run}: not valid JSON; fix or remove it")
    return TrainingRecord(
        recipe=settings,
        state=read_trainer_state(source) or read_trainer_state(source.parent),
        run=RunState.read(run.parent) if run else None,
        samples_file=run_file(source, SAMPLES),
        evaluation=read_eval_results(source),
    )


def training_phases(record: TrainingRecord) -> list[Phase]:
    """The run's phases as far as it went: the last one ends at the step the run reached."""
    if record.run is None:
        return []
    step = record.global_step
    return [replace(p, last_step=min(p.last_step, step)) for p in record.run.phases if p.first_step <= step]


def trained_tokens(record: TrainingRecord) -> str | None:
    """The tokens trained on, as the Trainer counted them over all processes; None before the first step."""
    if not record.run.tokens_trained:
        return None
    processes = sorted({p.processes for p in record.run.phases})
    on = f" on {' then '.join(map(str, processes))} process{'es' if processes[-1] > 1 else ''}"
    return f"{record.run.tokens_trained:,} tokens{on}"


def dataset_description(record: TrainingRecord, hub_dataset: str | None) -> str | None:
    """The corpus as a Hub id or file names: a local path says nothing on the Hub and leaks the trainer's disk."""
    if name := hub_dataset or record.run.corpus.get("hub_id"):
        return f"[{name}](https://huggingface.co/datasets/{name})"
    names = record.run.corpus.get("files", [])
    shown = ", ".join(f"`{n}`" for n in names[:5]) + (f" and {len(names) - 5} more files" if len(names) > 5 else "")
    return shown or None


def plain(value) -> str:
    """A setting as a reader expects it: 10 not 10.0, 0.0003 not 0.00030000000000000003."""
    if isinstance(value, float):
        return str(int(value)) if value.is_integer() else f"{value:g}"
    if isinstance(value, dict):
        return ", ".join(f"{k}={plain(v)}" for k, v in sorted(value.items()))  # as trainer_state.json keeps them
    if isinstance(value, (list, tuple)):
        return ", ".join(plain(v) for v in value)
    return str(value)


# --- evaluation results (eval.py) -----------------------------------------------------------------------------


def number(value) -> float | None:
    """A metric value or stderr as a float; lm-eval writes "N/A" where it has none."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def read_eval_results(path: Path) -> dict | None:
    """eval_results.json (of a model folder, or the file), or None when it is missing or not in this format."""
    data = read_dict(path if path.suffix == ".json" else path / EVAL_RESULTS) or {}
    return data if data.get("format") == RESULTS_FORMAT and isinstance(data.get("tasks"), list) else None


def model_index_results(results: dict) -> list[EvalResult]:
    """eval_results.json as the EvalResults of the card's model-index: one per task and metric."""
    out = []
    for entry in results.get("tasks", []):
        dataset, notes = entry.get("dataset") or {}, []
        if entry.get("num_fewshot"):
            notes.append(f"{entry['num_fewshot']}-shot")
        if entry.get("limit") is not None and entry.get("examples") != entry.get("examples_total"):
            notes.append(f"first {entry['examples']:,} of {entry['examples_total']:,} examples")
        for metric in (m for m in entry.get("metrics", []) if number(m.get("value")) is not None):
            out.append(
                EvalResult(
                    task_type="text-generation",
                    task_name=entry["task"],
                    dataset_type=dataset.get("type") or entry["task"],
                    dataset_name=dataset.get("name") or entry["task"],
                    dataset_config=dataset.get("config"),
                    dataset_split=dataset.get("split"),
                    metric_type=metric["name"],
                    metric_value=round(metric["value"], 4),
                    metric_name=f"{metric['name']} ({', '.join(notes)})" if notes else metric["name"],
                    source_name=f"lm-evaluation-harness {entry.get('lm_eval_version', '')}".strip(),
                    source_url=HARNESS_URL,
                )
            )
    return out


# --- the loss curve --------------------------------------------------------------------------------------------


def draw_loss_curve(history: list[dict], phases: list[Phase]):
    """Train and validation loss against step, the learning rate on a second axis, and a dotted line with the
    phase's name where each phase after the first begins."""
    train, evals, lrs = ([(h["step"], h[k]) for h in history if k in h] for k in ("loss", "eval_loss", "learning_rate"))
    if not train and not evals:
        return None
    from matplotlib.figure import Figure  # here, not on top: 0.3 s of every train.py start, for the card alone

    fig = Figure(figsize=(7, 4), dpi=120)  # no pyplot: no screen, no global figures to close
    ax = fig.subplots()
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
    ax.set(xlabel="optimizer step", ylabel="cross-entropy loss")
    ax.grid(alpha=0.3)
    ax.legend(handles, labels, loc="best")
    fig.tight_layout()
    return fig


# --- the card --------------------------------------------------------------------------------------------------


def write_model_card(folder: Path, record: TrainingRecord, model, repo_id: str, dtype, hub: dict) -> None:
    """README.md (and loss_curve.png) in `folder`. `hub`: the config's hub section (license, dataset)."""
    hub = {**hub, **{k: v for k, v in ((record.recipe or {}).get("hub") or {}).items() if v}}
    hub_dataset = hub.get("dataset") or (record.run.corpus.get("hub_id") if record.run else None)
    base_model = record.run.base_model if record.run else None
    card_data = ModelCardData(
        license=hub.get("license"),
        library_name="transformers",
        pipeline_tag="text-generation",
        tags=CARD_TAGS if record.trained_here else [model.config.model_type],
        datasets=[hub_dataset] if hub_dataset else None,
        base_model=base_model,
        model_name=repo_id.split("/")[-1] if record.evaluation else None,  # the model-index needs a name
        eval_results=model_index_results(record.evaluation) if record.evaluation else None,
    )
    sections = [
        introduction(record, model, repo_id, hub_dataset, base_model),
        architecture_section(model, record, dtype),
    ]
    if record.trained_here:
        phases = training_phases(record)
        if (curve := draw_loss_curve(record.history, phases)) is not None:
            curve.savefig(folder / "loss_curve.png")
        sections += [
            phases_section(record, phases),
            sources_section(record),
            settings_section(record),
            results_section(record, curve is not None),
            samples_section(read_samples(record.samples_file, record.global_step)),
        ]
    sections.append(evaluation_section(record.evaluation))
    body = "\n\n".join(s for s in [*sections, usage_section(repo_id)] if s)
    ModelCard(f"---\n{card_data.to_yaml()}\n---\n\n{body}\n").save(folder / "README.md")


def push_final(trainer, final: Path) -> None:
    """training.push_to_hub, at the end: final/ with the recipe's card as its README.md (never the Trainer's)."""
    model, repo = trainer.accelerator.unwrap_model(trainer.model), trainer.hub_model_id
    write_model_card(final, read_training_record(final), model, repo, model.dtype, {})
    try:
        HfApi().upload_folder(
            repo_id=repo,
            folder_path=final,
            revision=trainer.args.hub_revision,
            commit_message="End of training: the final model and its card (smollm2-recipe)",
        )
    except Exception as e:
        raise RecipeError(
            f"the Hub refused {final} ({first_line(e)}); push it with: python push.py --checkpoint {final}"
        ) from None
    log(f"hub: pushed {final} and its model card to {repo}")


def introduction(record: TrainingRecord, model, repo_id: str, hub_dataset: str | None, base_model: str | None) -> str:
    title = f"# {repo_id.split('/')[-1]}\n\n"
    kind = f"A `{architecture(model)}` model with {sum(p.numel() for p in model.parameters()):,} parameters"
    if not record.trained_here:
        return (
            f"{title}{kind}. No record of its training came with it (no run.json), so this card shows only what "
            "its `config.json` says."
        )
    if name := (record.recipe or {}).get("name"):
        shown = f"[{name}](https://huggingface.co/HuggingFaceTB/{name})" if name in PUBLISHED_SMOLLM2 else name
        kind += f" in the {shown} configuration"
    how = (
        f"continued from [{base_model}](https://huggingface.co/{base_model})"
        if base_model
        else ("continued from local weights" if (record.recipe or {}).get("init_from") else "trained from scratch")
    )
    line = f"{kind}, {how} with smollm2-recipe (Hugging Face `Trainer`)"
    if dataset := dataset_description(record, hub_dataset):
        line += f" on {dataset}" + (f" in blocks of {record.block_size:,} tokens" if record.block_size else "")
    step, phases = record.global_step, len(training_phases(record))
    line += f": {step:,} optimizer steps" + (f" in {phases} phases" if phases > 1 else "")
    tokens = trained_tokens(record)
    return f"{title}{line}" + (f", {tokens}." if tokens else ".")


def architecture(model) -> str:
    return (model.config.architectures or [type(model).__name__])[0]


def architecture_section(model, record: TrainingRecord, dtype) -> str:
    c = model.config
    context = f"| context length (trained) | {record.block_size:,} tokens |\n" if record.block_size else ""
    return f"""## Architecture

| | |
| --- | --- |
| architecture | `{architecture(model)}` |
| parameters | {sum(p.numel() for p in model.parameters()):,} |
| layers | {c.num_hidden_layers} |
| hidden size | {c.hidden_size} |
| attention heads / KV heads | {c.num_attention_heads} / {c.num_key_value_heads} |
| MLP size | {c.intermediate_size} |
| vocabulary | {c.vocab_size:,} |
{context}| max position embeddings (RoPE) | {c.max_position_embeddings:,} |
| tied embeddings | {c.tie_word_embeddings} |
| weights | {str(dtype).replace("torch.", "")} |"""


def phases_section(record: TrainingRecord, phases: list[Phase]) -> str:
    if not phases:
        return ""
    rows = [
        "| phase | steps | optimizer steps | schedule | learning rate | warmup steps |",
        "| --- | --- | --- | --- | --- | --- |",
    ]
    for p in phases:
        rows.append(
            f"| {p.name} | {p.first_step:,}–{p.last_step:,} | {p.last_step - p.first_step + 1:,} "
            f"| `{p.lr_scheduler_type}` | {plain(p.learning_rate)} | {plain(p.warmup_steps) if p.warmup_steps else ''} |"
        )
    notes = []
    end, planned = phases[-1], record.run.phases[len(phases) - 1].last_step
    if planned != end.last_step:
        notes.append(f"The {end.name} phase was planned to step {planned:,} and stopped at {end.last_step:,}.")
    if kwargs := [f"{p.name}: `{plain(p.lr_scheduler_kwargs)}`" for p in record.run.phases if p.lr_scheduler_kwargs]:
        notes.append(f"Schedule settings: {'; '.join(kwargs)}.")
    return "\n".join(["## Training phases", "", *rows, *(["", " ".join(notes)] if notes else [])])


def sources_section(record: TrainingRecord) -> str:
    """A mixture's sources as the run recorded them: names, weights, share of the training blocks, passes."""
    if not (sources := record.run.sources):
        return ""
    rows = [
        "| source | corpus | documents | tokens | weight | share of the training blocks | passes |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for s in sources:
        more = f" and {len(s['corpus']) - 3} more" if len(s["corpus"]) > 3 else ""
        names = ", ".join(f"`{n}`" for n in s["corpus"][:3]) + more
        counts = [f"{n:,}" if n is not None else "streamed" for n in (s["documents"], s["tokens"])]
        passes = format(s["passes"], ",.2f") if s["passes"] else ""
        rows.append(
            f"| {s['name']} | {names} | {' | '.join(counts)} | {plain(s['weight'])} | {s['share']:.1%} | {passes} |"
        )
    return "\n".join(["## Training data", "", "Blocks drawn from each source in proportion to its weight:", "", *rows])


def settings_section(record: TrainingRecord) -> str:
    if record.recipe is None:
        return ""
    rows = [f"| `{k}` | `{plain(record.training(k))}` |" for k in SETTING_KEYS if record.training(k) is not None]
    if record.block_size:
        rows.insert(2, f"| `data.block_size` | `{plain(record.block_size)}` |")
    return "\n".join(["## Settings", "", SETTINGS_NOTE, "", "| setting | value |", "| --- | --- |", *rows])


def last(history: list[dict], key: str, until_step: int | None) -> float | None:
    values = [h[key] for h in history if key in h and (until_step is None or h.get("step", 0) <= until_step)]
    return values[-1] if values else None


def results_section(record: TrainingRecord, has_curve: bool) -> str:
    history, step = record.history, record.global_step
    rows = []
    if (train_loss := last(history, "loss", step)) is not None:
        rows.append(f"| train loss (last logged) | {train_loss:.4f} |")
    if (eval_loss := last(history, "eval_loss", step)) is not None:
        rows.append(f"| validation loss | {eval_loss:.4f} |")
        rows.append(f"| validation perplexity | {math.exp(min(eval_loss, 50)):,.2f} |")
    if (throughput := last(history, "tokens_per_second", step)) is not None:
        rows.append(f"| training throughput (tokens/s, last logged) | {throughput:,.0f} |")
    if (mfu := last(history, "mfu", step)) is not None:
        rows.append(f"| MFU | {mfu:.1%} |")
    if not rows:
        return ""
    curve = ["", "![loss curve](loss_curve.png)"] if has_curve else []
    return "\n".join(["## Results", "", "| metric | value |", "| --- | --- |", *rows, *curve])


def read_samples(path: Path | None, step: int | None) -> list[dict]:
    """The samples of the newest step that the model's weights reached."""
    if path is None:
        return []
    try:
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    except (OSError, ValueError) as e:
        raise RecipeError(f"cannot read {path}: {first_line(e)}; fix or remove the file") from None
    rows = [r for r in rows if step is None or r["step"] <= step]
    newest = max((r["step"] for r in rows), default=None)
    return [r for r in rows if r["step"] == newest]


def examples_shown(entry: dict) -> str:
    limited = entry.get("limit") is not None and entry.get("examples_total")
    return f"{entry['examples']:,} of {entry['examples_total']:,}" if limited else f"{entry.get('examples') or ''}"


def evaluation_section(results: dict | None) -> str:
    """eval.py's results, as the model-index in the header says them, for a reader."""
    rows = [
        f"| {e['task']} | {m['name']} | {m['value']:.4g} | {examples_shown(e)} | {e.get('num_fewshot') or 0} |"
        for e in (results or {}).get("tasks", [])
        for m in e.get("metrics", [])
        if number(m.get("value")) is not None
    ]
    if not rows:
        return ""
    version = results["tasks"][0].get("lm_eval_version", "")
    intro = f"With [lm-evaluation-harness]({HARNESS_URL}) {version} (`python eval.py`)."
    head = ["| task | metric | value | examples | shots |", "| --- | --- | --- | --- | --- |"]
    return "\n".join(["## Evaluation", "", intro, "", *head, *rows])


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
