"""Evaluate a model with lm-evaluation-harness: a run, a `final/` or `checkpoint-N` folder, or a Hub id.

    python eval.py                                      # the newest model under runs/, the shipped offline task
    python eval.py runs/quickstart                      # a run folder: its final/ (else its newest checkpoint)
    python eval.py runs/smollm2-135M/checkpoint-5000 --limit 100
    python eval.py HuggingFaceTB/SmolLM2-135M --tasks hellaswag,arc_easy,piqa      # online

Without --tasks it runs `tinyshakespeare`, the recipe's own offline task (assets/eval/): perplexity and a
next-line choice on the last 4,000 lines of the shipped tiny Shakespeare, which a model trained on that corpus
has mostly seen (the validation split holds out random blocks, not this slice): a sanity check of the pipeline
and of what the model memorized, not a generalization benchmark (docs/evaluation.md). The context is the
model's trained block size (`data.block_size` of its recipe_config.yaml), not its max_position_embeddings.
It prints one line per task and metric and writes eval_results.json next to the model (a Hub model's under
runs/hub-evals/), which push.py turns into the model card's model-index. Needs: pip install -r requirements-eval.txt
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import logging
import os
import sys
from datetime import datetime, timezone
from pathlib import Path

from recipe import cli
from recipe.card import RESULTS_FORMAT, model_index_results, number, read_eval_results  # noqa: F401 - push.py's card reads them there
from recipe.cli import RecipeError, first_line, hub_is_reachable
from recipe.config import ROOT
from recipe.run_folder import (
    EVAL_RESULTS,
    RUNS_DIR,
    local_model,
    recorded_name_and_step,
    trained_block_size,
    write_atomically,
)

import torch
from huggingface_hub import snapshot_download
from transformers.utils import logging as transformers_logging

TASKS_DIR = ROOT / "assets" / "eval"  # the offline task's YAMLs; their data_files are relative to ROOT
OFFLINE_TASKS = {"tinyshakespeare", "tinyshakespeare_perplexity", "tinyshakespeare_nextline"}
DEFAULT_TASKS = "tinyshakespeare"
ONLINE_TASKS = "hellaswag,arc_easy,piqa,openbookqa,sciq,lambada_openai"  # tell 135M models apart
HUB_RESULTS_DIR = RUNS_DIR / "hub-evals"
CPU_BATCH_SIZE = 8
INSTALL_HINT = "pip install -r requirements-eval.txt"


# --- which model, and what it was trained for ---------------------------------------------------------------


def resolve_model(model: str | None) -> tuple[str, Path | None, str | None]:
    """(what lm-eval loads, the local folder, the Hub id): a local model, run or the newest one, else a Hub id;
    offline, a Hub id is its cached snapshot, or one line."""
    if (folder := local_model(model)) is not None:
        return str(folder), folder, None
    if hub_is_reachable():
        return model, None, model
    try:
        return str(Path(snapshot_download(model, local_files_only=True))), None, model
    except Exception:
        raise RecipeError(
            f"the Hugging Face Hub cannot be reached and '{model}' is not in the local cache; pass "
            "a local model folder, or run this online once"
        ) from None


# --- evaluating ----------------------------------------------------------------------------------------------


def harness():
    """lm-eval's version and the three pieces eval.py uses, or one line saying how to install it."""
    try:
        import lm_eval  # noqa: PLC0415 - optional (requirements-eval.txt): its absence is one line
        from lm_eval.evaluator import simple_evaluate  # noqa: PLC0415
        from lm_eval.models.huggingface import HFLM  # noqa: PLC0415
        from lm_eval.tasks import TaskManager  # noqa: PLC0415
    except ImportError as e:  # lm_eval itself missing, or a package it needs
        problem = "is not installed" if e.name == "lm_eval" else f"could not be imported ({first_line(e)})"
        raise RecipeError(f"lm-eval {problem}: {INSTALL_HINT}") from None
    return lm_eval.__version__, simple_evaluate, HFLM, TaskManager


def check_task_names(names: list[str], known: list[str]) -> None:
    for name in names:
        if name not in known:
            close = difflib.get_close_matches(name, known, n=3)
            hint = (
                f"did you mean {' or '.join(map(repr, close))}?" if close else f"e.g. {DEFAULT_TASKS} or {ONLINE_TASKS}"
            )
            raise RecipeError(f"unknown task '{name}' for --tasks: {hint} (all names: lm-eval ls tasks)")


@contextlib.contextmanager
def in_folder(path: Path):
    before = Path.cwd()
    os.chdir(path)  # the shipped task's data_files are relative to the repository root
    try:
        yield
    finally:
        os.chdir(before)


def evaluate(args, pretrained: str, folder: Path | None, hub_id: str | None) -> list[dict]:
    """Run lm-eval on the model; the results as eval_results.json's task entries."""
    names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    if not names:
        raise RecipeError(f"--tasks '{args.tasks}' names no task; pass e.g. --tasks {DEFAULT_TASKS}")
    if (hub_id or set(names) - OFFLINE_TASKS) and not hub_is_reachable():
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"  # cached data only, no retries
    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RecipeError(f"--device {device} asks for CUDA, but no CUDA GPU is available; use --device cpu")
    batch_size = args.batch_size or ("auto" if device.startswith("cuda") else str(CPU_BATCH_SIZE))
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    max_length, why = (args.max_length, "--max-length") if args.max_length else trained_block_size(folder)
    version, simple_evaluate, HFLM, TaskManager = harness()
    transformers_logging.set_verbosity_error()  # stdout holds the result lines
    transformers_logging.disable_progress_bar()
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    task_manager = TaskManager(include_path=str(TASKS_DIR))
    check_task_names(names, task_manager.all_tasks)
    try:
        lm = HFLM(pretrained=pretrained, max_length=max_length, device=device, dtype=dtype, batch_size=batch_size)
    except Exception as e:
        raise RecipeError(f"could not load a model from '{hub_id or folder}': {first_line(e)}") from None
    why += "" if max_length else ", so max_position_embeddings of its config.json; --max-length sets it"
    print(f"model: {hub_id or folder} | max_length {lm.max_length:,} ({why}) | {device}, batch size {batch_size}")
    try:
        with in_folder(ROOT):
            loaded = task_manager.load(names)
    except Exception as e:
        raise RecipeError(f"could not load the data of --tasks {','.join(names)}: {first_line(e)}") from None
    children = {child for kids in loaded.get("group_map", {}).values() for child in kids}
    tasks = [item for name, item in {**loaded.get("groups", {}), **loaded["tasks"]}.items() if name not in children]
    output = simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=task_manager,
        num_fewshot=args.num_fewshot,
        limit=args.limit,
        log_samples=False,
    )
    record = {
        "lm_eval_version": version,
        "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "limit": args.limit,
        "max_length": lm.max_length,
        "device": device,
        "dtype": dtype,
        "batch_size": str(batch_size),
    }
    return task_results(output, record)


# --- results ---------------------------------------------------------------------------------------------------


def task_results(output: dict, record: dict) -> list[dict]:
    """lm-eval's output -> one entry per task (and group) of eval_results.json (docs/evaluation.md)."""
    entries, samples = [], output.get("n-samples", {})
    subtasks, configs = output.get("group_subtasks", {}), output.get("configs", {})
    for task, values in output["results"].items():
        config, counted = configs.get(task, {}), [samples[t] for t in subtasks.get(task, [task]) if t in samples]
        metadata = config.get("metadata") or {}
        metrics = [
            {
                "name": metric if filtered == "none" else f"{metric} ({filtered})",
                "value": number(value),
                "stderr": number(values.get(f"{metric}_stderr,{filtered}")),
                "higher_is_better": output.get("higher_is_better", {}).get(task, {}).get(metric),
            }
            for key, value in values.items()
            for metric, _, filtered in [key.partition(",")]
            if filtered and "_stderr" not in metric and number(value) is not None
        ]
        types = {
            (configs.get(t, {}).get("metadata") or {}).get("dataset_type") or configs.get(t, {}).get("dataset_path")
            for t in subtasks.get(task, [task])
        }
        dataset = {
            "type": types.pop() if len(types) == 1 else task,
            "name": metadata.get("dataset_name") or task,
            "config": metadata.get("dataset_config") or config.get("dataset_name"),
            "split": config.get("test_split") or config.get("validation_split"),
        }
        entries.append(
            {
                "task": task,
                "task_version": output.get("versions", {}).get(task),
                "dataset": dataset,
                "num_fewshot": output.get("n-shot", {}).get(task),
                "examples": sum(s["effective"] for s in counted) if counted else None,
                "examples_total": sum(s["original"] for s in counted) if counted else None,
                "metrics": metrics,
                **record,
            }
        )
    return entries


def merge_results(earlier: dict | None, new: dict) -> tuple[dict, list[str]]:
    """The new tasks' results replace the same tasks' earlier ones; other earlier tasks are kept."""
    done = {entry["task"] for entry in new["tasks"]}
    kept = [entry for entry in (earlier or {}).get("tasks", []) if entry.get("task") not in done]
    return {"format": RESULTS_FORMAT, "model": new["model"], "tasks": [*kept, *new["tasks"]]}, [e["task"] for e in kept]


def show(value: float) -> str:
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}"


def result_lines(tasks: list[dict]) -> list[str]:
    lines = []
    for entry in tasks:
        examples = f"{entry['examples']:,} examples" if entry["examples"] is not None else "a group"
        if entry["limit"] is not None and entry["examples"] != entry["examples_total"]:
            examples += f" of {entry['examples_total']:,}"
        for metric in entry["metrics"]:
            stderr = f" ± {show(metric['stderr'])}" if metric["stderr"] is not None else ""
            lines.append(f"{entry['task']} | {metric['name']} {show(metric['value'])}{stderr} | {examples}")
    return lines


# --- command line ----------------------------------------------------------------------------------------------


def limit_value(text: str) -> int | float:
    value = float(text) if text.replace(".", "", 1).isdigit() else -1.0
    if not value > 0 or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"must be a whole number of examples or a share in (0, 1) (got {text!r})")
    return int(value) if value >= 1 else value


def at_least(low: int, auto: bool = False):
    def check(text: str):
        if (auto and (text == "auto" or text.startswith("auto:"))) or (text.isdigit() and int(text) >= low):
            return text if auto else int(text)
        raise argparse.ArgumentTypeError(
            f"must be a whole number of at least {low}{' or auto' if auto else ''} (got {text!r})"
        )

    return check


def parse_args(argv: list[str] | None = None):
    parser = cli.parser("eval.py", __doc__)
    parser.add_argument(
        "model",
        nargs="?",
        help=f"a final/ or checkpoint-N folder, a run folder, or a Hub id (default: the newest model in {RUNS_DIR}/)",
    )
    parser.add_argument(
        "--tasks",
        default=DEFAULT_TASKS,
        help=(
            f"comma-separated lm-eval task, group or tag names (default: {DEFAULT_TASKS}, offline). Online, these tell "
            f"135M models apart: {ONLINE_TASKS}, wikitext (perplexity); arc_challenge, winogrande and mmlu stay near "
            "chance at this size, gsm8k near 0. All names: lm-eval ls tasks"
        ),
    )
    parser.add_argument("--limit", type=limit_value, help="at most this many examples per task (or a share below 1)")
    parser.add_argument("--num-fewshot", type=at_least(0), help="examples in each prompt (default: each task's own)")
    parser.add_argument(
        "--batch-size",
        type=at_least(1, auto=True),
        help=f"auto (the default on CUDA) or a number (default on CPU: {CPU_BATCH_SIZE})",
    )
    parser.add_argument("--device", help="cuda when there is a GPU, else cpu (default); or cuda:1, ...")
    parser.add_argument("--max-length", type=at_least(1), help="context in tokens (default: the trained block size)")
    parser.add_argument("--output", help=f"where to write the results (default: {EVAL_RESULTS} next to the model)")
    return parser.parse(argv)


@cli.command("stopped; no results written")
def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    harness()  # first: without lm-eval nothing else is worth checking
    pretrained, folder, hub_id = resolve_model(args.model)
    beside = HUB_RESULTS_DIR / hub_id.replace("/", "--") if hub_id else folder  # a Hub model's, under runs/
    path = Path(args.output) if args.output else beside / EVAL_RESULTS
    tasks = evaluate(args, pretrained, folder, hub_id)
    name, step = recorded_name_and_step(folder) if folder else (None, None)
    model = {"source": hub_id or str(folder), "name": name, "step": step}
    print("\n".join(result_lines(tasks)))
    merged, kept = merge_results(read_eval_results(path), {"format": RESULTS_FORMAT, "model": model, "tasks": tasks})
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomically(path, json.dumps(merged, indent=2) + "\n")
    except OSError as e:
        raise RecipeError(f"could not write the results to {path}: {first_line(e)}; pass --output PATH") from None
    print(f"wrote {path}" + (f"; kept the earlier results of {', '.join(kept)}" if kept else ""))
    return 0


if __name__ == "__main__":
    sys.exit(main())
