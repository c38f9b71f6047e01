"""`--resume`: which checkpoint, which phase it trains, and every check before anything is written.

A run is a list of phases, recorded in its run record (run.json) as they are planned:

    main       steps 1..max_steps, the configured schedule
    resume     after a finished phase: resume.extra_steps more steps at resume.lr_factor x learning_rate, constant
    extend     after a finished phase, with a larger training.max_steps: the configured schedule again over the
               new steps, re-warmed over a tenth of them from 0 to learning_rate (the optimizer's moments kept)

A checkpoint inside a phase continues that phase exactly, on its own schedule. Before any work the checkpoint is
checked: its files against their content hashes, its tensors against the model config, its run against the
run that owns the output folder, its config and data against the current ones. `--resume hub` downloads the
checkpoint that training.hub_strategy: checkpoint keeps on the Hub: the same run, in its own folder or a new one.
"""

from __future__ import annotations

import math
import shlex
import shutil
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from types import SimpleNamespace

from recipe.arguments import check_hub_backup, main_phase, schedule_kwargs
from recipe.cli import RecipeError, first_line, log, looks_like_hub_id
from recipe.config import RecipeConfig
from recipe.corpus import CorpusSource
from recipe.model import check_shapes
from recipe.run_folder import (
    FINAL,
    MANIFEST,
    RECIPE_CONFIG,
    SUPERSEDED,
    RunFolder,
    checkpoint_number,
    checkpoint_step,
    damaged_file,
    new_run_id,
    read_dict,
    read_trainer_state,
)
from recipe.run_state import Phase, RunState

from accelerate import PartialState
from huggingface_hub import snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError
from safetensors import safe_open
from transformers import TrainingArguments

HUB_CHECKPOINT = "last-checkpoint"  # the repo folder where the Trainer's hub_strategy "checkpoint" keeps the newest
HUB_DOWNLOAD = ".hub-download"  # beside the run folder: --resume hub downloads there, then moves it in


@dataclass
class ResumePlan:
    checkpoint: Path
    step: int
    run: RunState  # the checkpoint's run, with every phase of it, the one this resume trains last
    continues: bool = True  # the checkpoint's phase goes on (False: a new phase starts after it)

    phase = property(lambda self: self.run.phase)
    max_steps = property(lambda self: self.phase.last_step)  # the step this resume trains to

    def describe(self) -> str:
        p, start = self.phase, f"resuming from {self.checkpoint.name} (step {self.step})"
        if self.continues:
            return f"{start}: continuing the {p.name} phase to step {p.last_step} on its own schedule"
        steps = f"{start} for {p.last_step - self.step} steps"
        if p.lr_scheduler_type == "constant":
            return f"{steps} at lr {p.learning_rate:g}: a new phase '{p.name}' after the finished run, constant"
        return (
            f"{steps}: a new phase '{p.name}' after the finished run, {p.lr_scheduler_type} re-warmed over "
            f"{p.warmup_steps} step(s) from 0 to lr {p.learning_rate:g}"
        )


def find_checkpoint(folder: RunFolder, resume: str) -> Path:
    if resume == "latest":
        folder.check_writable()  # an output_dir that is a file says so
        checkpoint, skipped = folder.latest_checkpoint()
        for path in skipped:
            log(f"resume: skipping incomplete checkpoint {path}")
        if checkpoint is None:
            raise RecipeError(f"--resume: no complete checkpoint in {folder}; train first, or pass --resume PATH")
        return checkpoint
    checkpoint = RunFolder(resume).path
    if not checkpoint.is_dir():
        raise RecipeError(f"--resume: checkpoint folder not found: {resume}")
    if checkpoint_number(checkpoint) is None and RunFolder(checkpoint).checkpoints():  # a run folder: its newest
        return find_checkpoint(RunFolder(checkpoint), "latest")
    if checkpoint_step(checkpoint) is None:
        raise RecipeError(
            f"--resume: {checkpoint} is not a complete checkpoint-N folder (no weights, trainer state "
            "or checksums); pass a checkpoint-N folder or a run folder"
        )
    return checkpoint


def plan_resume(cfg: RecipeConfig, resume: str, folder: RunFolder, args: TrainingArguments) -> ResumePlan:
    """What `--resume` trains: the interrupted phase to its end, or after a finished run a new phase."""
    checkpoint = download_last_checkpoint(cfg, folder) if resume == "hub" else find_checkpoint(folder, resume)
    refuse_if_damaged(checkpoint)  # before anything of it is read
    state = read_trainer_state(checkpoint)
    step, run = state["global_step"], RunState.from_trainer_state(state)
    index = next((i for i, p in enumerate(run.phases) if p.first_step <= max(step, 1) <= p.last_step), -1)
    current, earlier = run.phases[index], run.phases[:index]  # past every phase (-1): the last one
    new_max, planned = args.max_steps, current.last_step
    if step < planned and current.name == "main" and new_max != planned:
        if step < new_max < planned:  # its schedule was built for `planned`: stopping between would jump it
            raise RecipeError(
                f"--resume: training.max_steps {new_max} ends the main phase before its planned step "
                f"{planned} and after {checkpoint.name}: set training.max_steps={planned} to finish it "
                f"(then extend), or {step} to end it at the checkpoint"
            )
        if new_max > planned:
            then = f", then a phase 'extend' trains steps {planned + 1}-{new_max}"
        else:
            then, current = f"; it ends here at step {step}", replace(current, last_step=step)
        log(f"resume: training.max_steps is {new_max}, the main phase was planned to step {planned}{then}")
    phases = [*earlier, current]
    if step < current.last_step:  # interrupted inside a phase: it goes on, on its own schedule
        return ResumePlan(checkpoint, step, replace(run, phases=phases))
    phases.append(next_phase(cfg, args, phases, step))  # after the finished phases
    return ResumePlan(checkpoint, step, replace(run, phases=phases), continues=False)


def next_phase(cfg: RecipeConfig, args: TrainingArguments, earlier: list[Phase], step: int) -> Phase:
    """After a finished phase: extend to a larger training.max_steps, else the extra steps of resume:."""
    if args.max_steps > step:
        kind, steps = "extend", args.max_steps - step
        given = cfg.training.get("lr_scheduler_kwargs")  # a share of decay steps: of this phase's steps
        kwargs = schedule_kwargs(given, args.lr_scheduler_type.value, steps)
        phase = replace(main_phase(args), warmup_steps=max(1, round(steps / 10)), lr_scheduler_kwargs=kwargs)
    else:
        kind, steps = "resume", cfg.resume.extra_steps
        lr = args.learning_rate * cfg.resume.lr_factor
        phase = replace(
            main_phase(args), lr_scheduler_type="constant", learning_rate=lr, warmup_steps=0, lr_scheduler_kwargs={}
        )
    count = sum(p.name.split()[0] == kind for p in earlier)
    name = kind if count == 0 else f"{kind} {count + 1}"
    return replace(phase, name=name, first_step=step + 1, last_step=step + steps)


def download_last_checkpoint(cfg: RecipeConfig, folder: RunFolder) -> Path:
    """`--resume hub`: the repo's last-checkpoint/ beside the run folder; `claim` moves it in once it is checked."""
    check_hub_backup(cfg.training, "hub")  # a repo id, a token and the Hub, before the download
    repo, staging = cfg.training["hub_model_id"], folder.path.with_name(f".{folder.path.name}{HUB_DOWNLOAD}")
    try:
        with PartialState().main_process_first():  # under a GPU launch the others then find the files there
            downloaded = Path(snapshot_download(repo, allow_patterns=f"{HUB_CHECKPOINT}/*", local_dir=staging))
    except RepositoryNotFoundError:
        shutil.rmtree(staging, ignore_errors=True)
        raise RecipeError(f"--resume hub: no repo {repo} on the Hub (or your token may not read it)") from None
    except Exception as e:  # what came is kept: the next --resume hub fetches only the rest
        raise RecipeError(f"--resume hub: downloading {repo}/{HUB_CHECKPOINT} failed: {first_line(e)}") from None
    checkpoint = downloaded / HUB_CHECKPOINT
    if read_trainer_state(checkpoint) is None or not (checkpoint / MANIFEST).is_file():
        shutil.rmtree(staging, ignore_errors=True)
        raise RecipeError(f"--resume hub: {repo} has no complete {HUB_CHECKPOINT}/ (training.hub_strategy=checkpoint)")
    return checkpoint


def next_phase_due(cfg: RecipeConfig, folder: RunFolder, offer: bool) -> str | None:
    """After a phase, the checkpoint the next one starts from: at once when training.max_steps goes further (an
    interrupted main phase finished, then extended), or, in a terminal, the extra phase if the user says yes."""
    latest, _ = folder.latest_checkpoint()
    if latest is None:  # e.g. save_strategy=no
        return None
    if cfg.training["max_steps"] > (checkpoint_step(latest) or 0):
        return str(latest)
    if not offer:
        return None
    factor = f"lr/{1 / cfg.resume.lr_factor:g}" if cfg.resume.lr_factor < 1 else f"lr x {cfg.resume.lr_factor:g}"
    print(
        f"Continue from {latest.name} for {cfg.resume.extra_steps} more steps at {factor}? [y/N] ", end="", flush=True
    )
    try:
        answer = input()
    except (EOFError, KeyboardInterrupt):
        print()
        return None
    return str(latest) if answer.strip().lower() in ("y", "yes") else None


# --- checks before any work ------------------------------------------------------------------------------


def refuse_if_damaged(checkpoint: Path) -> None:
    """Every file as it was saved (content hashes), or one line naming the newest intact checkpoint."""
    if (damage := damaged_file(checkpoint)) is None:
        return
    intact = newest_intact_checkpoint(checkpoint)
    fix = f"resume from {intact} instead: {command(intact)}" if intact else "none older is intact: start a new run"
    raise RecipeError(f"--resume: {checkpoint} is damaged: {damage}; {fix}")


def verify_checkpoint(plan: ResumePlan, expected_state_dict: dict) -> None:
    """Tensors of the shapes the config gives."""
    weights = plan.checkpoint / "model.safetensors"
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt") as f:
                found = {name: SimpleNamespace(shape=f.get_slice(name).get_shape()) for name in f.keys()}
        except Exception:
            raise RecipeError(f"checkpoint file {weights} is corrupt; resume from an earlier checkpoint") from None
        check_shapes(expected_state_dict, found, f"checkpoint {plan.checkpoint.name}")


def newest_intact_checkpoint(damaged: Path) -> Path | None:
    step = checkpoint_number(damaged) or math.inf  # not a checkpoint-N (the Hub's last-checkpoint/): all are older
    older = (folder for folder in RunFolder(damaged.parent).checkpoints() if checkpoint_number(folder) < step)
    return next((folder for folder in older if damaged_file(folder) is None), None)


def check_ownership(plan: ResumePlan, folder: RunFolder) -> dict | None:
    """A checkpoint resumes into its own run folder, or into a new one (a fork), never into another run's.
    Returns what a fork records of where it came from, or None."""
    if plan.checkpoint.parent == folder.path:
        return None
    held = folder.run_files()
    owner = getattr(RunState.read(folder.path), "run_id", None)
    from_hub = plan.checkpoint.parent.name.endswith(HUB_DOWNLOAD)
    if held and owner != plan.run.run_id:
        own = "" if from_hub else f" (training.output_dir={plan.checkpoint.parent})"
        raise RecipeError(
            f"--resume: {folder} holds another run ({owner or 'no run id'}: {', '.join(held)}) and {plan.checkpoint} "
            f"belongs to run {plan.run.run_id}; resume into its own folder{own} or into a new one"
        )
    if held or from_hub:  # a checkpoint downloaded from the Hub goes on as its own run, in a new folder too
        return None
    log(f"resume: {folder} is new: it continues {plan.checkpoint} as a run of its own")
    return {"run_id": plan.run.run_id, "checkpoint": str(plan.checkpoint)}


def command(checkpoint: Path | str = "") -> str:
    """The command that resumes the run: this one's own --config and overrides, with --resume [CHECKPOINT]."""
    argv = sys.argv[1:]
    args = [a for a in argv if not a.startswith("--resume") and a != "--no-prompt"]
    if "--resume" in argv and (i := argv.index("--resume") + 1) < len(argv) and "=" not in argv[i]:
        args.remove(argv[i])  # the checkpoint that --resume was given
    line = ["python", "train.py", "--resume", *([str(checkpoint)] if checkpoint else [])]
    if Path(sys.argv[0]).name != "train.py":  # called from Python: its arguments are not on the command line
        return f"{shlex.join(line)} [the same --config and overrides]"
    return shlex.join([*line, *args])


def run_state(
    cfg: RecipeConfig, args: TrainingArguments, plan: ResumePlan | None, sources: list[CorpusSource], fingerprints: dict
) -> RunState:
    """The run state this phase starts from, its id still to be claimed: the checkpoint's run (what it trained,
    its phases) or a new run's main phase, with the corpus as a card may name it (a Hub id or file names, never a
    local path; a mixture's names all), the Hub model it continues, if any, and the fingerprints of now."""
    hub_id = sources[0].hub_id if len(sources) == 1 else None
    corpus = {"hub_id": hub_id, "files": [] if hub_id else [name for s in sources for name in s.names()]}
    base_model = cfg.init_from if cfg.init_from and looks_like_hub_id(cfg.init_from) else None
    run = plan.run if plan else RunState(run_id="", phases=[main_phase(args)])
    return replace(run, corpus=corpus, base_model=base_model, fingerprints=fingerprints)


def claim(
    folder: RunFolder, plan: ResumePlan | None, cfg: RecipeConfig, run: RunState, allow_changes: bool
) -> RunState:
    """The run this phase trains: a new run into a folder of its own, or the checkpoint's run continued in its
    folder (or forked into a new one); another run's folder is refused, before anything is written."""
    if plan is None:
        refuse_to_overwrite(folder)
        return replace(run, run_id=new_run_id(), forked_from=None)
    forked = check_ownership(plan, folder)
    check_what_changed(plan, cfg, run.fingerprints, allow_changes)
    if plan.checkpoint.parent.name.endswith(HUB_DOWNLOAD):  # downloaded and checked: the run's checkpoint-N
        staging, plan.checkpoint, state = plan.checkpoint.parent, folder.checkpoint(plan.step), PartialState()
        state.wait_for_everyone()  # every process has checked the download before the main one moves it in
        if state.is_main_process:
            shutil.rmtree(plan.checkpoint, ignore_errors=True)  # that step of the same run, if it is here
            (staging / HUB_CHECKPOINT).rename(plan.checkpoint)
            shutil.rmtree(staging, ignore_errors=True)
            log(f"resume: the Hub's {HUB_CHECKPOINT} is now {plan.checkpoint}")
        state.wait_for_everyone()
    later_files(plan, folder)
    return replace(run, run_id=new_run_id(), forked_from=forked) if forked else run


def refuse_to_overwrite(folder: RunFolder) -> None:
    """A new run into a folder that holds a run's files would mix two runs; the files of a run that stopped
    before its first checkpoint are set aside instead, since nothing can resume them."""
    held = folder.run_files()
    if held and not folder.checkpoints() and FINAL not in held:
        set_aside(folder, held, f"{folder} holds the files of a run that saved no checkpoint")
    elif held:
        raise RecipeError(
            f"{folder} already holds {held[0]}: continue it with --resume, or start a new run in another "
            "training.output_dir"
        )


def set_aside(folder: RunFolder, names: list[str], why: str) -> None:
    """Move files a run no longer follows into _superseded/ (nothing is deleted), said in one line."""
    aside = folder.path / SUPERSEDED / time.strftime("%Y%m%d-%H%M%S")
    aside.mkdir(parents=True, exist_ok=True)
    for name in names:
        (folder.path / name).rename(aside / name)
    log(f"resume: {why}: moved {', '.join(names)} to {aside} (delete it when you no longer need it)")


def later_files(plan: ResumePlan, folder: RunFolder) -> None:
    """Resuming an older checkpoint of the run: its later checkpoints belong to the timeline it leaves."""
    later = [p.name for p in reversed(folder.checkpoints()) if checkpoint_number(p) > plan.step]  # oldest first
    if plan.checkpoint.parent == folder.path and later:
        set_aside(folder, later, f"they come after {plan.checkpoint.name}")


# --- what changed since the checkpoint ----------------------------------------------------------------------

# Keys that may change on --resume without a word of warning beyond one line each, by what they set:
FREE_KEYS = (
    # what the run is called, and when and where it samples, logs, evaluates, saves and uploads
    *("name", "samples.", "hub.", "training.run_name", "training.project", "training.trackio_"),
    *("training.logging_", "training.report_to", "training.disable_tqdm", "training.include_"),
    *("training.eval_", "training.per_device_eval_batch_size", "training.save_", "training.output_dir"),
    *("training.push_to_hub", "training.hub_"),
    # the extra phase after a finished run, whose own line states its steps and learning rate
    "resume.",
    # how fast the steps run, and on what hardware
    *("data.num_proc", "data.cache_dir", "training.dataloader_", "training.ddp_", "training.use_cpu", "training.bf16"),
    *("attn_implementation", "training.torch_compile", "training.activation_checkpointing"),
    *("training.use_liger_kernel", "training.liger_kernel_config"),
)
# Keys whose change is handled: the data position is counted in samples, so a new batch continues exactly.
BATCH_KEYS = ("training.per_device_train_batch_size", "training.gradient_accumulation_steps")


def flatten(tree: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in tree.items():
        if f"{prefix}{key}" == "data.sources" and isinstance(value, list):  # by name: a change names its source
            value = {str(source.get("name")): source for source in value}
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
    recorded = read_dict(plan.checkpoint / RECIPE_CONFIG) or {}  # checked against its hash before this
    blocking = []
    for key, old, new in config_changes(recorded, cfg.to_dict()):
        if key == "training.max_steps" or (key == "training.learning_rate" and not plan.continues):
            continue  # the phase's line says it, or a new phase sets its own
        if key.startswith(FREE_KEYS) or key in BATCH_KEYS:
            log(f"resume: {key} changed from {old!r} to {new!r}")
        elif fingerprints.get(key) and fingerprints[key] == plan.run.fingerprints.get(key):  # the tokenizer, a path
            log(f"resume: {key} moved from {old!r} to {new!r}; its contents are the same")
        else:
            blocking.append(f"{key} {old!r} -> {new!r}")
    blocking += other_contents(plan.run.fingerprints, fingerprints, blocking)
    if blocking and not allow_changes:
        raise RecipeError(
            f"--resume: the config differs from {plan.checkpoint.name}'s: {'; '.join(blocking)}; "
            "resume with the same settings, or pass --resume-changed if you mean it"
        )
    for change in blocking:
        log(f"resume: --resume-changed: continuing although {change}")


def other_contents(recorded: dict, fingerprints: dict, blocking: list[str]) -> list[str]:
    """The tokenizer or corpus files that kept their names and changed their contents."""
    changed = []
    for key, now in fingerprints.items():
        what = {"tokenizer": "tokenizer files", "data.path": "corpus files"}.get(key, f"corpus files of {key[:-5]}")
        if recorded.get(key) and now and recorded[key] != now and not any(b.startswith(f"{key} ") for b in blocking):
            changed.append(f"{what} changed (same name, other contents)")
    return changed
