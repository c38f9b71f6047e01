"""The run folder: every file a run leaves behind, where it lies, and which run it belongs to.

A run folder (`training.output_dir`) belongs to one run, named by the id in its run record:

    _run.lock              the lock of the run writing into it, and its PID and host (RunLock)
    run.json               the run record: run id, phases and their schedules, processes, tokens trained
    recipe_config.yaml     the resolved config
    samples.jsonl          text samples, one JSON object a line
    checkpoint-N/          the Trainer's checkpoint, the two run files as of step N, and checksums.json,
                           written last: the content hash of every other file of the checkpoint
    final/                 the model: safetensors, config, generation config, tokenizer, the run files

Each path is resolved once (`~`, relative paths, symbolic links); every module reads and writes runs through it.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import shutil
import socket
import sys
import tempfile
import time
from pathlib import Path

from recipe.cli import RecipeError, first_line, log, looks_like_hub_id

import xxhash
import yaml
from filelock import FileLock, Timeout

RUNS_DIR = Path("runs")  # the parent of the YAML's training.output_dir
CHECKPOINT_PREFIX = "checkpoint-"
FINAL = "final"
LOCK = "_run.lock"  # "_": the Trainer's Hub backup uploads the run folder but for "_*" and checkpoints
RECORD = "run.json"
RECIPE_CONFIG = "recipe_config.yaml"
SAMPLES = "samples.jsonl"
TRAINER_STATE = "trainer_state.json"
MANIFEST = "checksums.json"
EVAL_RESULTS = "eval_results.json"
SUPERSEDED = "_superseded"  # checkpoints and files a resumed run no longer follows (not backed up either)
RUN_FILES = (RECORD, RECIPE_CONFIG, SAMPLES)
WEIGHT_PATTERNS = ("*.safetensors", "pytorch_model*.bin")
TOKENIZER_FILES = ("tokenizer.json", "tokenizer.model", "vocab.json")
RECORD_KEY = "RunRecordCallback"  # the callback whose state (the run state) the Trainer keeps in trainer_state.json


def resolve(path: str | Path) -> Path:
    """The one absolute form of a path: `~` expanded, relative to the working directory, links followed."""
    return Path(os.path.expanduser(str(path))).resolve()


# --- what a folder holds -------------------------------------------------------------------------


def has_weights(folder: Path) -> bool:
    return any(any(folder.glob(pattern)) for pattern in WEIGHT_PATTERNS)


def holds_model(folder: Path) -> bool:
    """A folder transformers can load a model from: config.json and weights."""
    return folder.is_dir() and (folder / "config.json").is_file() and has_weights(folder)


def read_dict(path: Path) -> dict | None:
    """A run file as a dict: YAML for a .yaml file, JSON for any other; None if it is missing, unreadable or no dict."""
    try:
        text = path.read_text()
        value = yaml.safe_load(text) if path.suffix == ".yaml" else json.loads(text)
    except (OSError, ValueError, yaml.YAMLError):
        return None
    return value if isinstance(value, dict) else None


def read_trainer_state(folder: Path) -> dict | None:
    """A checkpoint's trainer_state.json, or None if it is missing or unreadable."""
    state = read_dict(Path(folder) / TRAINER_STATE)
    return state if state is not None and isinstance(state.get("global_step"), int) else None


def run_file(folder: Path, name: str) -> Path | None:
    """A run file of a model folder: in final/ or checkpoint-N itself, else in the run folder above it."""
    return next((where / name for where in (folder, folder.parent) if (where / name).is_file()), None)


def trained_block_size(folder: Path | None) -> tuple[int | None, str]:
    """The block size a model was trained on, and where it was read (or why it could not be)."""
    config_file = run_file(folder, RECIPE_CONFIG) if folder else None
    block_size = ((read_dict(config_file) or {}).get("data") or {}).get("block_size") if config_file else None
    if isinstance(block_size, int) and block_size > 0:
        return block_size, f"data.block_size of {config_file}"
    return None, f"no data.block_size in {config_file}" if config_file else "no recipe_config.yaml beside the model"


def recorded_name_and_step(folder: Path) -> tuple[str | None, int | None]:
    """A model's name in its run's config and the step its trainer state reached; None where a file says nothing."""
    recipe, state = run_file(folder, RECIPE_CONFIG), run_file(folder, TRAINER_STATE)
    name = (read_dict(recipe) or {}).get("name") if recipe else None
    step = (read_dict(state) or {}).get("global_step") if state else None
    return name, step


def checkpoint_number(folder: Path) -> int | None:
    suffix = folder.name.removeprefix(CHECKPOINT_PREFIX)
    return int(suffix) if folder.name.startswith(CHECKPOINT_PREFIX) and suffix.isdigit() else None


def checkpoint_step(folder: Path) -> int | None:
    """The step of a complete checkpoint, else None. The recipe writes checksums.json last: a checkpoint with it
    is complete (and `damaged_file` says whether its files are still as saved)."""
    return checkpoint_number(folder) if (folder / MANIFEST).is_file() else None


def is_complete_model(folder: Path) -> bool:
    """A final/ with a model, or a complete checkpoint-N."""
    return holds_model(folder) and (folder.name == FINAL or checkpoint_step(folder) is not None)


def saved_at(folder: Path) -> float:
    """When a model was saved: its weights' time, which files written later (eval_results.json) leave alone."""
    return max(p.stat().st_mtime for pattern in WEIGHT_PATTERNS for p in folder.glob(pattern))


def newest_model(runs_dir: Path = RUNS_DIR) -> Path:
    """The most recently saved final/ or complete checkpoint-N of any run under runs_dir."""
    folders = [*runs_dir.glob(f"*/{FINAL}"), *runs_dir.glob(f"*/{CHECKPOINT_PREFIX}*")]
    complete = [folder for folder in folders if folder.is_dir() and is_complete_model(folder)]
    if not complete:
        raise RecipeError(
            f"no model given and none found in {runs_dir}/*/{FINAL} or {runs_dir}/*/{CHECKPOINT_PREFIX}N "
            f"(under {Path.cwd()}); pass a model folder or a Hub id, or train one first with train.py"
        )
    return max(complete, key=saved_at)


def model_folder(path: Path) -> Path:
    """The model a folder stands for: the folder itself (config.json and weights), else a run folder's final/,
    else its newest complete checkpoint; one line says what is missing."""
    if not path.is_dir():
        raise RecipeError(f"no model in {path} (a file, not a folder); pass a final/ or checkpoint-N folder")
    complete = [f for f in (path / FINAL, *RunFolder(path).checkpoints()) if is_complete_model(f)]
    model = next((f for f in (path, *complete, path / FINAL) if (f / "config.json").is_file()), None)
    if model is None:
        raise RecipeError(
            f"no model in {path} (no config.json, and no final/ or complete checkpoint-N inside); "
            "pass a final/ or checkpoint-N folder, a run folder, or a Hub id"
        )
    if not has_weights(model):
        raise RecipeError(f"no weights in {model} (no *.safetensors); pass a final/ or a complete checkpoint-N folder")
    if not any((model / name).is_file() for name in TOKENIZER_FILES):
        raise RecipeError(f"no tokenizer in {model} (no tokenizer.json); copy it there from the run's final/")
    return model


def local_model(source: str | None) -> Path | None:
    """The model folder a command was given (as `model_folder` finds it), or the newest model under runs/ when it
    was given none, said on stderr; None for a Hub id."""
    if source is None:
        newest = newest_model(RUNS_DIR)
        print(f"using the newest model under {RUNS_DIR}/: {newest}", file=sys.stderr)
        return newest
    if Path(source).expanduser().exists():
        return model_folder(Path(source).expanduser())
    if not looks_like_hub_id(source):
        raise RecipeError(f"no model at '{source}' (no such folder); pass a final/ or checkpoint-N folder, or a Hub id")
    return None


# --- content hashes ------------------------------------------------------------------------------


def file_hash(path: Path) -> str:
    """xxh3-128 of a file's bytes: about 10 GB/s from the page cache, so a checkpoint just written costs
    fractions of a second (BENCHMARKS.md)."""
    digest = xxhash.xxh3_128()
    with path.open("rb") as f:
        while chunk := f.read(16 * 2**20):
            digest.update(chunk)
    return digest.hexdigest()


def write_manifest(folder: Path) -> None:
    """Record the size and hash of every file of a checkpoint, last, in one rename."""
    files = {
        str(p.relative_to(folder)): {"size": p.stat().st_size, "xxh3_128": file_hash(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST and not p.name.startswith(".")
    }
    write_atomically(folder / MANIFEST, json.dumps({"files": files}, indent=1))


def damaged_file(folder: Path) -> str | None:
    """The first file of a checkpoint that is missing or differs from its recorded hash, with why; None when
    every file matches."""
    manifest = read_dict(folder / MANIFEST)
    if manifest is None:
        return f"{MANIFEST} is {'unreadable' if (folder / MANIFEST).exists() else 'missing'}"
    for name, expected in sorted(manifest.get("files", {}).items()):
        path = folder / name
        if not path.is_file():
            return f"{name} is missing"
        if path.stat().st_size != expected["size"] or file_hash(path) != expected["xxh3_128"]:
            return f"{name} differs from the hash recorded when it was saved"
    return None


# --- writing -------------------------------------------------------------------------------------


def write_atomically(path: Path, text: str) -> None:
    """The file whole or not at all: written beside it, then renamed over it."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    tmp.write_text(text)
    os.replace(tmp, path)


@contextlib.contextmanager
def atomic_folder(path: Path):
    """Yield a temporary folder beside `path`; when the block ends, it replaces `path` in one rename. If the
    block fails, the temporary folder is removed and `path` is left as it was."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        follow_umask(tmp)
        if path.exists():
            path.rename(old)
        tmp.rename(path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old.exists() and not path.exists():
            old.rename(path)  # the previous one back in place
        raise
    shutil.rmtree(old, ignore_errors=True)


def follow_umask(folder: Path) -> None:
    """Files readable as the user's umask says: safetensors 0.8 writes its files 0600, which another user or a
    container running as one cannot read."""
    mask = os.umask(0)
    os.umask(mask)
    for path in folder.rglob("*"):
        if path.is_file():
            path.chmod(0o666 & ~mask)


def write_run_files(folder: Path, config: dict, record: dict) -> None:
    """The resolved config and the run record, into a run folder, a checkpoint or final/."""
    folder.mkdir(parents=True, exist_ok=True)
    write_atomically(folder / RECIPE_CONFIG, yaml.safe_dump(config, sort_keys=False))
    write_atomically(folder / RECORD, json.dumps(record, indent=2))


def new_run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S-") + secrets.token_hex(3)


def bytes_in(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.rglob("*") if f.is_file())


def warn_if_disk_is_short(folder: Path, checkpoint_bytes: int) -> bool:
    """Before a save: True (and one line) when the disk has less room than one more checkpoint needs."""
    free = shutil.disk_usage(folder).free
    if free >= checkpoint_bytes * 1.1:
        return False
    log(
        f"disk: {free / 2**30:.2f} GiB free in {folder} and a checkpoint takes {checkpoint_bytes / 2**30:.2f} "
        "GiB: the next save may fail; free some space or lower training.save_total_limit"
    )
    return True


# --- the run folder ------------------------------------------------------------------------------


class RunFolder:
    """`training.output_dir`, resolved once, with what it holds."""

    def __init__(self, path: str | Path):
        self.path = resolve(path)

    def __str__(self) -> str:
        return str(self.path)

    @property
    def final(self) -> Path:
        return self.path / FINAL

    def checkpoint(self, step: int) -> Path:
        return self.path / f"{CHECKPOINT_PREFIX}{step}"

    def checkpoints(self) -> list[Path]:
        """Every checkpoint-N folder, complete or not, newest first."""
        found = [p for p in self.path.glob(f"{CHECKPOINT_PREFIX}*") if p.is_dir() and checkpoint_number(p) is not None]
        return sorted(found, key=checkpoint_number, reverse=True)

    def latest_checkpoint(self) -> tuple[Path | None, list[Path]]:
        """(newest complete checkpoint, the newer incomplete ones skipped). transformers' `get_last_checkpoint`
        returns the newest by number whether or not it was fully written."""
        skipped = []
        for folder in self.checkpoints():
            if checkpoint_step(folder) is not None:
                return folder, skipped
            skipped.append(folder)
        return None, skipped

    def run_files(self) -> list[str]:
        """What of a run the folder holds: checkpoints, final/, run files; [] for a new or unrelated folder."""
        held = [p.name for p in self.checkpoints()[:1]] + [FINAL] * self.final.is_dir()
        return held + [name for name in RUN_FILES if (self.path / name).is_file()]

    def check_writable(self) -> None:
        """One line when the folder is a file, lies under a file, or cannot be created or written."""
        if self.path.exists() and not self.path.is_dir():
            raise RecipeError(f"training.output_dir {self.path} is a file; set training.output_dir to a folder")
        ancestor = next(p for p in (self.path, *self.path.parents) if p.exists())
        if not ancestor.is_dir():
            raise RecipeError(f"training.output_dir {self.path} lies under the file {ancestor}; choose another folder")
        try:  # os.access says yes to root even on a read-only file system: try it
            os.rmdir(tempfile.mkdtemp(prefix=".probe-", dir=ancestor))
        except OSError as e:
            raise RecipeError(
                f"training.output_dir {self.path} cannot be created in {ancestor} ({e.strerror or first_line(e)}); "
                "choose a folder you can write to"
            ) from None

    def remove_incomplete_checkpoint(self, step: int) -> Path | None:
        """After a failed save: remove checkpoint-`step` if it was left half-written."""
        folder = self.checkpoint(step)
        if folder.is_dir() and checkpoint_step(folder) is None:
            shutil.rmtree(folder, ignore_errors=True)
            return folder
        return None


class RunLock:
    """`_run.lock`: an OS-level lock on the run folder (filelock), held while a run writes into it, with the PID
    and host of its holder in the file for the line that stops a second run. The OS drops the lock when its
    process ends, however it ends, so a run that crashed blocks no one."""

    def __init__(self, folder: RunFolder):
        self.folder, self.path = folder, folder.path / LOCK
        self.lock = FileLock(self.path, timeout=0, on_acquired=write_holder)
        self.made_folder = False

    def acquire(self) -> RunLock:
        self.folder.check_writable()
        self.made_folder = not self.folder.path.exists()
        self.folder.path.mkdir(parents=True, exist_ok=True)
        left = read_dict(self.path)  # a lock file left behind: its run ended without releasing it
        try:
            self.lock.acquire()
        except Timeout:
            holder = read_dict(self.path)  # None only in the moment the other run takes or releases the lock
            who = f" (PID {holder.get('pid')} on {holder.get('host')})" if holder else ""
            raise RecipeError(
                f"{self.folder} is in use by another run{who}; wait for it, or use another training.output_dir"
            ) from None
        if left:
            log(f"lock: the run of PID {left.get('pid')} on {left.get('host')} ended without releasing {self.path}")
        return self

    def release(self) -> None:
        """Remove the lock, and the folder too if the lock made it and the run wrote nothing into it. The file goes
        while the lock is still held: a run that locks the removed file in that moment does not hold it (filelock
        checks), and stops as if the folder were still in use."""
        if self.lock.is_locked:
            self.path.unlink(missing_ok=True)
            self.lock.release()
            if self.made_folder:
                with contextlib.suppress(OSError):
                    self.folder.path.rmdir()  # only if empty

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def write_holder(fd: int) -> None:
    """The lock file's content, written through the locked descriptor as soon as the lock is taken."""
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
