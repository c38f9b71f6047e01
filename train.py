"""Train SmolLM2-135M from scratch with the Hugging Face Trainer.

    python train.py                                   # the full run of config_smollm2_135M.yaml
    python train.py training.max_steps=20 data.path=my.txt   # any key can be overridden
    python train.py --resume                          # continue: 50 more steps at lr/10 (or finish a crashed run)
    accelerate launch train.py                        # one or many GPUs

Steps, in order: config -> tokenizer -> data -> model -> Trainer -> train -> save `output_dir/final`.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import signal
import sys
import zipfile
from dataclasses import dataclass
from functools import partial
from pathlib import Path

import torch
import yaml
from accelerate.data_loader import prepare_data_loader
from torch.utils.data import DataLoader
from transformers import AutoModelForCausalLM, LlamaConfig, Trainer, TrainingArguments, set_seed
from transformers.masking_utils import causal_mask_function, sdpa_mask
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR

from callbacks import (
    GracefulInterruptCallback,
    ResumedRunCallback,
    SampleGenerationCallback,
    StreamPositionCallback,
    ThroughputMonitor,
)
from config import RecipeConfig, RecipeError, first_line, load_config
from data import StreamedBlocks, collator_for, load_tokenizer, prepare_datasets

EXIT_INTERRUPTED = 130
RECIPE_CONFIG_NAME = "recipe_config.yaml"


def is_main_process() -> bool:
    return int(os.environ.get("RANK", os.environ.get("LOCAL_RANK", "0"))) == 0


def world_size() -> int:
    return int(os.environ.get("WORLD_SIZE", "1"))


def log(message: str) -> None:
    if is_main_process():
        print(message, flush=True)


# --- command line --------------------------------------------------------------------------------


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", default=None, help="YAML config (default: config_smollm2_135M.yaml)")
    parser.add_argument(
        "--resume",
        nargs="?",
        const="latest",
        default=None,
        metavar="CHECKPOINT",
        help="continue from the latest checkpoint in training.output_dir, or from CHECKPOINT",
    )
    parser.add_argument("--no-prompt", action="store_true", help="never ask to continue after the main run")
    parser.add_argument("overrides", nargs="*", help="section.key=value, e.g. training.max_steps=20")
    args = parser.parse_args(argv)
    if args.resume not in (None, "latest") and "=" in args.resume and not os.path.exists(args.resume):
        args.overrides.insert(0, args.resume)  # `--resume training.max_steps=9` is an override, not a path
        args.resume = "latest"
    return args


# --- hardware ------------------------------------------------------------------------------------


def adapt_to_hardware(training: dict) -> None:
    """The same YAML runs on GPU and CPU: without CUDA, train on CPU, in bf16 only where the CPU has it."""
    if torch.cuda.is_available():
        return
    if not training.get("use_cpu"):
        training["use_cpu"] = True
        log("no CUDA GPU found: training on CPU (use_cpu=True)")
    if training.get("bf16") and not cpu_has_native_bf16():
        training["bf16"] = False
        log("this CPU has no native bf16 (AVX512-BF16/AMX): training in fp32, which is several times faster here")


def cpu_has_native_bf16() -> bool:
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "AMX" in torch.backends.cpu.get_cpu_capability()
    return "avx512_bf16" in flags or "amx_bf16" in flags


def choose_attn_implementation(requested: str, document_aware: bool = False) -> str:
    """flash_attention_2 where it can run, else SDPA; SDPA over blocks that keep no documents apart is the
    recipe's causal SDPA (`register_causal_sdpa`)."""
    if requested == "flash_attention_2":
        from transformers.utils import is_flash_attn_2_available

        if not (torch.cuda.is_available() and is_flash_attn_2_available()):
            why = "no CUDA GPU" if not torch.cuda.is_available() else "flash-attn is not installed"
            log(f"attention: flash_attention_2 unavailable ({why}), using sdpa")
            requested = "sdpa"
    if requested == "sdpa" and not document_aware:
        return register_causal_sdpa()
    return requested


CAUSAL_SDPA = "sdpa_causal"


def causal_sdpa_mask(batch_size, q_length, kv_length, q_offset=0, kv_offset=0, mask_function=None,
                     attention_mask=None, local_size=None, **kwargs):  # fmt: skip
    """No mask at all for a batch without padding (no attention_mask) and without a cache offset, so SDPA runs
    with is_causal=True on its flash kernels; anything else gets transformers' own SDPA mask.

    transformers decides this itself in eager mode, but under torch.compile it cannot: whether the position
    ids pack several documents is a question about tensor values, so it builds the full seq x seq mask, and
    attention with it took 2.7 times as long on an H100 (BENCHMARKS.md). The recipe knows the answer: without
    data.document_aware its batches never carry position ids."""
    if attention_mask is None and local_size is None and q_length == kv_length:
        return None
    return sdpa_mask(batch_size, q_length, kv_length, q_offset, kv_offset, mask_function or causal_mask_function,
                     attention_mask, local_size, **kwargs)  # fmt: skip


def register_causal_sdpa() -> str:
    """SDPA attention with `causal_sdpa_mask`, under its own name so that plain "sdpa" keeps its behaviour;
    the name is not saved with the model (config.json records no attention implementation)."""
    from transformers import AttentionInterface
    from transformers.integrations.sdpa_attention import sdpa_attention_forward
    from transformers.masking_utils import AttentionMaskInterface

    AttentionInterface.register(CAUSAL_SDPA, sdpa_attention_forward)
    AttentionMaskInterface.register(CAUSAL_SDPA, causal_sdpa_mask)
    return CAUSAL_SDPA


# --- model ---------------------------------------------------------------------------------------


def build_llama_config(cfg: RecipeConfig, tokenizer=None) -> LlamaConfig:
    config = LlamaConfig(**cfg.model)
    if tokenizer is not None and len(tokenizer) > config.vocab_size:
        raise RecipeError(
            f"the tokenizer has {len(tokenizer):,} tokens but model.vocab_size is {config.vocab_size:,}: "
            f"set model.vocab_size={len(tokenizer)} or use the matching tokenizer"
        )
    return config


def build_model(cfg: RecipeConfig, config: LlamaConfig, attn_implementation: str, from_weights: bool = True):
    """A LlamaForCausalLM from scratch (or from `init_from` weights), in fp32: the Trainer autocasts."""
    if cfg.init_from and from_weights:
        return load_init_weights(cfg.init_from, config, attn_implementation)
    # from_config writes the attention choice into the config it is given: hand it a copy
    return AutoModelForCausalLM.from_config(copy.deepcopy(config), attn_implementation=attn_implementation)


def load_init_weights(name_or_path: str, config: LlamaConfig, attn_implementation: str):
    try:
        model = AutoModelForCausalLM.from_pretrained(
            name_or_path, attn_implementation=attn_implementation, dtype=torch.float32
        )
    except Exception as e:
        raise RecipeError(f"could not load init_from weights '{name_or_path}' ({type(e).__name__}): {e}") from None
    with torch.device("meta"):
        expected = AutoModelForCausalLM.from_config(copy.deepcopy(config))
    check_shapes(expected.state_dict(), model.state_dict(), f"init_from '{name_or_path}'")
    log(f"model: starting from the weights of {name_or_path}")
    return model


def check_shapes(expected: dict, found: dict, where: str) -> None:
    for name, tensor in expected.items():
        if name not in found:
            if name == "lm_head.weight":
                continue  # tied to the embedding
            raise RecipeError(f"{where} has no tensor '{name}': it was not made with this model config")
        if tuple(found[name].shape) != tuple(tensor.shape):
            raise RecipeError(
                f"{where}: tensor '{name}' has shape {tuple(found[name].shape)} but the config gives "
                f"{tuple(tensor.shape)}; use the config it was trained with"
            )


def parameter_breakdown(model) -> str:
    """The parameter count, split the way the seeds print it; a tied head adds nothing."""
    inner = model.model
    count = lambda module: sum(p.numel() for p in module.parameters())  # noqa: E731
    embedding = count(inner.embed_tokens)
    blocks = [count(layer) for layer in inner.layers]
    norm = count(inner.norm)
    tied = model.lm_head.weight is inner.embed_tokens.weight
    head = 0 if tied else model.lm_head.weight.numel()
    total = sum(p.numel() for p in model.parameters())
    layer = inner.layers[0]
    vocab, hidden = inner.embed_tokens.weight.shape
    lines = [
        f"model: LlamaForCausalLM with {total:,} parameters",
        f"  embedding      {embedding:>13,}  ({vocab:,} x {hidden})",
        f"  {len(blocks)} blocks      {sum(blocks):>13,}  ({blocks[0]:,} each: attention {count(layer.self_attn):,}, "
        f"MLP {count(layer.mlp):,}, norms {count(layer.input_layernorm) + count(layer.post_attention_layernorm):,})",
        f"  final norm     {norm:>13,}",
        f"  lm head        {head:>13,}  ({'tied to the embedding' if tied else 'untied'})",
    ]
    return "\n".join(lines)


# --- training arguments --------------------------------------------------------------------------


def training_arguments(cfg: RecipeConfig, **changes) -> TrainingArguments:
    kwargs = {**copy.deepcopy(cfg.training), **changes}
    adapt_to_hardware(kwargs)
    scheduler_kwargs = kwargs.get("lr_scheduler_kwargs")
    if isinstance(scheduler_kwargs, dict) and 0 < scheduler_kwargs.get("num_decay_steps", 1) < 1:
        # like warmup_steps, a value below 1 is a share of max_steps
        scheduler_kwargs["num_decay_steps"] = max(1, round(kwargs["max_steps"] * scheduler_kwargs["num_decay_steps"]))
    checkpointing = kwargs.get("activation_checkpointing", kwargs.get("gradient_checkpointing"))
    if checkpointing and not kwargs.get("activation_checkpointing_kwargs", kwargs.get("gradient_checkpointing_kwargs")):
        kwargs["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    if cfg.data.streaming and (kwargs.get("dataloader_num_workers") or 0) > 1:
        raise RecipeError(
            "data.streaming reads each process's stream in one place: set training.dataloader_num_workers to 1 "
            "(a worker reads ahead while the model trains) or 0"
        )
    if "wandb" in (kwargs.get("report_to") or []) or kwargs.get("report_to") in ("wandb", "all"):
        configure_wandb(kwargs["output_dir"])
    try:
        return TrainingArguments(**kwargs)
    except (ValueError, TypeError, ImportError) as e:
        raise RecipeError(f"training arguments: {first_line(e)}") from None


def configure_wandb(output_dir: str) -> None:
    """Never let wandb stop or prompt: without an API key, log offline and say where."""
    os.environ.setdefault("WANDB_PROJECT", "smollm2-recipe")
    os.environ.setdefault("WANDB_DIR", str(Path(output_dir).resolve()))
    Path(os.environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)
    if os.environ.get("WANDB_MODE") in ("offline", "disabled") or wandb_api_key_available():
        return
    os.environ["WANDB_MODE"] = "offline"
    log(
        f"wandb: no API key found, logging offline to {os.environ['WANDB_DIR']}/wandb "
        f"(upload later with: wandb sync {os.environ['WANDB_DIR']}/wandb/offline-run-*)"
    )


def wandb_api_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    import netrc

    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def describe_batch(args: TrainingArguments, block_size: int) -> str:
    n = args.world_size
    micro, accum = args.per_device_train_batch_size, args.gradient_accumulation_steps
    sequences = n * micro * accum
    return (
        f"batch: {n} process{'es' if n > 1 else ''} x {micro} sequences x {accum} accumulation = "
        f"{sequences:,} sequences = {sequences * block_size:,} tokens per step"
    )


# --- checkpoints and resume ----------------------------------------------------------------------


def checkpoint_step(path: Path) -> int | None:
    """The global step of a complete checkpoint, or None if it is incomplete or unreadable.

    The Trainer writes trainer_state.json last, so a readable one means the rest was written."""
    try:
        state = json.loads((path / "trainer_state.json").read_text())
        step = int(state["global_step"])
    except (OSError, ValueError, KeyError, TypeError):
        return None
    has_weights = any(p.name.startswith(("model", "pytorch_model")) for p in path.iterdir())
    return step if has_weights else None


def find_latest_checkpoint(output_dir: str) -> tuple[Path | None, list[Path]]:
    """(newest complete checkpoint, incomplete ones that were newer and skipped)."""
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


def verify_checkpoint(path: Path, model) -> None:
    """Fail with one line, before anything is written, if the checkpoint cannot be resumed."""
    from safetensors import safe_open

    weights = path / "model.safetensors"
    if weights.is_file():
        try:
            with safe_open(str(weights), framework="pt") as f:
                found = {name: torch.empty(f.get_slice(name).get_shape(), device="meta") for name in f.keys()}
        except Exception:
            raise RecipeError(f"checkpoint file {weights} is corrupt; resume from an earlier checkpoint") from None
        check_shapes(model.state_dict(), found, f"checkpoint {path.name}")
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
class ResumePlan:
    checkpoint: Path
    step: int
    max_steps: int
    constant_lr: float | None  # set for the extra phase

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


def refuse_to_overwrite(cfg: RecipeConfig) -> None:
    """A new run into a folder with checkpoints would mix two runs: --resume would later pick the wrong one."""
    output_dir = cfg.training["output_dir"]
    latest, _ = find_latest_checkpoint(output_dir)
    if latest is not None:
        raise RecipeError(
            f"{output_dir} already holds {latest.name}: continue it with --resume, or start a new run "
            "in another training.output_dir"
        )
    return None


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
    max_steps = cfg.training["max_steps"]
    if step < max_steps:
        return ResumePlan(checkpoint, step, max_steps, constant_lr=None)
    lr = cfg.training.get("learning_rate", 5e-5) * cfg.resume.lr_factor
    return ResumePlan(checkpoint, step, step + cfg.resume.extra_steps, constant_lr=lr)


# --- the Trainer ---------------------------------------------------------------------------------


class RecipeTrainer(Trainer):
    """The Trainer, logging perplexity next to each evaluation loss and throughput next to each train loss."""

    throughput: ThroughputMonitor | None = None
    stream_position: StreamPositionCallback | None = None

    def compute_loss(self, model, inputs, *args, **kwargs):
        position = inputs.pop("stream_position", None)  # streamed batches: where the stream stands after them
        if position is not None and self.stream_position is not None:
            self.stream_position.latest = position
        return super().compute_loss(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        if "eval_loss" in logs:
            logs["eval_perplexity"] = math.exp(min(logs["eval_loss"], 50.0))
        if "loss" in logs and self.throughput is not None:
            logs.update(self.throughput.measure())
        super().log(logs, start_time)

    def get_train_dataloader(self):
        if isinstance(self.train_dataset, StreamedBlocks):
            loader = self.streamed_dataloader()
        else:
            loader = super().get_train_dataloader()
        if self.args.dataloader_num_workers:
            torch_loader = getattr(loader, "base_dataloader", loader)  # accelerate wraps the torch DataLoader
            torch_loader.worker_init_fn = partial(start_worker_without_signals, torch_loader.worker_init_fn)
        return loader

    def streamed_dataloader(self):
        """A stream is read by each process for itself (data.open_stream splits it between them), in the
        main process or in one dataloader worker; accelerate would read it on one process and send batches."""
        workers = self.args.dataloader_num_workers
        loader = DataLoader(
            self.train_dataset,
            batch_size=self._train_batch_size,
            collate_fn=self.data_collator,
            num_workers=workers,
            pin_memory=self.args.dataloader_pin_memory,
            prefetch_factor=self.args.dataloader_prefetch_factor if workers else None,
        )
        return prepare_data_loader(
            loader, self.args.device, num_processes=1, process_index=0, put_on_device=True, dispatch_batches=False
        )


def start_worker_without_signals(init_worker, worker_id: int) -> None:
    """Ctrl-C or SIGTERM sent to the whole process group would kill the dataloader workers first, and torch
    then fails the training step at once; the workers ignore them and the main process stops cleanly."""
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if init_worker is not None:
        init_worker(worker_id)


def write_recipe_config(cfg: RecipeConfig, folder: str | Path) -> None:
    """The resolved config (YAML + overrides) next to the results: push.py puts it in the model card."""
    Path(folder).mkdir(parents=True, exist_ok=True)
    (Path(folder) / RECIPE_CONFIG_NAME).write_text(yaml.safe_dump(cfg.to_dict(), sort_keys=False))


def save_final_model(trainer: Trainer, output_dir: str, cfg: RecipeConfig) -> Path:
    """Save weights (safetensors), config and tokenizer to output_dir/final, replacing it atomically."""
    final = Path(output_dir) / "final"
    tmp = Path(output_dir) / ".final.tmp"
    model = trainer.model
    model.config.use_cache = True  # off while training; on for generation
    if trainer.args.should_save:
        shutil.rmtree(tmp, ignore_errors=True)
    if trainer.is_fsdp_enabled and "FULL_STATE_DICT" not in str(trainer.accelerator.state.fsdp_plugin.state_dict_type):
        # Trainer.save_model writes no weights for sharded FSDP state dicts; gather them (all ranks take part)
        state_dict = trainer.accelerator.get_state_dict(trainer.model)
        if trainer.args.should_save:
            trainer._save(str(tmp), state_dict=state_dict)
    else:
        trainer.save_model(str(tmp))
    if trainer.args.should_save:
        model.generation_config.save_pretrained(str(tmp))
        write_recipe_config(cfg, tmp)
        old = Path(output_dir) / ".final.old"
        shutil.rmtree(old, ignore_errors=True)
        if final.exists():
            final.rename(old)
        tmp.rename(final)
        shutil.rmtree(old, ignore_errors=True)
    trainer.accelerator.wait_for_everyone()
    return final


def arguments_for(cfg: RecipeConfig, plan: ResumePlan | None) -> TrainingArguments:
    if plan is None:
        return training_arguments(cfg)
    if plan.extra_phase:
        return training_arguments(cfg, max_steps=plan.max_steps, learning_rate=plan.constant_lr)
    return training_arguments(cfg, max_steps=plan.max_steps)


def run_training(
    cfg: RecipeConfig, args: TrainingArguments, tokenizer, splits, plan: ResumePlan | None, extra_callbacks=()
) -> int:
    """Build model and Trainer, train (or resume), save. Returns the process exit code."""
    config = build_llama_config(cfg, tokenizer)
    attn = choose_attn_implementation(cfg.attn_implementation, cfg.data.document_aware)
    set_seed(args.seed)  # the same seed gives the same initial weights
    model = build_model(cfg, config, attn, from_weights=plan is None)
    # no KV cache while training: it would only hold tensors, and it turns off the packed-document masks of
    # data.document_aware; generation turns it back on
    model.config.use_cache = False
    log(parameter_breakdown(model))
    log(describe_batch(args, cfg.data.block_size))
    if plan is not None:
        verify_checkpoint(plan.checkpoint, model)
        log(plan.describe())

    stream = splits["train"] if isinstance(splits["train"], StreamedBlocks) else None
    if stream is not None and plan is not None:
        seek_stream(stream, plan.checkpoint, args)
    stream_position = StreamPositionCallback() if stream is not None else None

    if args.should_save:
        write_recipe_config(cfg, args.output_dir)
    interrupt = GracefulInterruptCallback()
    throughput = ThroughputMonitor(model, cfg.data.block_size, samples_every=cfg.samples.every_n_steps)
    callbacks = [
        throughput,
        ResumedRunCallback(constant_lr=plan.constant_lr if plan else None),
        SampleGenerationCallback(tokenizer, cfg.samples, args.output_dir, interrupted=lambda: interrupt.requested),
        interrupt,
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
    )
    trainer.throughput, trainer.stream_position = throughput, stream_position
    fsdp_requested = os.environ.get("ACCELERATE_USE_FSDP", "").lower() in ("1", "true")
    if fsdp_requested and not trainer.is_fsdp_enabled and not torch.cuda.is_available():
        log("FSDP: accelerate does not shard on CPU; the processes train as plain data parallel (DDP over gloo)")
    result = trainer.train(resume_from_checkpoint=str(plan.checkpoint) if plan else None)
    if interrupt.stopped_at is not None:
        log(
            f"interrupted at step {interrupt.stopped_at}: saved {PREFIX_CHECKPOINT_DIR}-{interrupt.stopped_at} in "
            f"{args.output_dir}; continue with: python train.py --resume [same overrides]"
        )
        return EXIT_INTERRUPTED
    trainer.log_metrics("train", result.metrics)
    trainer.save_metrics("train", result.metrics)
    trainer.save_state()
    final = save_final_model(trainer, args.output_dir, cfg)
    log(f"saved the final model to {final}")
    return 0


def seek_stream(stream: StreamedBlocks, checkpoint: Path, args: TrainingArguments) -> None:
    """Resume a streamed run where its checkpoint stood in this process's stream, or say why it replays."""
    try:
        saved = json.loads((checkpoint / StreamPositionCallback.FILE).read_text())
        if len(saved["processes"]) != args.world_size:
            log(
                f"streaming: {checkpoint.name} was written by {len(saved['processes'])} process(es) and this run has "
                f"{args.world_size}, which split the stream differently; replaying the stream up to it"
            )
            return
        position = saved["processes"][args.process_index]
    except (OSError, ValueError, KeyError, TypeError):
        log(f"streaming: {checkpoint.name} holds no stream position; replaying the stream up to it")
        return
    stream.resume_at = position
    args.ignore_data_skip = True  # the Trainer would otherwise replay the batches before the checkpoint
    each = " in each process's part" if args.world_size > 1 else ""
    log(f"streaming: continuing at block {position['block']:,} of the stream{each} without reading what came before it")


def should_offer_continuation(args: argparse.Namespace) -> bool:
    return not args.no_prompt and world_size() == 1 and sys.stdin.isatty() and sys.stdout.isatty()


def ask_for_extra_phase(cfg: RecipeConfig) -> ResumePlan | None:
    """After the main run, in a terminal: offer the extra phase of --resume in the same process."""
    latest, _ = find_latest_checkpoint(cfg.training["output_dir"])
    if latest is None:  # e.g. save_strategy=no
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
    return plan_resume(cfg, str(latest)) if answer.strip().lower() in ("y", "yes") else None


def main(argv: list[str] | None = None, extra_callbacks=()) -> int:
    args = parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        tokenizer = load_tokenizer(cfg.tokenizer)
        build_llama_config(cfg, tokenizer)  # vocab check before the data work
        plan = plan_resume(cfg, args.resume) if args.resume else refuse_to_overwrite(cfg)
        training_args = arguments_for(cfg, plan)
        with training_args.main_process_first(desc="preparing data"):
            splits, stats = prepare_datasets(
                cfg.data, tokenizer, rank=training_args.process_index, world_size=training_args.world_size
            )
        log(stats.summary())
        code = run_training(cfg, training_args, tokenizer, splits, plan, extra_callbacks)
        if code == 0 and should_offer_continuation(args) and (plan := ask_for_extra_phase(cfg)):
            code = run_training(cfg, arguments_for(cfg, plan), tokenizer, splits, plan, extra_callbacks)
        return code
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # before training started (data, model): there is nothing to save yet
        print("\ninterrupted before training started; nothing was saved", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
