"""The recipe's Trainer: the HF `Trainer` with a data order that resumes by samples, evaluation that gives way
to a stop signal, perplexity and throughput next to the losses it logs, and the final model saved whole.

Where a resumed run starts in the seeded block order (`BlockOrder`, a mixture's `MixtureOrder`) is counted in
samples, not in batches, so a run resumed with another batch size, accumulation or number of processes still
trains every block of a pass exactly once.
"""

from __future__ import annotations

import math
import signal
from functools import partial
from pathlib import Path

from recipe.cli import RecipeError, first_line, log
from recipe.run_folder import RunFolder, atomic_folder, write_run_files
from recipe.run_state import RunSchedule, RunState
from recipe.streaming import StreamedBlocks, draw_round, streamed_dataloader

import numpy as np
import torch
from transformers import Trainer


class BlockOrder(torch.utils.data.Sampler):
    """Indices of `n` blocks, every block once a pass, each pass in the order seeded by (seed, pass), passes
    without end (training stops at max_steps); the first `start` indices of that sequence are skipped."""

    def __init__(self, n: int, seed: int, start: int = 0):
        self.n, self.seed, self.start = n, seed, start

    def __iter__(self):
        epoch, offset = divmod(self.start, self.n)
        while True:
            yield from np.random.default_rng([self.seed, epoch]).permutation(self.n)[offset:].tolist()
            epoch, offset = epoch + 1, 0


class MixedBlocks(torch.utils.data.ConcatDataset):
    """A mixture's training blocks: its sources' blocks one after the other, and their weights, by which
    trainer.MixtureOrder draws from them."""

    def __init__(self, parts: list[torch.utils.data.Dataset], weights: list[float]):
        super().__init__(parts)
        self.sizes, self.weights = [len(part) for part in parts], np.array(weights) / sum(weights)


class MixtureOrder(torch.utils.data.Sampler):
    """Indices of a mixture's blocks (MixedBlocks): each sample's source as streaming.draw_round says, each
    source's own blocks in a BlockOrder of their own, so a source that runs out is repeated in a new order. Like
    BlockOrder, a function of the sample's number alone; the first `start` samples are skipped."""

    def __init__(self, sizes: list[int], weights, seed: int, start: int = 0):
        self.sizes, self.weights, self.seed, self.start = sizes, weights, seed, start

    def __iter__(self):
        (number, offset), offsets = divmod(self.start, 1000), np.cumsum([0, *self.sizes[:-1]])
        count = partial(np.bincount, minlength=len(self.sizes))  # each source's samples before start:
        before = sum(
            (count(draw_round(self.weights, self.seed, n)) for n in range(number)),
            count(draw_round(self.weights, self.seed, number)[:offset]),
        )
        orders = [iter(BlockOrder(n, self.seed + s, int(before[s]))) for s, n in enumerate(self.sizes)]
        while True:
            for source in draw_round(self.weights, self.seed, number)[offset:].tolist():
                yield int(offsets[source]) + next(orders[source])
            number, offset = number + 1, 0


class StopEvaluation(Exception):
    """Raised from a callback's on_prediction_step when a stop signal arrives during evaluation."""


class RecipeTrainer(Trainer):
    """`run_state`: the run state, whose phases are the learning-rate schedule and whose samples trained are where
    the block order starts (without one, e.g. in benchmarks/bench.py, the Trainer's own schedule of
    TrainingArguments, from the first block). `stream_position`: the streaming module's callback that receives
    each streamed batch's position."""

    def __init__(self, *args, run_state: RunState | None = None, throughput=None, stream_position=None, **kwargs):
        super().__init__(*args, **kwargs)
        self.run_state, self.throughput, self.stream_position = run_state, throughput, stream_position
        self.start_sample = run_state.samples_trained if run_state is not None else 0  # read now: it grows each step

    def create_scheduler(self, num_training_steps: int, optimizer=None):
        """Every phase of the run as one schedule over global steps (run_state.RunSchedule)."""
        if self.run_state is None:
            return super().create_scheduler(num_training_steps, optimizer)
        if self.lr_scheduler is None:
            self.lr_scheduler = RunSchedule(optimizer or self.optimizer, self.run_state)
            self._created_lr_scheduler = True
        return self.lr_scheduler

    def _issue_warnings_after_load(self, load_result) -> None:
        """A tied head is not stored in a checkpoint (it is the embedding): not a missing key to warn about."""
        tied = {"lm_head.weight"} if self.model.config.tie_word_embeddings else set()
        load_result.missing_keys[:] = [key for key in load_result.missing_keys if key not in tied]
        super()._issue_warnings_after_load(load_result)

    def compute_loss(self, model, inputs, *args, **kwargs):
        if self.stream_position is not None:  # streamed batches carry where the stream stands after them
            self.stream_position.take_position(inputs)
        return super().compute_loss(model, inputs, *args, **kwargs)

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        for key in [k for k in logs if k.startswith("eval_") and k.endswith("_loss")]:  # each source's, and overall
            logs[f"{key.removesuffix('loss')}perplexity"] = math.exp(min(logs[key], 50.0))
        if "loss" in logs and self.throughput is not None:
            logs.update(self.throughput.measure())
        super().log(logs, start_time)

    def evaluate(self, eval_dataset=None, *args, **kwargs):
        """An evaluation cut short by a stop signal logs nothing; the checkpoint is saved right after it. A mixture's
        validation sets (a dict, by source) are logged each as `eval_<name>_loss`, then pooled: `eval_loss` is the
        mean over all their blocks, as one validation set of them all would give."""
        try:
            metrics = super().evaluate(eval_dataset, *args, **kwargs)
        except StopEvaluation:
            self.control.should_save = True
            self.control.should_training_stop = True
            return {}
        sizes = {n: len(ds) for n, ds in self.eval_dataset.items()} if isinstance(self.eval_dataset, dict) else {}
        if eval_dataset is None and sizes and all(f"eval_{n}_loss" in metrics for n in sizes):
            metrics["eval_loss"] = sum(metrics[f"eval_{n}_loss"] * k for n, k in sizes.items()) / sum(sizes.values())
            self.log({"eval_loss": metrics["eval_loss"]})
        return metrics

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        self.unpushed = checkpoint_folder  # push_to_hub: pushed below, once on_save has written its checksums

    def _maybe_log_save_evaluate(self, *args, **kwargs):
        super()._maybe_log_save_evaluate(*args, **kwargs)
        if (folder := getattr(self, "unpushed", None)) is not None:
            self.unpushed = None
            for callback in self.callback_handler.callbacks:  # RunRecordCallback hashes in the background: wait
                getattr(callback, "finish_hashing", lambda: None)()
            super()._push_from_checkpoint(folder)

    def _finish_current_push(self) -> None:
        super()._finish_current_push()  # the Trainer never looks at how its uploads ended: say if the last one failed
        for job in getattr(getattr(self, "push_in_progress", None), "jobs", ()):
            if job.done() and job.exception() is not None:
                log(f"hub: an upload to {self.hub_model_id} failed: {first_line(job.exception())}")

    def _get_train_sampler(self, train_dataset=None) -> torch.utils.data.Sampler:
        """The Trainer builds the DataLoader (every `dataloader_*` setting applies); the recipe gives the order."""
        seed = self.args.data_seed if self.args.data_seed is not None else self.args.seed  # data_seed 0 is a seed
        if isinstance(train_dataset, MixedBlocks):
            return MixtureOrder(train_dataset.sizes, train_dataset.weights, seed, self.start_sample)
        return BlockOrder(len(train_dataset), seed, self.start_sample)

    def get_train_dataloader(self):
        if isinstance(self.train_dataset, StreamedBlocks):
            return workers_without_signals(streamed_dataloader(self.train_dataset, self.args, self.data_collator))
        return super().get_train_dataloader()

    def _get_dataloader(self, *args, **kwargs):
        return workers_without_signals(super()._get_dataloader(*args, **kwargs))

    def save_final(self, config: dict, record: dict, publish=None) -> Path:
        """Weights (safetensors), config, generation config, tokenizer and the run files in output_dir/final,
        replacing it atomically: an interruption or a full disk leaves the previous final/ (or none), never half
        of one. Every process takes part: under FSDP the weights are gathered from all of them. With
        training.push_to_hub, `publish(trainer, final)` then uploads it (card.push_final)."""
        final = RunFolder(self.args.output_dir).final
        model = self.accelerator.unwrap_model(self.model)
        model.config.use_cache = True  # off while training; on for generation
        state_dict = self.accelerator.get_state_dict(self.model)  # collective under FSDP
        if self.args.should_save:
            with atomic_folder(final) as tmp:
                model.save_pretrained(str(tmp), state_dict=state_dict)  # with the generation config
                if self.processing_class is not None:
                    self.processing_class.save_pretrained(str(tmp))
                write_run_files(tmp, config, record)
        self.accelerator.wait_for_everyone()
        if publish is not None and self.args.push_to_hub and self.is_world_process_zero():
            publish(self, final)
        return final


def save_failed(error: OSError, trainer: Trainer) -> RecipeError:
    """A write that failed (disk full, permission): remove what it left half-written and say what is intact."""
    folder, step = RunFolder(trainer.args.output_dir), trainer.state.global_step
    removed = folder.remove_incomplete_checkpoint(step) if trainer.args.should_save else None
    latest, _ = folder.latest_checkpoint()
    intact = f"{latest.name} is intact, continue with --resume" if latest else "no checkpoint was saved yet"
    where = f" writing {error.filename}" if error.filename else ""
    partial = f"; removed the partial {removed.name}" if removed else ""
    return RecipeError(f"step {step}:{where} failed ({error.strerror or error}){partial}; {intact} once it is fixed")


def workers_without_signals(loader):
    """Ctrl-C or SIGTERM sent to the whole process group would kill the dataloader workers first, and torch
    then fails the training step at once; the workers ignore them and the main process stops cleanly."""
    torch_loader = getattr(loader, "base_dataloader", loader)  # accelerate wraps the torch DataLoader
    if torch_loader.num_workers:
        torch_loader.worker_init_fn = partial(start_worker_without_signals, torch_loader.worker_init_fn)
    return loader


def start_worker_without_signals(init_worker, worker_id: int) -> None:
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, signal.SIG_IGN)
    if init_worker is not None:
        init_worker(worker_id)
