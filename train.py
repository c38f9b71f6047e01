"""Train SmolLM2-135M from scratch with the Hugging Face Trainer.

    python train.py                                    # the full run of config_smollm2_135M.yaml (a GPU run)
    python train.py --config config_quickstart.yaml    # the tiny model of the same recipe: minutes on a CPU
    python train.py training.max_steps=20 data.path=my.txt   # any key can be overridden
    python train.py --resume                           # continue: 50 more steps at lr/10 (or finish a crashed run)
    accelerate launch train.py                         # one or many GPUs

The recipe, in order (each step a function below `main`): config -> check everything that can fail before the
data work -> lock the run folder and claim it for this run -> data -> model -> Trainer -> train -> save final/.
"""

from __future__ import annotations

import contextlib
import sys
from dataclasses import dataclass, replace

import callbacks
from data import collator_for, load_tokenizer, prepare_datasets, tokenizer_fingerprint
from recipe import arguments, card, cli, resume
from recipe import model as modeling
from recipe.cli import log
from recipe.config import RecipeConfig, load_config
from recipe.corpus import find_corpus, fingerprint
from recipe.run_folder import RunFolder, RunLock, write_run_files
from recipe.run_state import RunState
from recipe.sampling import check_samples
from recipe.streaming import StreamedBlocks, StreamPositionCallback, resume_stream
from recipe.trainer import RecipeTrainer, save_failed

import torch
from accelerate import PartialState
from transformers import PrinterCallback, ProgressCallback, TrainingArguments, set_seed
from transformers.utils import logging as transformers_logging

EXIT_INTERRUPTED = cli.EXIT_INTERRUPTED


@cli.command("stopped before training; no checkpoint was saved")
def main(argv: list[str] | None = None, extra_callbacks=()) -> int:
    transformers_logging.disable_progress_bar()  # no bar for each save's "Writing model shards": seconds of work
    transformers_logging.get_logger("transformers.trainer_utils").setLevel("ERROR")  # resume.py says what changed
    args = parse_args(argv)
    cfg = load_config(args.config, args.overrides)
    PartialState(cpu=arguments.on_cpu(cfg.training))  # which process this is, before anything logs
    folder = RunFolder(cfg.training["output_dir"])
    cfg.training["output_dir"] = str(folder.path)  # resolved once: the Trainer and every check use this path
    tokenizer = load_tokenizer(cfg.tokenizer)
    checked = check_before_work(cfg, tokenizer, folder, args.resume)
    with RunLock(folder) if PartialState().is_main_process else contextlib.nullcontext():  # one run a folder
        run = resume.claim(folder, checked.plan, cfg, checked.run, args.resume_changed)
        splits, sources = prepare_data(cfg, tokenizer, checked)
        code = run_phase(cfg, checked, replace(run, sources=sources), tokenizer, splits, extra_callbacks)
        offer = should_offer_extra_phase(args)  # the extra phase is offered once; a planned extension comes unasked
        while code == 0 and (latest := resume.next_phase_due(cfg, folder, offer)):
            offer = False
            checked = check_before_work(cfg, tokenizer, folder, latest)
            run = resume.claim(folder, checked.plan, cfg, checked.run, False)
            code = run_phase(cfg, checked, replace(run, sources=sources), tokenizer, splits, extra_callbacks)
    return code


def parse_args(argv: list[str] | None = None):
    parser = cli.parser("train.py", __doc__)
    parser.add_argument("--config", help="YAML config (default: config_smollm2_135M.yaml)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        metavar="CHECKPOINT",
        help="continue from the latest checkpoint in training.output_dir, CHECKPOINT, or hub",
    )
    parser.add_argument(
        "--resume-changed",
        action="store_true",
        help="resume although the model, tokenizer or data differ from the checkpoint's",
    )
    parser.add_argument("--no-prompt", action="store_true", help="never ask to continue after the main run")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. training.max_steps=20")
    args = parser.parse(argv)
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
    plan: resume.ResumePlan | None
    run: RunState  # the run this phase continues (or starts), its id still to be claimed


def check_before_work(cfg: RecipeConfig, tokenizer, folder: RunFolder, resume_from: str | None) -> Checked:
    """The model config and the model on the meta device, the phase to train, the TrainingArguments, optimizer
    and schedule, the samples' generation config, the checkpoint's files and tensors: a mistake costs seconds."""
    llama_config = modeling.build_llama_config(cfg, tokenizer)
    meta_model = modeling.build_meta_model(llama_config)
    n_params = sum(p.numel() for p in meta_model.parameters())
    args = arguments.build_training_arguments(cfg, llama_config, n_params)
    arguments.check_optimizer_and_schedule(args)
    check_samples(cfg.samples.prompts, cfg.samples.sampling(), tokenizer, llama_config.max_position_embeddings)
    plan = resume.plan_resume(cfg, resume_from, folder, args) if resume_from else None
    if plan is not None:
        args.max_steps = plan.max_steps  # the phase's last step; the schedule of each phase is the run state's
        resume.verify_checkpoint(plan, meta_model.state_dict())
    corpora = {key: (find_corpus(spec.path, key), spec) for key, spec in cfg.data.specs().items()}  # each source's
    fingerprints = {"tokenizer": tokenizer_fingerprint(tokenizer), **{k: fingerprint(*c) for k, c in corpora.items()}}
    run = resume.run_state(cfg, args, plan, [c for c, _ in corpora.values()], fingerprints)
    return Checked(llama_config, n_params, args, plan, run)


# --- 2. data --------------------------------------------------------------------------------------


def prepare_data(cfg: RecipeConfig, tokenizer, checked: Checked):  # the blocks, and the run record's sources
    state, drawn = PartialState(), checked.args.max_steps * arguments.samples_per_step(checked.args)
    with state.main_process_first():  # the main process tokenizes and caches; the others load the cache
        splits, stats = prepare_datasets(
            cfg.data, tokenizer, rank=state.process_index, world_size=state.num_processes, drawn=drawn
        )
    log(stats.summary())
    return splits, stats.sources or []


# --- 3. one phase: model, Trainer, train, save ---------------------------------------------------


def run_phase(cfg: RecipeConfig, checked: Checked, run: RunState, tokenizer, splits, extra_callbacks=()) -> int:
    """Build the model and the Trainer, train (or resume), save final/. Returns the process exit code."""
    plan = checked.plan
    set_seed(checked.args.seed)  # the same seed gives the same initial weights
    attn = modeling.choose_attn_implementation(cfg.attn_implementation, cfg.data.document_aware)
    model = modeling.build_model(cfg, checked.llama_config, attn, from_weights=plan is None)
    log(modeling.parameter_breakdown(model))
    log(arguments.describe_batch(checked.args, cfg.data.block_size, getattr(splits["train"], "num_rows", None)))
    if plan is not None:
        log(plan.describe())
    interrupt = callbacks.GracefulInterruptCallback()
    run_record = callbacks.RunRecordCallback(cfg.to_dict(), run, 12 * checked.n_params)
    trainer = build_trainer(cfg, checked, run_record, model, tokenizer, splits, interrupt, extra_callbacks)
    callbacks.warn_if_cpu_run_is_long(trainer, checked)
    return train_and_save(trainer, run_record, interrupt, plan)


def build_trainer(cfg, checked: Checked, run_record, model, tokenizer, splits, interrupt, extra_callbacks=()):
    args, plan = checked.args, checked.plan
    stream = splits["train"] if isinstance(splits["train"], StreamedBlocks) else None
    if stream is not None and plan is not None:
        resume_stream(stream, plan.run.stream_positions, plan.checkpoint.name, args)
    if plan is not None and stream is None:
        args.ignore_data_skip = True  # the block order resumes by samples (trainer.BlockOrder), not by batches
    throughput = callbacks.ThroughputMonitor(model, cfg.data.block_size, samples_every=cfg.samples.every_n_steps)
    stream_position = StreamPositionCallback(run_record.run) if stream is not None else None
    trainer_callbacks = [
        throughput,
        callbacks.SampleGenerationCallback(tokenizer, cfg.samples, args.output_dir, lambda: interrupt.requested),
        run_record,
        interrupt,
        *([stream_position] if stream_position is not None else []),  # after the interrupt, which may save this step
        callbacks.ConsoleLogCallback(),
        *extra_callbacks,
    ]
    trainer = RecipeTrainer(
        model=model,
        args=args,
        train_dataset=splits["train"],
        eval_dataset=splits["validation"],
        processing_class=tokenizer,
        data_collator=collator_for(cfg.data, tokenizer),
        callbacks=trainer_callbacks,
        run_state=run_record.run,
        throughput=throughput,
        stream_position=stream_position,
    )
    trainer.remove_callback(PrinterCallback)  # ConsoleLogCallback prints the logs, one line each
    if trainer.pop_callback(ProgressCallback) is not None:
        trainer.add_callback(callbacks.ProgressBar)
    if callbacks.uses_fsdp(args) and not trainer.is_fsdp_enabled and not torch.cuda.is_available():
        log("FSDP: accelerate does not shard on CPU; the processes train as plain data parallel (DDP over gloo)")
    return trainer


def train_and_save(trainer: RecipeTrainer, run_record: callbacks.RunRecordCallback, interrupt, plan) -> int:
    args = trainer.args
    arguments.make_wandb_dir()
    if args.should_save:  # only now, after every check: the run record of this phase
        write_run_files(RunFolder(args.output_dir).path, run_record.config, run_record.run.to_dict())
    try:
        result = trainer.train(resume_from_checkpoint=str(plan.checkpoint) if plan else None)
        if interrupt.stopped_at is not None:
            log(
                f"interrupted at step {interrupt.stopped_at}: saved checkpoint-{interrupt.stopped_at} in "
                f"{args.output_dir}; continue with: {resume.command()}"
            )
            return EXIT_INTERRUPTED
        trainer.save_metrics("train", result.metrics)
        trainer.save_state()
        final = trainer.save_final(run_record.config, run_record.run.to_dict(), card.push_final)
    except OSError as e:
        with contextlib.suppress(OSError):
            run_record.finish_hashing()  # the checkpoint before the failure: complete, or not, before it is named
        raise save_failed(e, trainer) from None
    finally:
        interrupt.uninstall()
    log(f"saved the final model to {final}")
    return 0


def should_offer_extra_phase(args) -> bool:
    """After a phase, in a terminal: `resume.next_phase_due` may offer the extra phase in the same process."""
    return not args.no_prompt and PartialState().num_processes == 1 and sys.stdin.isatty() and sys.stdout.isatty()


if __name__ == "__main__":
    sys.exit(main())
