"""Evaluate a model with lm-evaluation-harness: a run, a `final/` or `checkpoint-N` folder, or a Hub id.

    python eval.py                                      # the newest model under runs/, the shipped offline task
    python eval.py runs/quickstart                      # a run folder: its final/ (else its newest checkpoint)
    python eval.py runs/smollm2-135M/checkpoint-5000 --limit 100
    python eval.py HuggingFaceTB/SmolLM2-135M --tasks hellaswag,arc_easy,piqa      # online

Without --tasks it runs `tinyshakespeare`, the recipe's own offline task (assets/eval/): perplexity and a
next-line choice on the last 4,000 lines of the shipped tiny Shakespeare. A model trained on that corpus
(the default) has seen most of those lines: the validation split holds out random blocks, not this slice.
So it is a sanity check of the pipeline and of what the model memorized, not a generalization benchmark
(docs/evaluation.md). The context is the model's trained block size
(`data.block_size` of its recipe_config.yaml), not its max_position_embeddings.

It prints one line per task and metric and writes eval_results.json next to the model (a Hub model's
under runs/hub-evals/); `model_index_results` turns that file into the model card's model-index.
Needs lm-eval: pip install -r requirements-eval.txt
"""

from __future__ import annotations

import argparse
import contextlib
import difflib
import json
import math
import os
import sys
import tempfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent
TASKS_DIR = ROOT / "assets" / "eval"  # the offline task's YAMLs; their data_files are relative to ROOT
OFFLINE_TASKS = {"tinyshakespeare", "tinyshakespeare_perplexity", "tinyshakespeare_nextline"}
DEFAULT_TASKS = "tinyshakespeare"
ONLINE_TASKS = "hellaswag,arc_easy,piqa,openbookqa,sciq,lambada_openai"  # tell 135M models apart
RUNS_DIR = Path("runs")  # the parent of the YAML's training.output_dir
HUB_RESULTS_DIR = RUNS_DIR / "hub-evals"  # where a Hub model's eval_results.json goes
RESULTS_FILE = "eval_results.json"
RESULTS_FORMAT = 1
CPU_BATCH_SIZE = 8
INSTALL_HINT = "pip install -r requirements-eval.txt"
HARNESS_URL = "https://github.com/EleutherAI/lm-evaluation-harness"
WEIGHT_FILES = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")


class EvalError(Exception):
    """A mistake the user can fix; the message says what and how, in one line."""


# --- finding the model ---------------------------------------------------------------------------
# TODO(merge): has_weights, is_complete_model, saved_at, find_newest_model and looks_local are copies of
# generate.py's (the run folder's owner should hold them: checkpoints.py or the module that owns runs/);
# newest_checkpoint is checkpoints.find_latest_checkpoint restricted to complete model folders.


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
        raise EvalError(
            f"no model given and none found in {runs_dir}/*/final or {runs_dir}/*/checkpoint-N "
            f"(under {Path.cwd()}); pass a model folder or a Hub id, or train one first with train.py"
        )
    return max(complete, key=saved_at)


def checkpoint_step(folder: Path) -> int | None:
    name = folder.name
    return int(name.split("-", 1)[1]) if name.startswith("checkpoint-") and name[11:].isdigit() else None


def newest_checkpoint(run: Path) -> Path | None:
    complete = [f for f in run.glob("checkpoint-*") if checkpoint_step(f) is not None and is_complete_model(f)]
    return max(complete, key=checkpoint_step, default=None)


def looks_local(source: str) -> bool:
    """A Hub id is user/name; anything else, or a path whose first folder exists here, is meant as a folder."""
    parts = Path(source).parts
    return source.startswith((".", "/", "~")) or len(parts) != 2 or Path(parts[0]).is_dir()


def check_model_folder(folder: Path) -> None:
    """Say in one line what a local folder lacks, before lm-eval fails on it with a traceback."""
    if not has_weights(folder):
        raise EvalError(f"no weights in {folder} (no *.safetensors); pass a final/ or a complete checkpoint-N folder")
    if not any((folder / name).is_file() for name in TOKENIZER_FILES):
        raise EvalError(f"no tokenizer in {folder} (no tokenizer.json); copy it there from the run's final/")


def local_model(path: Path) -> Path:
    """A model folder as it is, or a run folder's final/ (else its newest complete checkpoint)."""
    if not path.is_dir():
        raise EvalError(f"no model in {path} (a file, not a folder); pass a final/ or checkpoint-N folder")
    final = path / "final"
    if (path / "config.json").is_file():
        model = path
    elif is_complete_model(final):
        model = final
    else:
        model = newest_checkpoint(path)
    if model is None and (final / "config.json").is_file():
        model = final  # incomplete: check_model_folder says what it lacks
    if model is None:
        raise EvalError(
            f"no model in {path} (no config.json, and no final/ or complete checkpoint-N inside); "
            "pass a final/ or checkpoint-N folder, a run folder, or a Hub id"
        )
    check_model_folder(model)
    return model


@dataclass
class ModelSource:
    pretrained: str  # what lm-eval loads: a local folder, or a Hub id when online
    shown: str  # how the console and eval_results.json name it
    folder: Path | None  # the local folder (a Hub model's cached snapshot when offline)
    hub_id: str | None


def resolve_model(model: str | None) -> ModelSource:
    if model is None:
        folder = find_newest_model()
        print(f"using the newest model under {RUNS_DIR}/: {folder}", file=sys.stderr)
        return ModelSource(str(folder), str(folder), folder, None)
    path = Path(model).expanduser()
    if path.exists():
        folder = local_model(path)
        return ModelSource(str(folder), str(folder), folder, None)
    if looks_local(model):
        raise EvalError(f"no model at '{model}' (no such folder); pass a final/ or checkpoint-N folder, or a Hub id")
    if hub_is_reachable():
        return ModelSource(model, model, None, model)
    snapshot = cached_hub_model(model)
    return ModelSource(str(snapshot), model, snapshot, model)


# TODO(merge): a copy of config.hub_is_reachable (config.py owns it).
def hub_is_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub's host answers a name lookup in a few seconds. Offline, huggingface_hub
    would retry for about a minute before failing; eval.py asks for local files only instead."""
    import socket
    import threading
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"  # HF_ENDPOINT, if set
    answer: list[bool] = []

    def lookup():
        try:
            socket.getaddrinfo(host, 443)
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def cached_hub_model(repo_id: str) -> Path:
    """A Hub model from the local cache only: the Hub cannot be reached."""
    from huggingface_hub import snapshot_download

    try:
        return Path(snapshot_download(repo_id, local_files_only=True))
    except Exception:
        raise EvalError(
            f"the Hugging Face Hub cannot be reached and '{repo_id}' is not in the local cache; "
            "pass a local model folder, or run this online once"
        ) from None


# --- what the model was trained for --------------------------------------------------------------


def run_file(folder: Path | None, name: str) -> Path | None:
    """A file of the model folder, else of the run folder above it (final/ and checkpoint-N have copies)."""
    for where in (folder, folder.parent) if folder else ():
        if (where / name).is_file():
            return where / name
    return None


def read_yaml(path: Path | None) -> dict:
    try:
        data = yaml.safe_load(path.read_text()) if path else {}
    except (OSError, yaml.YAMLError):
        return {}
    return data if isinstance(data, dict) else {}


def read_json(path: Path | None) -> dict:
    try:
        data = json.loads(path.read_text()) if path else {}
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def trained_block_size(folder: Path | None) -> tuple[int | None, str]:
    """The block size the model was trained on, and where it was read (or why it could not be)."""
    config_file = run_file(folder, "recipe_config.yaml")
    block_size = (read_yaml(config_file).get("data") or {}).get("block_size")
    if isinstance(block_size, int) and block_size > 0:
        return block_size, f"data.block_size of {config_file}"
    if config_file:
        return None, f"no data.block_size in {config_file}"
    return None, "no recipe_config.yaml beside the model"


def model_name_and_step(folder: Path | None) -> tuple[str | None, int | None]:
    name = read_yaml(run_file(folder, "recipe_config.yaml")).get("name")
    step = read_json(run_file(folder, "trainer_state.json")).get("global_step")
    return (str(name) if name else None), (int(step) if isinstance(step, (int, float)) else None)


# --- evaluating ----------------------------------------------------------------------------------


def harness_version() -> str:
    """lm-eval's version, or one line saying how to install it. Only the light top-level package here."""
    try:
        import lm_eval
    except ImportError:
        raise EvalError(f"lm-eval is not installed: {INSTALL_HINT}") from None
    return lm_eval.__version__


def import_harness():
    try:
        from lm_eval.evaluator import simple_evaluate
        from lm_eval.models.huggingface import HFLM
        from lm_eval.tasks import TaskManager
    except ImportError as e:
        raise EvalError(f"lm-eval could not be imported ({first_line(e)}): {INSTALL_HINT}") from None
    return simple_evaluate, HFLM, TaskManager


def check_task_names(names: list[str], known: list[str]) -> None:
    unknown = [name for name in names if name not in known]
    if not unknown:
        return
    name = unknown[0]
    close = difflib.get_close_matches(name, known, n=3)
    hint = (
        f"did you mean {' or '.join(repr(c) for c in close)}?" if close else f"e.g. {DEFAULT_TASKS} or {ONLINE_TASKS}"
    )
    raise EvalError(f"unknown task '{name}' for --tasks: {hint} (all names: lm-eval ls tasks)")


def load_tasks(task_manager, names: list[str]) -> list:
    """Build the tasks and groups, data included (the shipped task's data_files are relative to the
    repository root); the top-level ones, for simple_evaluate to report groups too."""
    try:
        with working_directory(ROOT):
            loaded = task_manager.load(names)
    except Exception as e:
        offline = (
            " (the Hub cannot be reached: only tasks whose data is in the local cache run)" if offline_mode() else ""
        )
        raise EvalError(f"could not load the data of --tasks {','.join(names)}: {first_line(e)}{offline}") from None
    children = {child for kids in loaded.get("group_map", {}).values() for child in kids}
    items = {**loaded.get("groups", {}), **loaded["tasks"]}
    return [item for name, item in items.items() if name not in children]


@contextlib.contextmanager
def working_directory(path: Path):
    before = Path.cwd()
    os.chdir(path)
    try:
        yield
    finally:
        os.chdir(before)


def offline_mode() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").upper() in ("1", "ON", "YES", "TRUE")


def first_line(e: BaseException) -> str:
    return (str(e).strip().splitlines() or [type(e).__name__])[0].rstrip(":. ")


def pick_device(name: str | None) -> str:
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise EvalError(f"--device {name} asks for CUDA, but no CUDA GPU is available; use --device cpu")
    return name


def evaluate(args: argparse.Namespace, source: ModelSource, version: str) -> list[dict]:
    """Run lm-eval on the model; the results as eval_results.json's task entries."""
    names = [name.strip() for name in args.tasks.split(",") if name.strip()]
    if not names:
        raise EvalError("--tasks names no task; pass e.g. --tasks tinyshakespeare")
    needs_hub = source.hub_id is not None or bool(set(names) - OFFLINE_TASKS)
    if needs_hub and not offline_mode() and not hub_is_reachable():
        # before datasets is imported: cached model and task data only, not a minute of retries
        os.environ["HF_HUB_OFFLINE"] = os.environ["HF_DATASETS_OFFLINE"] = "1"
    device = pick_device(args.device)
    batch_size = args.batch_size or ("auto" if device.startswith("cuda") else str(CPU_BATCH_SIZE))
    dtype = "bfloat16" if device.startswith("cuda") else "float32"
    if args.max_length:
        max_length, max_length_from = args.max_length, "--max-length"
    else:
        max_length, max_length_from = trained_block_size(source.folder if source.hub_id is None else None)

    simple_evaluate, HFLM, TaskManager = import_harness()
    quiet_libraries()
    task_manager = TaskManager(include_path=str(TASKS_DIR))
    check_task_names(names, task_manager.all_tasks)
    try:
        lm = HFLM(
            pretrained=source.pretrained, max_length=max_length, device=device, dtype=dtype, batch_size=batch_size
        )
    except Exception as e:
        hint = "check the folder's files" if source.hub_id is None else "check the id, or pass a local folder"
        raise EvalError(f"could not load a model from '{source.shown}': {first_line(e)}; {hint}") from None
    if max_length is None:
        max_length_from += ", so max_position_embeddings of its config.json; --max-length sets it"
    print(
        f"model: {source.shown} | max_length {lm.max_length:,} ({max_length_from}) | {device}, batch size {batch_size}"
    )

    tasks = load_tasks(task_manager, names)
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


def quiet_libraries() -> None:
    """stdout holds the result lines; lm-eval's and transformers' info logs and bars would bury them."""
    import logging

    from transformers.utils import logging as transformers_logging

    transformers_logging.set_verbosity_error()
    transformers_logging.disable_progress_bar()
    logging.getLogger("lm_eval").setLevel(logging.WARNING)
    with contextlib.suppress(ImportError):
        import datasets

        datasets.disable_progress_bars()
        datasets.logging.set_verbosity_error()


# --- results -------------------------------------------------------------------------------------


def number(value) -> float | None:
    """A metric value or stderr as a float; lm-eval writes "N/A" where it has none."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(value)


def dataset_type(config: dict) -> str | None:
    """The Hub dataset id of a task; the shipped task names its local data in its metadata."""
    return (config.get("metadata") or {}).get("dataset_type") or config.get("dataset_path")


def task_results(output: dict, record: dict) -> list[dict]:
    """lm-eval's output → one entry per task (and group) of the eval_results.json schema."""
    entries = []
    samples = output.get("n-samples", {})
    subtasks = output.get("group_subtasks", {})
    for task, values in output["results"].items():
        config = output.get("configs", {}).get(task, {})
        metadata = config.get("metadata") or {}
        counted = [samples[t] for t in subtasks.get(task, [task]) if t in samples]
        metrics = []
        for key, value in values.items():
            metric, _, filter_name = key.partition(",")
            if not filter_name or "_stderr" in metric or number(value) is None:
                continue
            metrics.append(
                {
                    "name": metric if filter_name == "none" else f"{metric} ({filter_name})",
                    "value": number(value),
                    "stderr": number(values.get(f"{metric}_stderr,{filter_name}")),
                    "higher_is_better": output.get("higher_is_better", {}).get(task, {}).get(metric),
                }
            )
        types = {dataset_type(output.get("configs", {}).get(t, {})) for t in subtasks.get(task, [task])}
        shared_type = types.pop() if len(types) == 1 else None  # a group's, when its tasks share one dataset
        entries.append(
            {
                "task": task,
                "task_version": output.get("versions", {}).get(task),
                "dataset": {
                    "type": shared_type or task,
                    "name": metadata.get("dataset_name") or task,
                    "config": metadata.get("dataset_config") or config.get("dataset_name"),
                    "split": config.get("test_split") or config.get("validation_split"),
                },
                "num_fewshot": output.get("n-shot", {}).get(task),
                "examples": sum(s["effective"] for s in counted) if counted else None,
                "examples_total": sum(s["original"] for s in counted) if counted else None,
                "metrics": metrics,
                **record,
            }
        )
    return entries


def results_path(source: ModelSource, output: str | None) -> Path:
    if output:
        return Path(output)
    if source.hub_id is None:
        return source.folder / RESULTS_FILE
    return HUB_RESULTS_DIR / source.hub_id.replace("/", "--") / RESULTS_FILE


def read_eval_results(path: Path) -> dict | None:
    """eval_results.json, or None when it is missing or not in this format. push.py reads it for the card."""
    data = read_json(path if path.suffix == ".json" else path / RESULTS_FILE)
    if data.get("format") != RESULTS_FORMAT or not isinstance(data.get("tasks"), list):
        return None
    return data


def merge_results(earlier: dict | None, new: dict) -> tuple[dict, list[str]]:
    """The new tasks' results replace the same tasks' earlier ones; other earlier tasks are kept."""
    done = {entry["task"] for entry in new["tasks"]}
    kept = [entry for entry in (earlier or {}).get("tasks", []) if entry.get("task") not in done]
    merged = {"format": RESULTS_FORMAT, "model": new["model"], "tasks": [*kept, *new["tasks"]]}
    return merged, [entry["task"] for entry in kept]


def write_json_atomically(path: Path, data: dict) -> None:
    """A temporary file renamed into place. The folder keeps its modification time: that is when a final/
    was saved, which decides the newest model (saved_at), and results beside a model must not change it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    folder = path.parent.stat()
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    finally:
        with contextlib.suppress(OSError):
            os.utime(path.parent, ns=(folder.st_atime_ns, folder.st_mtime_ns))


def show(value: float) -> str:
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.1f}" if abs(value) >= 100 else f"{value:.3f}"


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


# --- the model card ------------------------------------------------------------------------------


def model_index_results(results: dict) -> list:
    """eval_results.json (as read by read_eval_results) → huggingface_hub EvalResult objects, for
    ModelCardData(eval_results=..., model_name=...): one per task and metric."""
    from huggingface_hub import EvalResult

    out = []
    for entry in results.get("tasks", []):
        dataset = entry.get("dataset") or {}
        notes = []
        if entry.get("num_fewshot"):
            notes.append(f"{entry['num_fewshot']}-shot")
        if entry.get("limit") is not None and entry.get("examples") != entry.get("examples_total"):
            notes.append(f"first {entry['examples']:,} of {entry['examples_total']:,} examples")
        for metric in entry.get("metrics", []):
            if number(metric.get("value")) is None:
                continue
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


# --- command line --------------------------------------------------------------------------------


class OneLineArgumentParser(argparse.ArgumentParser):
    """argparse's errors as one `error:` line (no usage block), exit code 2."""

    def error(self, message: str):
        self.exit(2, f"error: {message}; see python {self.prog} --help\n")


def limit_value(text: str) -> int | float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number of examples or a share below 1 (got {text!r})") from None
    if not (value > 0 and math.isfinite(value)) or (value >= 1 and not value.is_integer()):
        raise argparse.ArgumentTypeError(f"must be a whole number of examples or a share in (0, 1) (got {text!r})")
    return int(value) if value >= 1 else value


def positive_int(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"must be a whole number of at least 1 (got {text!r})")
    return int(text)


def batch_size_value(text: str) -> str:
    if text == "auto" or text.startswith("auto:") or (text.isdigit() and int(text) >= 1):
        return text
    raise argparse.ArgumentTypeError(f"must be a whole number or auto (got {text!r})")


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = OneLineArgumentParser(
        prog="eval.py", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "model",
        nargs="?",
        help=f"a final/ or checkpoint-N folder, a run folder, or a Hub id (default: the newest model in {RUNS_DIR}/)",
    )
    parser.add_argument(
        "--tasks",
        default=DEFAULT_TASKS,
        help=f"comma-separated lm-eval task, group or tag names (default: {DEFAULT_TASKS}, offline). Online, "
        f"these tell 135M models apart: {ONLINE_TASKS}, wikitext (perplexity); arc_challenge, winogrande and "
        "mmlu stay near chance at this size, gsm8k near 0. All names: lm-eval ls tasks",
    )
    parser.add_argument("--limit", type=limit_value, help="at most this many examples per task (or a share below 1)")
    parser.add_argument("--num-fewshot", type=int, help="examples in each prompt (default: each task's own)")
    parser.add_argument(
        "--batch-size",
        type=batch_size_value,
        help=f"auto (the default on CUDA) or a number (default on CPU: {CPU_BATCH_SIZE})",
    )
    parser.add_argument("--device", help="cuda when there is a GPU, else cpu (default); or cuda:1, ...")
    parser.add_argument(
        "--max-length",
        type=positive_int,
        help="context in tokens (default: data.block_size of the model's recipe_config.yaml)",
    )
    parser.add_argument("--output", help=f"where to write the results (default: {RESULTS_FILE} next to the model)")
    args = parser.parse_args(argv)
    if args.num_fewshot is not None and args.num_fewshot < 0:
        parser.error(f"argument --num-fewshot: must be 0 or more (got {args.num_fewshot})")
    return args


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    try:
        version = harness_version()  # first: without lm-eval nothing else is worth checking
        source = resolve_model(args.model)
        path = results_path(source, args.output)
        tasks = evaluate(args, source, version)
        name, step = model_name_and_step(source.folder if source.hub_id is None else None)
        results = {
            "format": RESULTS_FORMAT,
            "model": {"source": source.shown, "name": name, "step": step},
            "tasks": tasks,
        }
    except EvalError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: no results written", file=sys.stderr)
        return 130
    for line in result_lines(tasks):
        print(line)
    merged, kept = merge_results(read_eval_results(path), results)
    try:
        write_json_atomically(path, merged)
    except OSError as e:
        print(f"error: could not write {path}: {first_line(e)}; pass --output PATH", file=sys.stderr)
        return 2
    earlier = f"; kept the earlier results of {', '.join(kept)}" if kept else ""
    print(f"wrote {path}{earlier}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
