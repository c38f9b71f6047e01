"""Checkpoints and resume: which checkpoint is complete, what `--resume` will do, what changed since the
checkpoint, the lock that keeps two runs out of one folder, and folders written atomically.

The Trainer writes a checkpoint's `trainer_state.json` last, so a checkpoint with a readable one (and
weights) is complete. Next to it the recipe keeps `recipe_config.yaml` (the resolved config) and
`training_phases.json` (the main run and each extra phase), and inside it, through an `ExportableState`
callback, the number of samples trained on and fingerprints of the tokenizer and the corpus.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import yaml
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from config import RecipeConfig, RecipeError, log

RECIPE_CONFIG_NAME = "recipe_config.yaml"
PHASES_NAME = "training_phases.json"
LOCK_NAME = ".run.lock"
RUN_RECORD = "RunRecordCallback"  # the stateful callback's name in trainer_state.json


# --- reading what a run wrote --------------------------------------------------------------------


def read_trainer_state(folder: str | Path) -> dict | None:
    """trainer_state.json of a checkpoint (or of a run folder), or None if it is missing or unreadable."""
    try:
        state = json.loads((Path(folder) / "trainer_state.json").read_text())
        int(state["global_step"])
        return state
    except (OSError, ValueError, KeyError, TypeError):
        return None


def run_record(state: dict | None) -> dict:
    """What RunRecordCallback stored in a trainer state: samples trained on, fingerprints."""
    try:
        return dict(state["stateful_callbacks"][RUN_RECORD]["attributes"])
    except (TypeError, KeyError):
        return {}


def read_phases(folder: str | Path) -> list[dict]:
    try:
        return list(json.loads((Path(folder) / PHASES_NAME).read_text())["phases"])
    except (OSError, ValueError, KeyError, TypeError):
        return []


def checkpoint_step(path: Path) -> int | None:
    """The global step of a complete checkpoint, or None if it is incomplete or unreadable."""
    state = read_trainer_state(path)
    if state is None:
        return None
    has_weights = any(p.name.startswith(("model", "pytorch_model")) for p in path.iterdir())
    return int(state["global_step"]) if has_weights else None


def find_latest_checkpoint(output_dir: str | Path) -> tuple[Path | None, list[Path]]:
    """(newest complete checkpoint, incomplete ones that were newer and skipped). transformers'
    `get_last_checkpoint` returns the newest by number whether or not it was fully written."""
    root = Path(output_dir)
    if not root.is_dir():
        return None, []
    candidates = [p for p in root.glob(f"{PREFIX_CHECKPOINT_DIR}-*") if p.is_dir() and p.name.split("-")[-1].isdigit()]
    skipped = []
    for path in sorted(candidates, key=lambda p: int(p.name.split("-")[-1]), reverse=True):
        if checkpoint_step(path) is not None:
            return path, skipped
        skipped.append(path)
    return None, skipped


def remove_incomplete_checkpoint(output_dir: str | Path, step: int) -> Path | None:
    """After a failed save: remove checkpoint-`step` if it was left half-written."""
    path = Path(output_dir) / f"{PREFIX_CHECKPOINT_DIR}-{step}"
    if path.is_dir() and checkpoint_step(path) is None:
        shutil.rmtree(path, ignore_errors=True)
        return path
    return None


def verify_checkpoint(path: Path, expected_state_dict: dict) -> None:
    """Fail with one line, before anything is written, if the checkpoint cannot be resumed."""
    from safetensors import safe_open

    from model import check_shapes

    weights = path / "model.safetensors"
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt") as f:
                found = {name: _Shape(f.get_slice(name).get_shape()) for name in f.keys()}
        except Exception:
            raise RecipeError(f"checkpoint file {weights} is corrupt; resume from an earlier checkpoint") from None
        check_shapes(expected_state_dict, found, f"checkpoint {path.name}")
    for name in ("optimizer.pt", "scheduler.pt"):
        file = path / name
        if file.is_file():
            try:
                with zipfile.ZipFile(file) as archive:
                    bad = archive.testzip()
            except (zipfile.BadZipFile, OSError):
                bad = name
            if bad is not None:
                raise RecipeError(f"checkpoint file {file} is corrupt; resume from an earlier checkpoint")


@dataclass
class _Shape:
    shape: list[int]


# --- the resume plan -----------------------------------------------------------------------------


@dataclass
class ResumePlan:
    checkpoint: Path
    step: int
    max_steps: int
    constant_lr: float | None  # set for the extra phase
    samples_seen: int | None = None  # None: an older checkpoint that did not record it
    record: dict = field(default_factory=dict)

    @property
    def extra_phase(self) -> bool:
        return self.constant_lr is not None

    def describe(self) -> str:
        if self.extra_phase:
            return (
                f"resuming from {self.checkpoint.name} (step {self.step}) for {self.max_steps - self.step} steps "
                f"at lr {self.constant_lr:g}"
            )
        return (
            f"resuming from {self.checkpoint.name} (step {self.step}): continuing the interrupted run "
            f"to step {self.max_steps} with its original schedule"
        )


def plan_resume(cfg: RecipeConfig, resume: str) -> ResumePlan:
    output_dir = cfg.training["output_dir"]
    if resume == "latest":
        checkpoint, skipped = find_latest_checkpoint(output_dir)
        for path in skipped:
            log(f"resume: skipping incomplete checkpoint {path}")
        if checkpoint is None:
            raise RecipeError(f"--resume: no complete checkpoint in {output_dir}; train first, or pass --resume PATH")
    else:
        checkpoint = Path(resume)
        if not checkpoint.is_dir():
            raise RecipeError(f"--resume: checkpoint folder not found: {resume}")
    step = checkpoint_step(checkpoint)
    if step is None:
        raise RecipeError(f"--resume: {checkpoint} is incomplete (no readable trainer_state.json or weights)")
    record = run_record(read_trainer_state(checkpoint))
    samples = record.get("samples_seen")
    max_steps = cfg.training["max_steps"]
    if step < max_steps:
        return ResumePlan(checkpoint, step, max_steps, None, samples, record)
    lr = cfg.training.get("learning_rate", 5e-5) * cfg.resume.lr_factor
    return ResumePlan(checkpoint, step, step + cfg.resume.extra_steps, lr, samples, record)


def refuse_to_overwrite(cfg: RecipeConfig) -> None:
    """A new run into a folder with checkpoints would mix two runs: --resume would later pick the wrong one."""
    output_dir = cfg.training["output_dir"]
    latest, _ = find_latest_checkpoint(output_dir)
    if latest is not None:
        raise RecipeError(
            f"{output_dir} already holds {latest.name}: continue it with --resume, or start a new run "
            "in another training.output_dir"
        )


# --- what changed since the checkpoint -----------------------------------------------------------

# Keys that may change on --resume without a word of warning beyond one line each.
FREE_KEYS = (
    "name", "samples.", "hub.", "resume.", "data.num_proc", "data.cache_dir", "training.logging_", "training.eval_",
    "training.save_", "training.report_to", "training.output_dir", "training.disable_tqdm", "training.run_name",
    "training.dataloader_", "training.per_device_eval_batch_size", "training.torch_compile",
    "training.activation_checkpointing", "training.use_liger_kernel", "training.liger_kernel_config",
    "training.max_steps", "training.push_to_hub", "training.hub_", "attn_implementation", "training.use_cpu",
    "training.bf16", "training.include_", "training.ddp_",
)  # fmt: skip
# Keys whose change is handled: the data position is counted in samples, so a new batch continues exactly.
BATCH_KEYS = ("training.per_device_train_batch_size", "training.gradient_accumulation_steps")


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if isinstance(value, dict) and key != "lr_scheduler_kwargs":
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def config_changes(recorded: dict, current: dict) -> list[tuple[str, object, object]]:
    old, new = flatten(recorded), flatten(current)
    return [(k, old.get(k), new.get(k)) for k in sorted(old.keys() | new.keys()) if old.get(k) != new.get(k)]


def check_what_changed(plan: ResumePlan, cfg: RecipeConfig, fingerprints: dict, allow_changes: bool) -> None:
    """Stop in one line when the model, tokenizer, data or schedule differ from the checkpoint's, unless the
    user says they mean it (`--resume-changed`); say in one line each what else changed."""
    recorded_file = plan.checkpoint / RECIPE_CONFIG_NAME
    if not recorded_file.is_file():
        recorded_file = plan.checkpoint.parent / RECIPE_CONFIG_NAME
    try:
        recorded = yaml.safe_load(recorded_file.read_text()) or {}
    except (OSError, yaml.YAMLError):
        log(f"resume: {plan.checkpoint.name} has no readable {RECIPE_CONFIG_NAME}; the config cannot be compared")
        recorded = None
    blocking = []
    if recorded is not None:
        for key, old, new in config_changes(recorded, cfg.to_dict()):
            if key == "training.learning_rate" and plan.extra_phase:
                continue  # the extra phase sets its own
            if key.startswith(FREE_KEYS) or key in BATCH_KEYS:
                log(f"resume: {key} changed from {old!r} to {new!r}")
            elif key in ("tokenizer", "data.path") and fingerprints.get(key) and fingerprints[key] == plan.record.get(key):
                log(f"resume: {key} moved from {old!r} to {new!r}; its contents are the same")
            else:
                blocking.append(f"{key} {old!r} -> {new!r}")
    for key, what in (("tokenizer", "tokenizer files"), ("data.path", "corpus files")):
        recorded_print = plan.record.get(key)
        if recorded_print and fingerprints.get(key) and recorded_print != fingerprints[key]:
            if not any(b.startswith(f"{key} ") for b in blocking):
                blocking.append(f"{what} changed (same name, other contents)")
    if not blocking:
        return
    if allow_changes:
        for change in blocking:
            log(f"resume: --resume-changed: continuing although {change}")
        return
    raise RecipeError(
        f"--resume: the config differs from {plan.checkpoint.name}'s: {'; '.join(blocking)}; "
        "resume with the same settings, or pass --resume-changed if you mean it"
    )


def corpus_fingerprint(data_cfg) -> str:
    """Names, sizes and the first and last MiB of the corpus files (a Hub id as it is): changes when the
    corpus grows or is edited, without reading a large corpus whole."""
    import hashlib

    from data import find_corpus

    source = find_corpus(data_cfg.path)
    if source.hub_id:
        return f"hub:{source.hub_id}:{data_cfg.dataset_config}:{data_cfg.split}"
    digest = hashlib.sha256()
    for name in source.files:
        size = os.path.getsize(name)
        digest.update(f"{os.path.basename(name)}:{size}".encode())
        with open(name, "rb") as f:
            digest.update(f.read(2**20))
            f.seek(max(0, size - 2**20))
            digest.update(f.read(2**20))
    return digest.hexdigest()[:20]


# --- one run per folder --------------------------------------------------------------------------


class RunLock:
    """`output_dir/.run.lock` holds the PID and host of the run writing into the folder. A second run stops in
    one line naming the first; a lock whose process is gone (same host) is stale and taken over."""

    def __init__(self, output_dir: str | Path):
        self.path = Path(output_dir) / LOCK_NAME
        self.held = False
        self.made_folder = False

    def acquire(self) -> RunLock:
        self.made_folder = not self.path.parent.exists()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"pid": os.getpid(), "host": socket.gethostname()}
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                holder = self._holder()
                if holder is not None and not self._is_stale(holder):
                    raise RecipeError(
                        f"{self.path.parent} is in use by another run (PID {holder['pid']} on {holder['host']}); "
                        f"wait for it, or use another training.output_dir (if that run is gone, delete {self.path})"
                    ) from None
                log(f"lock: taking over the stale lock of {self._describe(holder)} in {self.path.parent}")
                self.path.unlink(missing_ok=True)
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self.held = True
            return self
        raise RecipeError(f"could not take the lock {self.path}; another run may be starting: try again")

    def _holder(self) -> dict | None:
        try:
            holder = json.loads(self.path.read_text())
            return {"pid": int(holder["pid"]), "host": str(holder["host"])}
        except (OSError, ValueError, KeyError, TypeError):
            return None  # half-written by a run that died at once, or not ours: stale

    @staticmethod
    def _is_stale(holder: dict) -> bool:
        if holder["host"] != socket.gethostname():
            return False  # another machine's process cannot be checked from here
        try:
            os.kill(holder["pid"], 0)
        except ProcessLookupError:
            return True
        except PermissionError:
            return False
        return False

    @staticmethod
    def _describe(holder: dict | None) -> str:
        return f"PID {holder['pid']} on {holder['host']}" if holder else "an unreadable lock"

    def release(self) -> None:
        """Remove the lock, and the folder too if the lock made it and the run wrote nothing into it."""
        if self.held:
            self.path.unlink(missing_ok=True)
            self.held = False
            if self.made_folder:
                with contextlib.suppress(OSError):
                    self.path.parent.rmdir()  # only if empty

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --- writing -------------------------------------------------------------------------------------


@contextlib.contextmanager
def atomic_folder(path: str | Path):
    """Yield a temporary folder beside `path`; when the block ends, it replaces `path` in one rename. If the
    block fails, the temporary folder is removed and `path` is left as it was."""
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    try:
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            old.rename(path)  # the previous one back in place
        raise
    shutil.rmtree(old, ignore_errors=True)


def write_run_files(cfg: RecipeConfig, phases: list[dict], folder: str | Path) -> None:
    """The resolved config and the training phases next to the results: push.py puts them in the card."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    (folder / RECIPE_CONFIG_NAME).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))
    (folder / PHASES_NAME).write_text(json.dumps({"phases": phases}, indent=2))


def phases_for(cfg: RecipeConfig, args, plan: ResumePlan | None) -> list[dict]:
    """The phases so far (from the checkpoint) and this one, if it starts a phase."""
    if plan is None:
        return [main_phase(cfg, args)]
    earlier = read_phases(plan.checkpoint) or read_phases(plan.checkpoint.parent)
    if not plan.extra_phase:
        return earlier or [main_phase(cfg, args)]
    extra = {
        "name": resume_phase_name(sum(p["name"].startswith("resume") for p in earlier)),
        "first_step": plan.step + 1,
        "last_step": plan.max_steps,
        "lr_scheduler_type": "constant",
        "learning_rate": plan.constant_lr,
    }
    return [*(earlier or [main_phase(cfg, args, last_step=plan.step)]), extra]


def resume_phase_name(earlier_resumes: int) -> str:
    return "resume" if earlier_resumes == 0 else f"resume {earlier_resumes + 1}"


def main_phase(cfg: RecipeConfig, args, last_step: int | None = None) -> dict:
    return {
        "name": "main",
        "first_step": 1,
        "last_step": last_step or cfg.training["max_steps"],
        "lr_scheduler_type": str(getattr(args.lr_scheduler_type, "value", args.lr_scheduler_type)),
        "learning_rate": args.learning_rate,
        "warmup_steps": args.get_warmup_steps(cfg.training["max_steps"]),
    }


def save_final_model(trainer, output_dir: str, cfg: RecipeConfig, phases: list[dict]) -> Path:
    """Weights (safetensors), config, generation config, tokenizer and the run files in output_dir/final,
    replacing it atomically: an interruption or a full disk leaves the previous final/ (or none), never half of
    one. Every process takes part: under FSDP the weights are gathered from all of them."""
    final = Path(output_dir) / "final"
    model = trainer.accelerator.unwrap_model(trainer.model)
    model.config.use_cache = True  # off while training; on for generation
    state_dict = trainer.accelerator.get_state_dict(trainer.model)  # collective under FSDP
    if trainer.args.should_save:
        with atomic_folder(final) as tmp:
            model.save_pretrained(str(tmp), state_dict=state_dict)
            model.generation_config.save_pretrained(str(tmp))
            if trainer.processing_class is not None:
                trainer.processing_class.save_pretrained(str(tmp))
            write_run_files(cfg, phases, tmp)
    trainer.accelerator.wait_for_everyone()
    return final


def save_failed(error: OSError, trainer) -> RecipeError:
    """A write that failed (disk full, permission): remove what it left half-written and say what is intact."""
    output_dir, step = trainer.args.output_dir, trainer.state.global_step
    removed = remove_incomplete_checkpoint(output_dir, step) if trainer.args.should_save else None
    latest, _ = find_latest_checkpoint(output_dir)
    intact = f"{latest.name} is intact, continue with --resume" if latest else "no checkpoint was saved yet"
    where = f" writing {error.filename}" if error.filename else ""
    partial = f"; removed the partial {removed.name}" if removed else ""
    return RecipeError(f"step {step}:{where} failed ({error.strerror or error}){partial}; {intact} once it is fixed")


def bytes_in(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def warn_if_disk_is_short(output_dir: str | Path, checkpoint_bytes: int) -> bool:
    """Before a save: True (and one line) when the disk has less room than one more checkpoint needs."""
    free = shutil.disk_usage(output_dir).free
    if free >= checkpoint_bytes * 1.1:
        return False
    log(
        f"disk: {free / 2**30:.2f} GiB free in {output_dir} and a checkpoint takes {checkpoint_bytes / 2**30:.2f} "
        "GiB: the next save may fail; free some space or lower training.save_total_limit"
    )
    return True
