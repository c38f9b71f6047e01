"""Streaming (`data.streaming`): read, tokenize and pack the corpus on the fly, and resume where a checkpoint stood.

Documents are read and tokenized as training goes, in bounded memory. Each training block carries the stream
position after it, which each checkpoint keeps (`StreamPositionCallback`) and `resume_stream` seeks, instead of
reading and tokenizing everything before it again.
"""

from __future__ import annotations

import copy
from functools import partial
from itertools import chain, islice

from recipe.cli import RecipeError, log
from recipe.corpus import (
    CorpusSource,
    CorpusStats,
    check_readable,
    find_corpus,
    load_documents,
    tokenize_function,
    unreadable_data_error,
)
from recipe.run_state import RunState

import datasets
import numpy as np
import torch
from accelerate.data_loader import prepare_data_loader
from accelerate.utils import gather_object
from datasets.distributed import split_dataset_by_node
from torch.utils.data import DataLoader
from transformers import TrainerCallback, TrainingArguments

# --- the blocks ----------------------------------------------------------------------------------


def prepare_streaming(cfg, tokenizer, rank: int = 0, world_size: int = 1):
    """({"train": StreamedBlocks, "validation": Dataset}, CorpusStats). Each of `world_size` processes reads
    its own part of the documents (`open_stream`); the first blocks of process 0's part are held out for
    validation."""
    source = find_corpus(cfg.path)
    check_readable(source, cfg)
    documents, text_column = load_documents(source, cfg, streaming=True)
    tokenize = tokenize_function(tokenizer, text_column)
    reader = PackedReader(part_of(documents, 0, world_size), tokenize, text_column, cfg.block_size)
    try:
        validation = datasets.Dataset.from_dict({"input_ids": reader.take(cfg.max_validation_blocks)})
        one_more = reader.take(1)
    except Exception as e:
        raise unreadable_data_error(source, cfg, e) from None
    if len(validation) == 0:
        raise RecipeError(f"the corpus '{cfg.path}' holds no full block of {cfg.block_size} tokens")
    if len(validation) < cfg.max_validation_blocks or not one_more:
        raise RecipeError(
            f"the corpus '{cfg.path}' holds only {reader.blocks_read} blocks of {cfg.block_size} tokens"
            f"{' for process 0' if world_size > 1 else ''}, all of them held out for validation "
            f"(data.max_validation_blocks={cfg.max_validation_blocks}); use more text, a smaller data.block_size "
            "or data.max_validation_blocks"
        )
    for other in range(1, world_size):  # every process checks them all, so that all stop, or none
        if not PackedReader(open_stream(source, cfg, other, world_size), tokenize, text_column, cfg.block_size).take(1):
            raise RecipeError(
                f"process {other} of {world_size} gets no block of {cfg.block_size} tokens from the stream, which is "
                "split between the processes by document (or by file, where the files divide evenly); for plain text "
                "set data.sample_by=paragraph or line, or use more documents, fewer processes, or data.streaming=false"
            )
    train = StreamedBlocks(
        partial(open_stream, source, cfg, rank, world_size),
        tokenize,
        text_column,
        cfg.block_size,
        held_out=cfg.max_validation_blocks if rank == 0 else 0,
        seed=cfg.seed,
        explain=partial(unreadable_data_error, source, cfg),
    )
    # nothing is counted ahead: no documents, tokens or training blocks
    return {"train": train, "validation": validation}, CorpusStats(None, None, None, len(validation), cfg.block_size)


def open_stream(source: CorpusSource, cfg, rank: int, world_size: int):
    """The documents process `rank` reads, from a newly opened stream."""
    return part_of(load_documents(source, cfg, streaming=True)[0], rank, world_size)


def part_of(documents, rank: int, world_size: int):
    """With several processes, `split_dataset_by_node` gives each whole files where their number divides
    evenly, and otherwise every world_size-th document."""
    return documents if world_size == 1 else split_dataset_by_node(documents, rank=rank, world_size=world_size)


class PackedReader:
    """Blocks from one pass over a document stream, and at any moment the position to come back to: the
    stream's state before the oldest document batch still in the buffer, and how many of that batch's
    tokens are already in blocks."""

    DOCUMENTS_PER_BATCH = 64

    def __init__(self, documents, tokenize, text_column: str, block_size: int, position: dict | None = None):
        self.documents, self.tokenize, self.text_column, self.block_size = documents, tokenize, text_column, block_size
        self.buffer: list[int] = []
        self.batches: list[list] = []  # [stream state before the batch, its tokens, of which still buffered]
        if position is not None:
            documents.load_state_dict(position["documents"])
        self.iterator = iter(documents)
        self.blocks_read = position["blocks_read"] if position else 0
        if position is not None:
            self._fill(skip=position["skip_tokens"])

    def _fill(self, skip: int = 0) -> bool:
        """Read document batches until a block's worth of tokens is buffered; False when the stream ends."""
        while len(self.buffer) < self.block_size:
            state = copy.deepcopy(self.documents.state_dict())
            texts = [row[self.text_column] for row in islice(self.iterator, self.DOCUMENTS_PER_BATCH)]
            if not texts:
                return False
            tokens = list(chain.from_iterable(self.tokenize({self.text_column: texts})["input_ids"]))
            self.batches.append([state, len(tokens), len(tokens) - skip])
            self.buffer.extend(tokens[skip:])
            skip = 0
        return True

    def position(self) -> dict:
        state, total, left = self.batches[0] if self.batches else (copy.deepcopy(self.documents.state_dict()), 0, 0)
        return {"documents": state, "skip_tokens": total - left, "blocks_read": self.blocks_read}

    def take(self, n: int) -> list[np.ndarray]:
        """The next n blocks (fewer at the end of the stream), as int32 arrays: a window of 1,000 blocks of
        2,048 tokens takes 8 MB, not the 70 MB of Python lists."""
        blocks = []
        while len(blocks) < n and self._fill():
            blocks.append(np.array(self.buffer[: self.block_size], dtype=np.int32))
            del self.buffer[: self.block_size]
            self._used(self.block_size)
            self.blocks_read += 1
        return blocks

    def _used(self, n: int) -> None:
        while n:
            taken = min(n, self.batches[0][2])
            self.batches[0][2] -= taken
            n -= taken
            if self.batches[0][2] == 0:
                self.batches.pop(0)


class StreamedBlocks(torch.utils.data.IterableDataset):
    """The training blocks of a streamed corpus. Each pass over the stream skips the held-out blocks and
    shuffles the rest in windows of WINDOW blocks, each window in an order seeded by its number; passes
    repeat without end (training stops at max_steps). Where each window starts in the stream is remembered,
    so each block comes with the position after it (`position_of`), where a resumed run seeks (`resume_at`)."""

    WINDOW = 1000  # blocks: 2M tokens at block_size 2048, the memory a shuffle buffer would take

    def __init__(self, open_documents, tokenize, text_column: str, block_size: int, held_out: int, seed: int, explain):
        self.open_documents, self.tokenize, self.text_column = open_documents, tokenize, text_column
        self.block_size, self.held_out, self.seed = block_size, held_out, seed
        self.explain = explain  # error -> RecipeError naming the file and line the stream could not read
        self.windows: dict[int, dict] = {}  # number -> {"start", "first_block", "size" (None: not read yet)}
        self.resume_at: dict | None = None

    def __iter__(self):
        try:
            yield from self._blocks()
        except RecipeError:
            raise
        except Exception as e:  # a bad line far into the corpus shows up only now
            raise self.explain(e) from None

    def _blocks(self):
        resume, self.resume_at = self.resume_at, None
        number, offset = (resume["window"], resume["offset"]) if resume else (0, 0)
        first_block = resume["first_block"] if resume else 0
        start = resume["start"] if resume else None
        while True:  # one pass over the stream
            reader = PackedReader(self.open_documents(), self.tokenize, self.text_column, self.block_size, start)
            from_the_beginning, start = start is None, None
            reader.take(self.held_out - reader.blocks_read)  # skips the held-out blocks: none if resumed past them
            windows_read = 0
            while True:
                window_start = reader.position()
                blocks = reader.take(self.WINDOW)
                if not blocks:
                    break
                self.windows[number] = {"start": window_start, "first_block": first_block, "size": len(blocks)}
                next_start = reader.position() if len(blocks) == self.WINDOW else None
                self.windows[number + 1] = {"start": next_start, "first_block": first_block + len(blocks), "size": None}
                for old in [k for k in self.windows if k < number]:  # positions are taken as blocks are yielded
                    del self.windows[old]
                order = np.random.default_rng([self.seed, number]).permutation(len(blocks))
                for block, index in enumerate(order[offset:], start=first_block + offset):
                    # the position after this block travels with it, through dataloader workers too
                    yield {"input_ids": blocks[index], "stream_position": self.position_of(block + 1)}
                first_block, number, offset, windows_read = first_block + len(blocks), number + 1, 0, windows_read + 1
            if from_the_beginning and not windows_read:
                raise RecipeError(
                    f"the stream has no training blocks after the {self.held_out} held-out ones; use more text, "
                    "a smaller data.block_size or data.max_validation_blocks"
                )

    def position_of(self, block: int) -> dict | None:
        """Where block number `block` (counted from the start of training) is, if it is still remembered."""
        for number, window in self.windows.items():
            first, size = window["first_block"], window["size"]
            if (first <= block < first + size) if size else block == first:
                return {"window": number, "offset": block - first, **window, "block": block}
        return None


def draw_round(weights: np.ndarray, seed: int, number: int) -> np.ndarray:
    """The sources of a mixture's blocks 1000 x number to 1000 x number + 999: drawn with the weights as probabilities,
    seeded by (seed, number), so a function of the block's number alone."""
    return np.random.default_rng([seed, number]).choice(len(weights), 1000, p=weights)


class StreamedMixture(StreamedBlocks):
    """Streamed sources mixed by blocks, drawn as `draw_round` says; each source's stream repeats without end.
    The position after a block holds its number and where each source's stream stands: --resume seeks them all."""

    def __init__(self, streams: list[StreamedBlocks], weights: list[float], seed: int):
        self.streams, self.weights, self.seed, self.resume_at = streams, np.array(weights) / sum(weights), seed, None

    def __iter__(self):
        resume, self.resume_at = self.resume_at, None
        block, positions = (resume["block"], list(resume["sources"])) if resume else (0, [None] * len(self.streams))
        for stream, position in zip(self.streams, positions, strict=True):
            stream.resume_at = position
        readers = [iter(stream) for stream in self.streams]  # a stream is opened when it is first drawn
        while True:
            for source in draw_round(self.weights, self.seed, block // 1000)[block % 1000 :].tolist():
                item, block = next(readers[source]), block + 1
                positions[source] = item["stream_position"]
                yield {"input_ids": item["input_ids"], "stream_position": {"block": block, "sources": list(positions)}}


# --- training on a stream ------------------------------------------------------------------------


def streamed_dataloader(dataset: StreamedBlocks, args: TrainingArguments, collate_fn):
    """A stream is read by each process for itself (`open_stream` splits it between them), in the main process or
    in one dataloader worker. The Trainer's loader cannot do that: with several processes, accelerate reads an
    IterableDataset on one process and sends the batches to the others, or has each read the whole stream and
    keep its share. So this loader is built here, from the same `dataloader_*` settings the Trainer reads."""
    loader = DataLoader(
        dataset,
        batch_size=args.train_batch_size,
        collate_fn=collate_fn,
        num_workers=args.dataloader_num_workers,
        pin_memory=args.dataloader_pin_memory,
        persistent_workers=args.dataloader_persistent_workers,
        prefetch_factor=args.dataloader_prefetch_factor,
        multiprocessing_context=args.dataloader_multiprocessing_context,
        in_order=args.dataloader_in_order,
        drop_last=args.dataloader_drop_last,
    )
    return prepare_data_loader(
        loader, args.device, num_processes=1, process_index=0, put_on_device=True, dispatch_batches=False
    )


class StreamPositionCallback(TrainerCallback):
    """Where each process stands in its part of the stream, kept in the run state (`RunState.stream_positions`, in
    rank order) at each checkpoint, so that --resume seeks the streams there instead of reading them again. The
    trainer hands it each batch's position with `take_position`."""

    def __init__(self, run: RunState):
        self.run = run
        self.latest: dict | None = None  # the position after the last batch trained on

    def take_position(self, inputs: dict) -> None:
        """Take the stream position out of a batch (the model must not see it) and keep it for the next save."""
        if (position := inputs.pop("stream_position", None)) is not None:
            self.latest = position

    def on_step_end(self, args, state, control, **kwargs):
        # Not in on_save: the Trainer takes the run state into the checkpoint before on_save runs. The gather is a
        # collective, so every process runs it at the same step; this callback follows every one that decides to save.
        if control.should_save:
            self.run.stream_positions = gather_object([self.latest])


def resume_stream(stream: StreamedBlocks, positions: list | None, checkpoint: str, args: TrainingArguments) -> None:
    """Resume a streamed run at `positions`, where each process stood in its stream at `checkpoint`, or say why it
    replays the stream up to it (the Trainer then skips the batches it has trained on, as for any dataset)."""
    if positions is None:
        log(f"streaming: {checkpoint} holds no stream position; replaying the stream up to it")
        return
    if len(positions) != args.world_size:
        log(
            f"streaming: {checkpoint} was written by {len(positions)} process(es) and this run has "
            f"{args.world_size}, which split the stream differently; replaying the stream up to it"
        )
        return
    stream.resume_at = position = positions[args.process_index]
    args.ignore_data_skip = True  # the Trainer would otherwise replay the batches before the checkpoint
    each = " in each process's part" if args.world_size > 1 else ""
    log(f"streaming: continuing at block {position['block']:,} of the stream{each} without reading what came before it")
