"""Trainer callbacks of the recipe: text samples, the graceful stop on Ctrl-C or SIGTERM, the run state kept in
each checkpoint with its content hashes, the console line, and tokens/s, MFU and peak memory."""

from __future__ import annotations

import json
import os
import re
import signal
import sys
import time
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

from recipe.arguments import samples_per_step
from recipe.cli import GRACEFUL_STOPS, exit_at_once, log
from recipe.config import SamplesConfig
from recipe.model import flops_per_token, peak_bf16_flops
from recipe.run_folder import (
    CHECKPOINT_PREFIX,
    SAMPLES,
    bytes_in,
    follow_umask,
    warn_if_disk_is_short,
    write_manifest,
    write_run_files,
)
from recipe.run_state import RunState
from recipe.sampling import generate_samples
from recipe.trainer import StopEvaluation

import torch
from transformers import ProgressCallback, TrainerCallback
from transformers.trainer_callback import ExportableState

# --- samples -------------------------------------------------------------------------------------


def one_line(text: str) -> str:
    """A sample on one console line: its line breaks as ' / ', the way verse is quoted."""
    return re.sub(r"\s*\n\s*", " / ", text.strip())


def uses_fsdp(args) -> bool:
    """FSDP from TrainingArguments or from an accelerate config (`accelerate launch --config_file fsdp.yaml`)."""
    return bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


class SampleGenerationCallback(TrainerCallback):
    """Every `samples.every_n_steps` optimizer steps and at the end, generate from each prompt. On a step that
    also saves, the samples come after the checkpoint, so a stop signal during them loses nothing."""

    def __init__(self, tokenizer, samples: SamplesConfig, output_dir: str, interrupted=lambda: False):
        self.tokenizer = tokenizer
        self.samples = samples
        self.path = Path(output_dir) / SAMPLES
        self.interrupted = interrupted
        self.last_step = None
        self.rows: list[list] = []

    def due(self, state) -> bool:
        """Every N steps and at the last one, where they come before the run's `done in` line."""
        every, step = self.samples.every_n_steps, state.global_step
        return bool(every) and (step % every == 0 or step == state.max_steps) and step != self.last_step

    def on_step_end(self, args, state, control, model=None, **kwargs):
        if self.due(state) and not control.should_save:
            self.sample(args, state, model)

    def on_save(self, args, state, control, model=None, **kwargs):
        if self.due(state):
            self.sample(args, state, model)

    def sample(self, args, state, model) -> None:
        self.last_step = state.global_step
        if self.interrupted() or not self.samples.prompts or not state.is_world_process_zero or model is None:
            return
        if uses_fsdp(args):
            return  # sharded weights: generation would need every rank; use generate.py on the checkpoint
        results = generate_samples(
            model,
            self.tokenizer,
            self.samples.prompts,
            self.samples.sampling(),
            bf16=args.bf16,
            should_stop=self.interrupted,
        )
        if not results:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            for prompt, completion in results:
                log(f"sample at step {state.global_step} | {one_line(prompt + completion)}")
                f.write(json.dumps({"step": state.global_step, "prompt": prompt, "completion": completion}) + "\n")
                self.rows.append([state.global_step, prompt, completion])
        self.log_wandb_table(args, state.global_step)

    def log_wandb_table(self, args, step: int) -> None:
        wandb = sys.modules.get("wandb")
        if "wandb" not in (args.report_to or []) or wandb is None or wandb.run is None:
            return
        table = wandb.Table(columns=["step", "prompt", "completion"], data=list(self.rows))
        # the Trainer's wandb charts use train/global_step as their x-axis: give the table the step it belongs to
        wandb.run.log({"samples": table, "train/global_step": step})


# --- stopping ------------------------------------------------------------------------------------


class GracefulInterruptCallback(TrainerCallback):
    """First Ctrl-C or SIGTERM: say at once what will happen, then save a checkpoint after the current step
    (an evaluation or sample generation in progress is cut short) and stop. A second signal exits at once.
    It is the handler of cli.command's signal handler from the start of training until `uninstall()`,
    so that the final save is covered too; run outside cli.command, a signal is not caught."""

    def __init__(self):
        self.requested = False
        self.stopped_at: int | None = None
        self.step, self.step_started, self.step_seconds = 0, None, None
        self.saving_final = False

    def on_train_begin(self, args, state, control, **kwargs):
        if self._handle not in GRACEFUL_STOPS:
            GRACEFUL_STOPS.append(self._handle)

    def on_step_begin(self, args, state, control, **kwargs):
        self.step, self.step_started = state.global_step + 1, time.perf_counter()

    def _handle(self, signum, frame):
        if self.requested:
            self.uninstall()
            print("\nsecond interrupt: exiting now without saving", file=sys.stderr, flush=True)
            exit_at_once(128 + signum)
        self.requested = True
        print(f"\n{signal.Signals(signum).name}: {self.what_happens_now(signum)}", file=sys.stderr, flush=True)

    def what_happens_now(self, signum: int = signal.SIGINT) -> str:
        again = f"{'Ctrl-C' if signum == signal.SIGINT else signal.Signals(signum).name} again to quit without saving"
        if self.saving_final:
            return f"training is done; finishing the save of final/ first (seconds); {again} it"
        if self.step_started is None:
            return f"stopping; {again}"
        remaining = max(0.0, (self.step_seconds or 0.0) - (time.perf_counter() - self.step_started))
        left = f" (about {format_duration(remaining)})" if self.step_seconds else ""
        return f"stopping after step {self.step}{left} and saving a checkpoint; {again}"

    def on_step_end(self, args, state, control, **kwargs):
        if self.step_started is not None:
            self.step_seconds = time.perf_counter() - self.step_started
        # A stop that comes before the next step begins ends with this step's save, if it saves, else the next's.
        self.step = state.global_step if control.should_save else state.global_step + 1
        self.step_started = time.perf_counter()
        if self._any_rank_requested(args):
            self.requested = True
            control.should_save = True
            control.should_evaluate = False
            control.should_training_stop = True

    def on_save(self, args, state, control, **kwargs):
        self.step = state.global_step + 1
        if self.requested:  # also when the signal came during this step's evaluation or samples
            self.stopped_at = state.global_step
            control.should_training_stop = True

    def on_prediction_step(self, args, state, control, **kwargs):
        if self._any_rank_requested(args):
            raise StopEvaluation

    def on_train_end(self, args, state, control, **kwargs):
        if self.stopped_at is None:
            self.saving_final = True  # what a signal from now on interrupts is the final save

    def _any_rank_requested(self, args) -> bool:
        # every rank must stop at the same step, or the checkpoint's collectives would hang
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([1.0 if self.requested else 0.0], device=args.device)
            torch.distributed.all_reduce(flag)
            return bool(flag.item())
        return self.requested

    def uninstall(self):
        if self._handle in GRACEFUL_STOPS:
            GRACEFUL_STOPS.remove(self._handle)


def format_duration(seconds: float) -> str:
    seconds = int(round(seconds))
    if seconds >= 2 * 86400:
        return f"{seconds / 86400:,.1f} days"
    if seconds < 60:
        return f"{seconds} s"
    hours, rest = divmod(seconds, 3600)
    return f"{hours}:{rest // 60:02d}:{rest % 60:02d}" if hours else f"{rest // 60}:{rest % 60:02d}"


# --- the run's record ----------------------------------------------------------------------------


class RunRecordCallback(TrainerCallback, ExportableState):
    """The owner of the run state (run_state.py) while training. The Trainer keeps it in each checkpoint's
    trainer_state.json as this callback's state; beside it go the config and run.json, the same state, and last
    the content hashes of every file. Before each save it checks the disk."""

    def __init__(self, config: dict, run: RunState, checkpoint_bytes: int):
        self.config, self.run, self.checkpoint_bytes = config, run, checkpoint_bytes
        self.hashing: Future | None = None

    def state(self) -> dict:
        return {"args": {}, "attributes": self.run.to_dict()}

    def on_train_begin(self, args, state, control, **kwargs):
        state.compute_steps(args, state.max_steps)  # the configured log/eval/save intervals, not the checkpoint's

    def on_step_end(self, args, state, control, **kwargs):
        self.run.global_step, self.run.tokens_trained = state.global_step, state.num_input_tokens_seen
        self.run.samples_trained += samples_per_step(args)
        if control.should_save and args.should_save:
            self.finish_hashing()
            warn_if_disk_is_short(Path(args.output_dir), self.checkpoint_bytes)

    def on_save(self, args, state, control, **kwargs):
        if args.should_save:
            self.finish_hashing()
            folder = Path(args.output_dir) / f"{CHECKPOINT_PREFIX}{state.global_step}"
            write_run_files(Path(args.output_dir), self.config, self.run.to_dict())
            write_run_files(folder, self.config, self.run.to_dict())
            follow_umask(folder)
            self.checkpoint_bytes = bytes_in(folder)
            # last, while training goes on (BENCHMARKS.md): a checkpoint with its checksums is complete
            hasher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="checksums")
            self.hashing = hasher.submit(write_manifest, folder)
            hasher.shutdown(wait=False)  # its thread ends once the checksums are written

    def finish_hashing(self) -> None:
        """Wait for the checksums of the last checkpoint (before the next save, the end, or a failure's message);
        what stopped them, such as a full disk, is raised here, where the save failures are said."""
        hashing, self.hashing = self.hashing, None
        if hashing is not None:
            hashing.result()

    def on_train_end(self, args, state, control, **kwargs):
        self.finish_hashing()  # before the final save, a resume in the same process, or the exit


# --- the console ---------------------------------------------------------------------------------


class ConsoleLogCallback(TrainerCallback):
    """One line per log, e.g. `step 20/60 | loss 7.38 | lr 1.0e-03 | 2,345 tok/s | eta 0:40`, written
    through tqdm so that it never collides with the progress bar."""

    def on_train_begin(self, args, state, control, **kwargs):
        self.start, self.first_step = time.perf_counter(), state.global_step

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs and (line := self.format(state, logs)):
            log(line)

    def format(self, state, logs: dict) -> str | None:
        step = f"step {state.global_step}/{state.max_steps}"
        if "loss" in logs:
            parts = [step, f"loss {logs['loss']:.4g}", f"lr {logs.get('learning_rate', 0):.1e}"]
            if "grad_norm" in logs:
                parts.append(f"grad norm {logs['grad_norm']:.3g}")
            if "tokens_per_second" in logs:
                parts.append(f"{logs['tokens_per_second']:,.0f} tok/s")
            if "mfu" in logs:
                parts.append(f"MFU {logs['mfu']:.1%}")
            if "peak_memory_gb" in logs:
                parts.append(f"{logs['peak_memory_gb']:.1f} GB")
            done = state.global_step - self.first_step
            if done > 0:
                eta = (time.perf_counter() - self.start) / done * (state.max_steps - state.global_step)
                parts.append(f"eta {format_duration(eta)}")
            return " | ".join(parts)
        if "eval_loss" in logs:
            return f"{step} | eval loss {logs['eval_loss']:.4g} | eval ppl {logs.get('eval_perplexity', 0):,.1f}"
        if "train_runtime" in logs:
            ended = "done in" if state.global_step >= state.max_steps else "stopped after"
            return (
                f"{step} | {ended} {format_duration(logs['train_runtime'])} | "
                f"average train loss {logs.get('train_loss', float('nan')):.4g}"
            )
        return None


# --- progress on a CPU ---------------------------------------------------------------------------


def warn_if_cpu_run_is_long(trainer, checked) -> None:
    """On a CPU, a config meant for a GPU says so before it starts, and the first step gives an estimate."""
    if torch.cuda.is_available() or checked.n_params < 50_000_000:
        return
    steps = checked.args.max_steps
    log(
        f"cpu: this is a GPU run ({checked.n_params / 1e6:.0f}M parameters, {steps:,} steps); the first step "
        "gives an estimate of the whole run. For minutes on a CPU: python train.py --config config_quickstart.yaml"
    )
    trainer.add_callback(FirstStepEstimate())


class FirstStepEstimate(TrainerCallback):
    """After the first optimizer step: how long the whole run would take at that pace."""

    start: float | None = None

    def on_step_begin(self, args, state, control, **kwargs):
        self.start = self.start or time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        if self.start is None or getattr(self, "done", False):
            return
        self.done, seconds = True, time.perf_counter() - self.start
        left = state.max_steps - state.global_step
        log(
            f"cpu: the first step took {format_duration(seconds)}; the {left:,} steps left would take about "
            f"{format_duration(seconds * left)} here"
        )


class ProgressBar(ProgressCallback):
    """transformers' progress bar, without its printing of each log as a dict (ConsoleLogCallback does that), and
    without a second bar for each evaluation: its result is one line."""

    def on_log(self, *args, **kwargs): ...

    def on_prediction_step(self, *args, **kwargs): ...


# --- throughput ----------------------------------------------------------------------------------


class ThroughputMonitor(TrainerCallback):
    """Tokens/s, MFU and peak memory of each logging window; RecipeTrainer.log adds them to the logs.

    A window runs by the wall clock from the start of its first optimizer step to the end of the step that
    logs, data loading included. Evaluation, saving and samples come after that step, so they fall between
    windows. The GPU is synchronized at the two ends of a window only: the figures count the work the GPU
    did, not the time it took to queue it, at the cost of two syncs per window."""

    def __init__(self, model, seq_len: int, samples_every: int = 0):
        config = model.config
        n_params = sum(p.numel() for p in model.parameters())
        self.flops_per_token = flops_per_token(n_params, config.num_hidden_layers, config.hidden_size, seq_len)
        self.seq_len, self.samples_every = seq_len, samples_every
        self.steps, self.seconds = 0, 0.0
        self.window_start, self.window_steps = None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.tokens_per_step = samples_per_step(args) * self.seq_len
        self.world_size = args.world_size
        self.peak = peak_bf16_flops(args.device) if args.bf16 else None
        self.device = args.device
        if args.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(args.device)

    def on_step_begin(self, args, state, control, **kwargs):
        if self.window_start is None:
            self.synchronize()
            self.window_start, self.window_steps = time.perf_counter(), 0

    def on_step_end(self, args, state, control, **kwargs):
        if self.window_start is None:
            return
        self.window_steps += 1
        samples_next = self.samples_every and state.global_step % self.samples_every == 0
        if control.should_log or control.should_evaluate or control.should_save or samples_next:
            self.synchronize()
            self.seconds += time.perf_counter() - self.window_start
            self.steps += self.window_steps
            self.window_start = None

    def synchronize(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def measure(self) -> dict[str, float]:
        if not self.steps or not self.seconds:
            return {}
        tokens_per_second = self.steps * self.tokens_per_step / self.seconds
        self.steps, self.seconds = 0, 0.0
        metrics = {
            "tokens_per_second": round(tokens_per_second, 1),
            "tokens_per_second_per_device": round(tokens_per_second / self.world_size, 1),
        }
        if self.peak:
            metrics["mfu"] = round(tokens_per_second / self.world_size * self.flops_per_token / self.peak, 4)
        if self.device.type == "cuda":
            metrics["peak_memory_gb"] = round(torch.cuda.max_memory_allocated(self.device) / 2**30, 2)
        return metrics
