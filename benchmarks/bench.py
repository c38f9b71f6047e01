"""Measure steady-state training throughput of the recipe for a config (benchmarks/data_timings.py: the data).

    python benchmarks/bench.py                                   # the YAML as it is (the shipped tokenizer and corpus)
    python benchmarks/bench.py --vs-baseline data.block_size=512 training.per_device_train_batch_size=1 ...

Runs `--warmup` + `--steps` optimizer steps of the recipe's Trainer (no eval, no saving, no samples) and
reports the median step time of the steps after warm-up: tokens/s, step time, MFU (GPU, bf16) and peak
memory. `--vs-baseline` runs, in the same process and on the same blocks, a minimal hand-written PyTorch
loop for the same model and settings (forward, loss, backward, clipping, AdamW step, same autocast and
gradient checkpointing) and prints the ratio recipe/baseline.
"""

from __future__ import annotations

import contextlib
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import PrinterCallback, TrainerCallback, set_seed

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the clone: data.py and the recipe package
from data import collator_for, load_tokenizer, prepare_datasets
from recipe import arguments, cli
from recipe import model as modeling
from recipe.config import load_config
from recipe.trainer import RecipeTrainer


@dataclass
class Measurement:
    name: str
    step_seconds: list[float]
    tokens_per_step: int
    flops_per_token: int
    peak_flops: float | None
    peak_memory_gb: float | None

    @property
    def median_step(self) -> float:
        return statistics.median(self.step_seconds)

    @property
    def tokens_per_second(self) -> float:
        return self.tokens_per_step / self.median_step

    @property
    def mfu(self) -> float | None:
        return self.tokens_per_second * self.flops_per_token / self.peak_flops if self.peak_flops else None

    def row(self) -> str:
        mfu = f"{self.mfu:.1%}" if self.mfu is not None else "n/a"
        memory = f"{self.peak_memory_gb:.2f}" if self.peak_memory_gb is not None else "n/a"
        return f"| {self.name} | {self.tokens_per_second:,.0f} | {self.median_step:.3f} | {mfu} | {memory} |"


class StepTimer(TrainerCallback):
    def __init__(self):
        self.seconds: list[float] = []

    def on_step_begin(self, args, state, control, **kwargs):
        synchronize(args.device)
        self.start = time.perf_counter()

    def on_step_end(self, args, state, control, **kwargs):
        synchronize(args.device)
        self.seconds.append(time.perf_counter() - self.start)


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def reset_memory(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats(device)
    else:
        with contextlib.suppress(OSError):
            Path("/proc/self/clear_refs").write_text("5")  # Linux: the peak resident memory starts again from now


def peak_memory(device: torch.device) -> float | None:
    """GiB: the GPU's peak allocated memory, or on the CPU the process's peak resident memory (Linux)."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    with contextlib.suppress(OSError, StopIteration):
        status = Path("/proc/self/status").read_text().splitlines()
        return int(next(line for line in status if line.startswith("VmHWM")).split()[1]) / 2**20
    return None


def bench_recipe(cfg, blocks, collate, warmup: int, steps: int, keep_freed_memory: bool = True) -> Measurement:
    with tempfile.TemporaryDirectory() as out:
        args = arguments.build_training_arguments(
            cfg,
            *model_size(cfg),
            quiet=True,
            output_dir=out,
            max_steps=warmup + steps,
            eval_strategy="no",
            save_strategy="no",
            report_to="none",
            logging_steps=warmup + steps,
            logging_first_step=False,
            disable_tqdm=True,
        )
        if not keep_freed_memory and args.device.type == "cpu":
            arguments.keep_freed_memory(False)  # glibc's defaults, for the pair of --allocator
        model = build(cfg, args)
        timer = StepTimer()
        reset_memory(args.device)
        trainer = RecipeTrainer(model=model, args=args, train_dataset=blocks, data_collator=collate, callbacks=[timer])
        trainer.remove_callback(PrinterCallback)  # the table says it; not the Trainer's dict of strings
        trainer.train()
        name = f"recipe (Trainer): {switches(cfg, args, model)}"
        result = measurement(name, timer.seconds[warmup:], args, model, cfg)
        arguments.keep_freed_memory(True)
        return result


def switches(cfg, args, model) -> str:
    """The fast-path settings of a run, for the table."""
    parts = [
        model.config._attn_implementation,
        "bf16" if args.bf16 else "fp32",
        f"checkpointing {'on' if args.gradient_checkpointing else 'off'}",
    ]
    if args.torch_compile:
        parts.append("compile")
    if cfg.data.document_aware:
        parts.append("document-aware")
    if args.use_liger_kernel:
        off = sorted(k for k, v in (args.liger_kernel_config or {}).items() if v is False)
        parts.append(f"liger (without {', '.join(off)})" if off else "liger")
    return ", ".join(parts)


def model_size(cfg) -> tuple:
    """The model config and parameter count, which `auto` switches are chosen from, as in train.py."""
    config = modeling.build_llama_config(cfg)
    return config, sum(p.numel() for p in modeling.build_meta_model(config).parameters())


def build(cfg, args):
    """The model exactly as train.py builds it."""
    set_seed(args.seed)
    attn = modeling.choose_attn_implementation(cfg.attn_implementation, cfg.data.document_aware)
    return modeling.build_model(cfg, modeling.build_llama_config(cfg), attn)


def measurement(name: str, seconds: list[float], args, model, cfg) -> Measurement:
    config = model.config
    n_params = sum(p.numel() for p in model.parameters())
    return Measurement(
        name=name,
        step_seconds=seconds,
        tokens_per_step=arguments.samples_per_step(args) * cfg.data.block_size,
        flops_per_token=modeling.flops_per_token(
            n_params, config.num_hidden_layers, config.hidden_size, cfg.data.block_size
        ),
        peak_flops=modeling.peak_bf16_flops(args.device) if args.bf16 else None,
        peak_memory_gb=peak_memory(args.device),
    )


def bench_baseline(cfg, blocks, collate, warmup: int, steps: int) -> Measurement:
    """The same model and settings (checkpointing, Liger, torch.compile, autocast) in a plain PyTorch loop:
    the floor the Trainer should be close to."""
    args = arguments.build_training_arguments(
        cfg, *model_size(cfg), output_dir=tempfile.gettempdir(), report_to="none", quiet=True
    )
    device = args.device
    model = build(cfg, args).to(device)
    if args.gradient_checkpointing:
        model.activation_checkpointing_enable(activation_checkpointing_kwargs=args.activation_checkpointing_kwargs)
    if args.use_liger_kernel:  # as the Trainer applies them
        from liger_kernel.transformers import _apply_liger_kernel_to_instance

        _apply_liger_kernel_to_instance(model=model, **(args.liger_kernel_config or {}))
    model.train()
    forward = (
        torch.compile(model, backend=args.torch_compile_backend, mode=args.torch_compile_mode)
        if args.torch_compile
        else model
    )
    decay = [p for n, p in model.named_parameters() if p.ndim >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.ndim < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.learning_rate,
        betas=(args.adam_beta1, args.adam_beta2),
        eps=args.adam_epsilon,
        fused="fused"
        in getattr(args.optim, "value", str(args.optim)),  # the enum's str() is OptimizerNames.ADAMW_TORCH_FUSED
    )
    micro, accum = args.per_device_train_batch_size, args.gradient_accumulation_steps
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if args.bf16 else contextlib.nullcontext()
    reset_memory(device)
    seconds, index = [], 0
    for _ in range(warmup + steps):
        synchronize(device)
        start = time.perf_counter()
        for _ in range(accum):
            batch = collate([blocks[(index + i) % len(blocks)] for i in range(micro)])
            index += micro
            with autocast:
                loss = forward(**{k: v.to(device) for k, v in batch.items()}).loss
            (loss / accum).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), args.max_grad_norm)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    name = f"baseline (plain PyTorch loop): {switches(cfg, args, model)}"
    return measurement(name, seconds[warmup:], args, model, cfg)


def environment() -> str:
    import transformers

    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    return f"{device}; torch {torch.__version__}, transformers {transformers.__version__}"


@cli.command("stopped; nothing measured")
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("benchmarks/bench.py", __doc__)
    parser.add_argument("--config", default=None)
    parser.add_argument("--steps", type=int, default=5, help="measured optimizer steps (median is reported)")
    parser.add_argument("--warmup", type=int, default=2, help="optimizer steps excluded from the measurement")
    parser.add_argument("--vs-baseline", action="store_true", help="also time a hand-written PyTorch loop")
    parser.add_argument(
        "--allocator",
        action="store_true",
        help="CPU: the recipe with freed memory returned to the kernel too (glibc's defaults)",
    )
    parser.add_argument("overrides", nargs="*")
    args = parser.parse(argv)
    cfg = load_config(args.config, args.overrides)
    cfg.samples.every_n_steps = 0
    tokenizer = load_tokenizer(cfg.tokenizer)
    splits, _ = prepare_datasets(cfg.data, tokenizer)
    needed = (args.warmup + args.steps) * arguments.sequences_per_step(cfg.training)
    blocks = splits["train"].select(range(min(needed, len(splits["train"]))))
    collate = collator_for(cfg.data, tokenizer)
    results = []
    if args.allocator:  # first: what the kept memory costs shows in the peak of the runs after it
        returned = bench_recipe(cfg, blocks, collate, args.warmup, args.steps, keep_freed_memory=False)
        returned.name = returned.name.replace("recipe (Trainer)", "recipe, freed memory returned")
        results.append(returned)
    results.append(bench_recipe(cfg, blocks, collate, args.warmup, args.steps))
    if args.vs_baseline:
        results.append(bench_baseline(cfg, blocks, collate, args.warmup, args.steps))
    m = results[-1]
    print(f"\n{environment()}")
    print(
        f"{m.flops_per_token:,} training FLOPs per token (6N + 12·L·d·T); {m.tokens_per_step:,} tokens per "
        f"optimizer step; median of {args.steps} steps after {args.warmup} warm-up steps"
    )
    print("| run | tokens/s | step time (s) | MFU | peak memory (GB) |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for result in results:
        print(result.row())
    for result in results:
        print(f"step times (s), {result.name.split(':')[0]}: " + " ".join(f"{s:.3f}" for s in result.step_seconds))
    recipe = results[int(args.allocator)]
    if args.allocator:
        print(f"freed memory kept / returned (tokens/s): {recipe.tokens_per_second / results[0].tokens_per_second:.2f}")
    if args.vs_baseline:
        print(f"ratio recipe/baseline (tokens/s): {recipe.tokens_per_second / results[-1].tokens_per_second:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
