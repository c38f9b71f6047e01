"""Trainer callbacks of the recipe.

- `SampleGenerationCallback`: text samples every N steps (console, samples.jsonl, wandb table).
- `ResumedRunCallback`: after a checkpoint is loaded, put back the configured log/eval/save intervals and,
  for the extra phase of `--resume`, hold the learning rate at a constant value.
- `GracefulInterruptCallback`: Ctrl-C / SIGTERM saves a checkpoint of the current step, then stops.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import time
from pathlib import Path

import torch
from accelerate.utils import gather_object
from transformers import GenerationConfig, TrainerCallback

from config import SamplesConfig


def generation_config_for(samples: SamplesConfig, tokenizer) -> GenerationConfig:
    return GenerationConfig(
        max_new_tokens=samples.max_new_tokens,
        do_sample=samples.do_sample,
        temperature=samples.temperature if samples.do_sample else None,
        top_p=samples.top_p if samples.do_sample else None,
        top_k=samples.top_k if samples.do_sample else None,
        pad_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
    )


@torch.no_grad()
def generate_samples(model, tokenizer, samples: SamplesConfig, bf16: bool = False) -> list[tuple[str, str]]:
    """Complete each prompt with a fixed seed; leaves the model's mode and the global RNG as they were."""
    was_training = model.training
    device = next(model.parameters()).device
    generation_config = generation_config_for(samples, tokenizer)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    cuda_devices = [device] if device.type == "cuda" else []
    results = []
    model.eval()
    try:
        with torch.random.fork_rng(devices=cuda_devices), autocast:
            torch.manual_seed(samples.seed)
            for prompt in samples.prompts:
                inputs = tokenizer(prompt, return_tensors="pt").to(device)
                output = model.generate(**inputs, generation_config=generation_config)
                completion = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
                results.append((prompt, completion))
    finally:
        model.train(was_training)
    return results


def uses_fsdp(args) -> bool:
    """FSDP from TrainingArguments or from an accelerate config (`accelerate launch --config_file fsdp.yaml`)."""
    return bool(getattr(args, "fsdp", None)) or os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")


class SampleGenerationCallback(TrainerCallback):
    """Every `samples.every_n_steps` optimizer steps and at the end, generate from each prompt."""

    def __init__(self, tokenizer, samples: SamplesConfig, output_dir: str, interrupted=lambda: False):
        self.tokenizer = tokenizer
        self.samples = samples
        self.path = Path(output_dir) / "samples.jsonl"
        self.interrupted = interrupted
        self.last_step = None
        self.rows: list[list] = []

    def on_step_end(self, args, state, control, model=None, **kwargs):
        every = self.samples.every_n_steps
        if every and state.global_step % every == 0:
            self.sample(args, state, model)

    def on_train_end(self, args, state, control, model=None, **kwargs):
        if self.samples.every_n_steps and state.global_step != self.last_step and not self.interrupted():
            self.sample(args, state, model)

    def sample(self, args, state, model) -> None:
        self.last_step = state.global_step
        if not self.samples.prompts or not state.is_world_process_zero or model is None:
            return
        if uses_fsdp(args):
            return  # sharded weights: generation would need every rank; use generate.py on the checkpoint
        results = generate_samples(model, self.tokenizer, self.samples, bf16=args.bf16)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a") as f:
            for prompt, completion in results:
                print(f"step {state.global_step} | {prompt} -> {completion!r}", flush=True)
                f.write(json.dumps({"step": state.global_step, "prompt": prompt, "completion": completion}) + "\n")
                self.rows.append([state.global_step, prompt, completion])
        self.log_wandb_table(args)

    def log_wandb_table(self, args) -> None:
        if "wandb" not in (args.report_to or []):
            return
        wandb = sys.modules.get("wandb")
        if wandb is None or wandb.run is None:
            return
        wandb.run.log({"samples": wandb.Table(columns=["step", "prompt", "completion"], data=list(self.rows))})


class ResumedRunCallback(TrainerCallback):
    """Runs after the Trainer has loaded a checkpoint (on_train_begin).

    The Trainer restores logging/eval/save intervals from the checkpoint's trainer_state.json; we put
    back the configured ones. With `constant_lr`, the scheduler restored from scheduler.pt (whose
    base_lrs would win over any new learning_rate) is turned into a constant one at that value, so the
    LR the optimizer uses and the LR that is logged are both `constant_lr` from the first step on.
    """

    def __init__(self, constant_lr: float | None = None):
        self.constant_lr = constant_lr

    def on_train_begin(self, args, state, control, optimizer=None, lr_scheduler=None, **kwargs):
        state.compute_steps(args, state.max_steps)
        if self.constant_lr is None or lr_scheduler is None:
            return
        lr = self.constant_lr
        scheduler = getattr(lr_scheduler, "scheduler", lr_scheduler)  # accelerate wraps it
        n = len(scheduler.base_lrs)
        scheduler.lr_lambdas = [_constant_factor] * n
        scheduler.base_lrs = [lr] * n
        scheduler._last_lr = [lr] * n
        for group in (optimizer or scheduler.optimizer).param_groups:
            group["lr"] = lr
            group["initial_lr"] = lr


def _constant_factor(_step: int) -> float:
    return 1.0


class GracefulInterruptCallback(TrainerCallback):
    """First Ctrl-C or SIGTERM: finish the current optimizer step, save a checkpoint, stop.
    A second signal exits at once."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.requested = False
        self.stopped_at: int | None = None
        self._previous = {}

    def on_train_begin(self, args, state, control, **kwargs):
        for sig in self.SIGNALS:
            try:
                self._previous[sig] = signal.signal(sig, self._handle)
            except ValueError:  # not the main thread: leave signals alone
                pass

    def _handle(self, signum, frame):
        if self.requested:
            self.restore_handlers()
            print("\nsecond interrupt: exiting now without saving", file=sys.stderr, flush=True)
            os._exit(128 + signum)
        self.requested = True
        print(
            f"\n{signal.Signals(signum).name} received: saving a checkpoint after this step "
            "(interrupt again to exit at once)",
            file=sys.stderr,
            flush=True,
        )

    def on_step_end(self, args, state, control, **kwargs):
        if self._any_rank_requested(args):
            self.requested = True
            self.stopped_at = state.global_step
            control.should_save = True
            control.should_training_stop = True

    def _any_rank_requested(self, args) -> bool:
        # every rank must stop at the same step, or the checkpoint's collectives would hang
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            flag = torch.tensor([1.0 if self.requested else 0.0], device=args.device)
            torch.distributed.all_reduce(flag)
            return bool(flag.item())
        return self.requested

    def on_train_end(self, args, state, control, **kwargs):
        self.restore_handlers()

    def restore_handlers(self):
        for sig, handler in self._previous.items():
            with contextlib.suppress(ValueError):
                signal.signal(sig, handler)
        self._previous = {}


class StreamPositionCallback(TrainerCallback):
    """Streaming: next to each checkpoint, where each process stands in its part of the stream
    (`stream_position.json`), so that --resume seeks the streams there instead of reading them again.
    RecipeTrainer hands it `latest`, the position after the last batch trained on."""

    FILE = "stream_position.json"

    def __init__(self):
        self.latest: dict | None = None

    def on_save(self, args, state, control, **kwargs):
        positions = gather_object([self.latest])  # every process's position, in rank order
        if not args.should_save or None in positions:  # nothing trained yet: --resume replays the stream
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        tmp = folder / f".{self.FILE}.tmp"
        tmp.write_text(json.dumps({"step": state.global_step, "processes": positions}))
        os.replace(tmp, folder / self.FILE)


# Peak dense bf16 tensor FLOP/s, matched against torch.cuda.get_device_name() (first match wins).
PEAK_BF16_FLOPS = [
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100", 989e12),
    ("H800", 989e12),
    ("GH200", 989e12),
    ("B200", 2250e12),
    ("A100", 312e12),
    ("A800", 312e12),
    ("L40S", 362e12),
    ("L4", 121e12),
    ("A10G", 125e12),
    ("A10", 125e12),
    ("RTX 4090", 165e12),
    ("RTX 3090", 71e12),
]


def peak_bf16_flops(device: torch.device) -> float | None:
    if device.type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((flops for key, flops in PEAK_BF16_FLOPS if key in name), None)


def flops_per_token(n_params: int, n_layers: int, hidden: int, seq_len: int) -> int:
    """Training FLOPs per token: 6N for the matmuls with the weights (forward 2N, backward 4N; a tied
    embedding counts once, as the LM head), plus 12·L·d·T for attention scores and values (PaLM, app. B)."""
    return 6 * n_params + 12 * n_layers * hidden * seq_len


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
        self.seq_len = seq_len
        self.samples_every = samples_every
        self.steps, self.seconds = 0, 0.0
        self.window_start, self.window_steps = None, 0

    def on_train_begin(self, args, state, control, **kwargs):
        self.tokens_per_step = args.world_size * args.per_device_train_batch_size
        self.tokens_per_step *= args.gradient_accumulation_steps * self.seq_len
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
