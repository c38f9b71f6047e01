"""Train SmolLM2-135M from scratch with the Hugging Face Trainer.

    python train.py                                    # the full run of config_smollm2_135M.yaml (a GPU run)
    python train.py --config config_quickstart.yaml    # the tiny model of the same recipe: minutes on a CPU
    python train.py training.max_steps=20 data.path=my.txt   # any key can be overridden
    python train.py --resume                           # continue: 50 more steps at lr/10 (or finish a crashed run)
    accelerate launch train.py                         # one or many GPUs

The recipe, in order (each step a function below `main`):
    config -> check everything that can fail before the data work -> lock the output folder -> data -> model
    -> Trainer -> train -> save `output_dir/final`.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from dataclasses import dataclass

import torch
from accelerate import PartialState
from transformers import PrinterCallback, ProgressCallback, TrainingArguments, set_seed

import arguments
import checkpoints
import model as modeling
from callbacks import (
    ConsoleLogCallback,
    GracefulInterruptCallback,
    ProgressBar,
    ResumedRunCallback,
    RunRecordCallback,
    SampleGenerationCallback,
    ThroughputMonitor,
    check_samples,
    uses_fsdp,
    warn_if_cpu_run_is_long,
)
from config import RecipeConfig, RecipeError, load_config, log
from data import collator_for, load_tokenizer, prepare_datasets, tokenizer_fingerprint
from streaming import StreamedBlocks, StreamPositionCallback, resume_stream
from trainer import RecipeTrainer

EXIT_INTERRUPTED = 130


def main(argv: list[str] | None = None, extra_callbacks=()) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        PartialState()  # which process this is, before anything logs
        tokenizer = load_tokenizer(cfg.tokenizer)
        plan = checkpoints.plan_resume(cfg, args.resume) if args.resume else None
        checked = check_before_work(cfg, tokenizer, plan)
        with lock_output_dir(cfg):
            if plan is None:
                checkpoints.refuse_to_overwrite(cfg)
            else:
                checkpoints.check_what_changed(plan, cfg, checked.fingerprints, args.resume_changed)
            splits = prepare_data(cfg, tokenizer)
            code = run_phase(cfg, checked, tokenizer, splits, plan, extra_callbacks)
            if code == 0 and should_offer_extra_phase(args) and (plan := ask_for_extra_phase(cfg)):
                code = run_phase(cfg, check_before_work(cfg, tokenizer, plan), tokenizer, splits, plan, extra_callbacks)
        return code
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # handlers for a graceful stop are installed only once training starts
        print("\ninterrupted before training started; nothing was saved", file=sys.stderr)
        return EXIT_INTERRUPTED


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config (default: config_smollm2_135M.yaml)")
    parser.add_argument("--resume", nargs="?", const="latest", default=None, metavar="CHECKPOINT",
                        help="continue from the latest checkpoint in training.output_dir, or from CHECKPOINT")  # fmt: skip
    parser.add_argument("--resume-changed", action="store_true",
                        help="resume although the model, tokenizer or data differ from the checkpoint's")  # fmt: skip
    parser.add_argument("--no-prompt", action="store_true", help="never ask to continue after the main run")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. training.max_steps=20")
    args = parser.parse_args(argv)
    if args.resume not in (None, "latest") and "=" in args.resume:
        args.overrides.insert(0, args.resume)  # `--resume training.max_steps=9` is an override, not a path
        args.resume = "latest"
    return args


# --- 1. check everything that can fail before the data work --------------------------------------


@dataclass
class Checked:
    """What was built to check the config, kept for the run: nothing of it holds memory."""

    llama_config: object
    n_params: int
    args: TrainingArguments
    phases: list[dict]
    fingerprints: dict


def check_before_work(cfg: RecipeConfig, tokenizer, plan: checkpoints.ResumePlan | None) -> Checked:
    """The model config and the model on the meta device, the TrainingArguments, optimizer and schedule,
    the samples' generation config, and the checkpoint to resume: built now, so a mistake costs seconds."""
    llama_config = modeling.build_llama_config(cfg, tokenizer)
    meta_model = modeling.build_meta_model(llama_config)
    n_params = sum(p.numel() for p in meta_model.parameters())
    changes = {} if plan is None else {"max_steps": plan.max_steps}
    if plan is not None and plan.extra_phase:
        changes["learning_rate"] = plan.constant_lr
    args = arguments.build_training_arguments(cfg, llama_config, n_params, **changes)
    arguments.check_optimizer_and_schedule(args)
    check_samples(cfg.samples, tokenizer, llama_config.max_position_embeddings)
    if plan is not None:
        checkpoints.verify_checkpoint(plan.checkpoint, meta_model.state_dict())
    fingerprints = {"tokenizer": tokenizer_fingerprint(tokenizer), "data.path": checkpoints.corpus_fingerprint(cfg.data)}
    return Checked(llama_config, n_params, args, checkpoints.phases_for(cfg, args, plan), fingerprints)


def lock_output_dir(cfg: RecipeConfig):
    """The main process holds output_dir's lock for the whole run; a second run into it stops in one line."""
    if not PartialState().is_main_process:
        return contextlib.nullcontext()
    return checkpoints.RunLock(cfg.training["output_dir"])


# --- 2. data --------------------------------------------------------------------------------------


def prepare_data(cfg: RecipeConfig, tokenizer):
    state = PartialState()
    with state.main_process_first():  # the main process tokenizes and caches; the others load the cache
        splits, stats = prepare_datasets(cfg.data, tokenizer, rank=state.process_index, world_size=state.num_processes)
    log(stats.summary())
    return splits


# --- 3. one phase: model, Trainer, train, save ---------------------------------------------------


def run_phase(cfg: RecipeConfig, checked: Checked, tokenizer, splits, plan, extra_callbacks=()) -> int:
    """Build the model and the Trainer, train (or resume), save final/. Returns the process exit code."""
    args = checked.args
    set_seed(args.seed)  # the same seed gives the same initial weights
    attn = modeling.choose_attn_implementation(cfg.attn_implementation, cfg.data.document_aware)
    model = modeling.build_model(cfg, checked.llama_config, attn, from_weights=plan is None)
    log(modeling.parameter_breakdown(model))
    log(arguments.describe_batch(args, cfg.data.block_size))
    if plan is not None:
        log(plan.describe())
    interrupt = GracefulInterruptCallback()
    trainer = build_trainer(cfg, checked, model, tokenizer, splits, plan, interrupt, extra_callbacks)
    warn_if_cpu_run_is_long(trainer, checked)
    return train_and_save(cfg, checked, trainer, plan, interrupt)


def build_trainer(cfg, checked: Checked, model, tokenizer, splits, plan, interrupt, extra_callbacks=()):
    args = checked.args
    stream = splits["train"] if isinstance(splits["train"], StreamedBlocks) else None
    stream_position = StreamPositionCallback() if stream is not None else None
    if stream is not None and plan is not None:
        resume_stream(stream, plan.checkpoint, args)
    if plan is not None and stream is None:
        args.ignore_data_skip = True  # the block order resumes by samples (trainer.BlockOrder), not by batches
    start_sample = start_sample_of(plan, args)
    throughput = ThroughputMonitor(model, cfg.data.block_size, samples_every=cfg.samples.every_n_steps)
    checkpoint_bytes = 12 * checked.n_params  # fp32 weights and two optimizer moments, until one is measured
    callbacks = [
        throughput,
        ResumedRunCallback(constant_lr=plan.constant_lr if plan else None),
        SampleGenerationCallback(tokenizer, cfg.samples, args.output_dir, interrupted=lambda: interrupt.requested),
        RunRecordCallback(cfg, checked.phases, checked.fingerprints, start_sample, checkpoint_bytes),
        interrupt,
        ConsoleLogCallback(),
        *([stream_position] if stream_position is not None else []),
        *extra_callbacks,
    ]
    trainer = RecipeTrainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=tokenizer,
        data_collator=collator_for(cfg.data, tokenizer),
        callbacks=callbacks,
        start_sample=start_sample,
        throughput=throughput,
        stream_position=stream_position,
    )
    trainer.remove_callback(PrinterCallback)  # ConsoleLogCallback prints the logs, one line each
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(ProgressBar)
    if uses_fsdp(args) and not trainer.is_fsdp_enabled and not torch.cuda.is_available():
        log("FSDP: accelerate does not shard on CPU; the processes train as plain data parallel (DDP over gloo)")
    return trainer


def start_sample_of(plan, args: TrainingArguments) -> int:
    """Where the resumed run starts in the block order: the samples the checkpoint trained on."""
    if plan is None:
        return 0
    if plan.samples_seen is not None:
        return plan.samples_seen
    per_step = args.world_size * args.per_device_train_batch_size * args.gradient_accumulation_steps
    log(f"resume: {plan.checkpoint.name} does not record its samples; assuming {per_step} per step as now")
    return plan.step * per_step


def train_and_save(cfg: RecipeConfig, checked: Checked, trainer, plan, interrupt) -> int:
    args = trainer.args
    arguments.make_wandb_dir()
    if args.should_save:
        checkpoints.write_run_files(cfg, checked.phases, args.output_dir)
    try:
        result = trainer.train(resume_from_checkpoint=str(plan.checkpoint) if plan else None)
        if interrupt.stopped_at is not None:
            log(
                f"interrupted at step {interrupt.stopped_at}: saved checkpoint-{interrupt.stopped_at} in "
                f"{args.output_dir}; continue with: python train.py --resume [same overrides]"
            )
            return EXIT_INTERRUPTED
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        final = checkpoints.save_final_model(trainer, args.output_dir, cfg, checked.phases)
    except OSError as e:
        raise checkpoints.save_failed(e, trainer) from None
    finally:
        interrupt.restore_handlers()
    log(f"saved the final model to {final}")
    return 0


# --- after the main run --------------------------------------------------------------------------


def should_offer_extra_phase(args: argparse.Namespace) -> bool:
    return not args.no_prompt and PartialState().num_processes == 1 and sys.stdin.isatty() and sys.stdout.isatty()


def ask_for_extra_phase(cfg: RecipeConfig) -> checkpoints.ResumePlan | None:
    """After the main run, in a terminal: offer the extra phase of --resume in the same process."""
    latest, _ = checkpoints.find_latest_checkpoint(cfg.training["output_dir"])
    if latest is None:  # e.g. save_strategy=no
        return None
    factor = f"lr/{1 / cfg.resume.lr_factor:g}" if cfg.resume.lr_factor < 1 else f"lr x {cfg.resume.lr_factor:g}"
    print(f"Continue from {latest.name} for {cfg.resume.extra_steps} more steps at {factor}? [y/N] ", end="", flush=True)
    try:
        answer = input()
    except (EOFError, KeyboardInterrupt):
        print()
        return None
    return checkpoints.plan_resume(cfg, str(latest)) if answer.strip().lower() in ("y", "yes") else None


if __name__ == "__main__":
    sys.exit(main())
