"""Corpus -> tokenized, packed blocks of `data.block_size` tokens, with a held-out validation split.

Reads a text file, several files, a glob, a folder, `.jsonl`/`.parquet` files with a text column, or a
Hub dataset id, through `datasets.load_dataset`. Each document is tokenized (batched `map`, several
processes for many documents), followed by EOS, and the token stream is cut into blocks. Whole blocks
are held out for validation, so training and validation share no token. The packed result is cached
on disk, keyed by the files, the tokenizer and the settings: a second run loads it instead of
tokenizing again.

    python data.py data.path=../shared/data/tinyshakespeare.txt tokenizer=../shared/cosmo2-tokenizer

prepares the data alone and prints the numbers (same config and overrides as train.py).

With `data.streaming`, documents are read, tokenized and packed on the fly (`StreamedBlocks`), in bounded
memory, and a checkpoint can hold the stream's position so a resumed run seeks there.
"""

from __future__ import annotations

import copy
import glob
import hashlib
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass
from functools import partial
from itertools import chain, islice
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
import torch

from config import DataConfig, RecipeError, first_line, hub_is_reachable, load_config

CACHE_FORMAT_VERSION = 1
TEXT_SUFFIXES = (".txt", ".text", ".md")
JSON_SUFFIXES = (".jsonl", ".json", ".jsonl.gz", ".json.gz")
PARQUET_SUFFIXES = (".parquet",)
TINY_SHAKESPEARE_URL = "https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt"


@dataclass
class CorpusStats:
    documents: int | None
    tokens: int | None
    train_blocks: int | None
    validation_blocks: int
    block_size: int
    tokenize_seconds: float = 0.0
    from_cache: bool = False
    cache_path: str | None = None

    @property
    def tokens_per_second(self) -> float | None:
        if not self.tokens or not self.tokenize_seconds:
            return None
        return self.tokens / self.tokenize_seconds

    def summary(self) -> str:
        if self.tokens is None:  # streaming: nothing is counted ahead
            return (
                f"data: streaming; the first {self.validation_blocks:,} blocks of {self.block_size} are held out for "
                "validation, training blocks are read, tokenized and packed on the fly"
            )

        line = (
            f"data: {self.documents:,} documents, {self.tokens:,} tokens -> "
            f"{self.train_blocks:,} train / {self.validation_blocks:,} validation blocks of {self.block_size}"
        )
        if self.from_cache:
            return f"{line} (loaded from cache {self.cache_path})"
        if self.tokens_per_second:
            line += f"; tokenized at {self.tokens_per_second:,.0f} tokens/s"
        return line


# --- finding the corpus --------------------------------------------------------------------------


@dataclass
class CorpusSource:
    """Where the documents come from: a `datasets` builder ("text", "json", "parquet") and its files,
    or a Hub dataset id (builder None)."""

    builder: str | None
    files: list[str]
    hub_id: str | None = None


def _builder_for(path: str) -> str | None:
    lower = path.lower()
    if lower.endswith(PARQUET_SUFFIXES):
        return "parquet"
    if lower.endswith(JSON_SUFFIXES):
        return "json"
    if lower.endswith(TEXT_SUFFIXES) or "." not in Path(path).name:
        return "text"
    return None


def _files_in_folder(folder: Path) -> list[str]:
    return sorted(
        str(p) for p in folder.rglob("*") if p.is_file() and _builder_for(p.name) and not p.name.startswith(".")
    )


def _looks_like_hub_id(path: str) -> bool:
    parts = path.split("/")
    return (
        1 <= len(parts) <= 2
        and all(parts)
        and not path.startswith((".", "~"))
        and _builder_for(path) in (None, "text")
        and "." not in parts[-1]
    )


def find_corpus(path: str | list[str]) -> CorpusSource:
    """Resolve `data.path` to files (or a Hub dataset id), or raise a RecipeError naming the problem."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths:
        raise RecipeError("data.path is empty: set it to a text file, a folder, a glob or a Hub dataset id")
    files: list[str] = []
    for p in paths:
        expanded = os.path.expanduser(p)
        if any(ch in expanded for ch in "*?["):
            matches = sorted(f for f in glob.glob(expanded, recursive=True) if os.path.isfile(f))
            if not matches:
                raise RecipeError(f"data.path: no files match '{p}'")
            files.extend(matches)
        elif os.path.isdir(expanded):
            found = _files_in_folder(Path(expanded))
            if not found:
                raise RecipeError(f"data.path: folder '{p}' holds no .txt, .md, .jsonl or .parquet files")
            files.extend(found)
        elif os.path.isfile(expanded):
            files.append(expanded)
        elif len(paths) == 1 and _looks_like_hub_id(p):
            return CorpusSource(builder=None, files=[], hub_id=p)
        else:
            hint = f" (tiny Shakespeare: curl -o input.txt {TINY_SHAKESPEARE_URL})" if p == "input.txt" else ""
            raise RecipeError(f"data file not found: '{p}'; pass data.path=PATH to your corpus{hint}")
    builders = {_builder_for(f) or "text" for f in files}
    if len(builders) > 1:
        raise RecipeError(f"data.path mixes file kinds ({', '.join(sorted(builders))}); use one kind per run")
    for f in files:
        if os.path.getsize(f) == 0:
            raise RecipeError(f"data file is empty: '{f}'; put text in it or remove it from data.path")
    return CorpusSource(builder=builders.pop(), files=files)


# --- loading and tokenizing ----------------------------------------------------------------------


def load_documents(source: CorpusSource, cfg: DataConfig, streaming: bool = False):
    """A `datasets` Dataset (or IterableDataset when streaming) with the documents' text column."""
    try:
        if source.hub_id:
            ds = datasets.load_dataset(source.hub_id, cfg.dataset_config, split=cfg.split, streaming=streaming)
        elif source.builder == "text":
            ds = datasets.load_dataset(
                "text", data_files=source.files, sample_by=cfg.sample_by, split="train", streaming=streaming
            )
        else:
            ds = datasets.load_dataset(source.builder, data_files=source.files, split="train", streaming=streaming)
    except (FileNotFoundError, ConnectionError, ValueError, OSError) as e:
        where = source.hub_id or ", ".join(source.files[:3])
        raise RecipeError(f"could not load the corpus '{where}': {first_line(e)}") from None
    except Exception as e:  # datasets raises its own errors for Hub ids (DatasetNotFoundError, ...)
        if source.hub_id:
            raise RecipeError(
                f"could not load Hub dataset '{source.hub_id}' ({type(e).__name__}); check the id and your network, "
                "or point data.path at local files"
            ) from None
        raise
    text_column = "text" if source.builder == "text" else cfg.text_column
    columns = ds.column_names or []
    if columns and text_column not in columns:
        raise RecipeError(
            f"the corpus has no column '{text_column}' (columns: {', '.join(columns)}); set data.text_column"
        )
    return ds, text_column


def tokenize_function(tokenizer, text_column: str):
    """A batched `map` function: each non-blank document's token ids, followed by EOS."""
    eos = tokenizer.eos_token_id
    encode = batch_encoder(tokenizer)

    def tokenize(batch):
        texts = [text or "" for text in batch[text_column]]  # a null in a .jsonl is an empty document
        return {"input_ids": [ids + [eos] for ids, text in zip(encode(texts), texts, strict=True) if text.strip()]}

    return tokenize


def batch_encoder(tokenizer):
    """Token ids of a list of texts, without special tokens. A fast tokenizer's own `encode_batch_fast`
    (which skips the character offsets) gives the same ids as `tokenizer(texts)` about 1.4 times as fast
    (BENCHMARKS.md); a tokenizer whose file sets truncation or padding goes through `tokenizer(texts)`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast") or backend.truncation or backend.padding:
        return lambda texts: tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return lambda texts: [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]


def _num_proc(cfg: DataConfig, num_documents: int) -> int | None:
    if cfg.num_proc is not None:
        return cfg.num_proc if cfg.num_proc > 1 else None
    cores = os.cpu_count() or 1
    return min(cores, num_documents // 1000) if cores > 1 and num_documents >= 2000 else None


def tokenize_and_pack(documents, text_column: str, tokenizer, cfg: DataConfig):
    num_proc = _num_proc(cfg, len(documents))
    tokens = documents.map(
        tokenize_function(tokenizer, text_column),
        batched=True,
        num_proc=num_proc,
        remove_columns=documents.column_names,
        desc="tokenizing",
    )
    # counted on the memory-mapped Arrow column, without loading the corpus into Python
    num_tokens = (pc.sum(pc.list_value_length(tokens.data.column("input_ids"))).as_py() or 0) if len(tokens) else 0
    if num_tokens < 2 * cfg.block_size:
        return tokens, None, num_tokens  # too short to pack: prepare_datasets says why
    return tokens, pack_dataset_into_blocks(tokens, cfg.block_size), num_tokens


def pack_dataset_into_blocks(tokens: datasets.Dataset, block_size: int) -> datasets.Dataset:
    """Cut the whole token stream into blocks, reading it in slices: memory stays flat whatever the corpus
    size, and only the very last partial block is dropped (a per-batch `map` would drop one per batch)."""

    def blocks():
        carry = np.empty(0, dtype=np.int32)
        for batch in tokens.with_format("arrow").iter(batch_size=1000):
            stream = np.concatenate([carry, batch.column("input_ids").combine_chunks().flatten().to_numpy()])
            usable = len(stream) // block_size * block_size
            for row in stream[:usable].reshape(-1, block_size):
                yield {"input_ids": row}
            carry = stream[usable:]

    features = datasets.Features({"input_ids": datasets.Sequence(datasets.Value("int32"))})
    fingerprint = f"{tokens._fingerprint}-blocks-{block_size}"  # the tokens' fingerprint covers files and tokenizer
    return datasets.Dataset.from_generator(blocks, features=features, fingerprint=fingerprint)


def split_train_validation(blocks, cfg: DataConfig) -> datasets.DatasetDict:
    """Hold out whole blocks: blocks partition the token stream, so the two splits share no token."""
    n = len(blocks)
    n_val = min(cfg.max_validation_blocks, max(1, round(n * cfg.validation_fraction)))
    if n - n_val < 1:
        raise RecipeError(
            f"the corpus makes only {n} block(s) of {cfg.block_size} tokens: at least 2 are needed "
            "(one to train on, one to validate); use more text or a smaller data.block_size"
        )
    split = blocks.train_test_split(test_size=n_val, seed=cfg.seed, shuffle=True)
    return datasets.DatasetDict(train=split["train"], validation=split["test"])


# --- cache ---------------------------------------------------------------------------------------


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(f"{text}|eos={tokenizer.eos_token_id}".encode()).hexdigest()


def cache_key(source: CorpusSource, cfg: DataConfig, tokenizer) -> str:
    files = [(os.path.abspath(f), os.path.getsize(f), os.stat(f).st_mtime_ns) for f in source.files]
    settings = {
        "version": CACHE_FORMAT_VERSION,
        "files": files,
        "hub": [source.hub_id, cfg.dataset_config, cfg.split],
        "text_column": cfg.text_column,
        "sample_by": cfg.sample_by,
        "block_size": cfg.block_size,
        "validation": [cfg.validation_fraction, cfg.max_validation_blocks, cfg.seed],
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    return hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]


def default_cache_dir() -> Path:
    from huggingface_hub import constants

    return Path(constants.HF_HOME) / "smollm2-recipe"


def cache_path_for(source: CorpusSource, cfg: DataConfig, tokenizer) -> Path:
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else default_cache_dir()
    return root / f"blocks-{cache_key(source, cfg, tokenizer)}"


def save_atomically(splits: datasets.DatasetDict, stats: CorpusStats, path: Path) -> None:
    """Write to a temporary folder and rename it, so that a crash never leaves a half-written cache."""
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    splits.save_to_disk(str(tmp))
    (tmp / "stats.json").write_text(json.dumps(asdict(stats), indent=2))
    try:
        os.replace(tmp, path)
    except OSError:  # another process finished the same cache first
        shutil.rmtree(tmp, ignore_errors=True)


def load_cached(path: Path) -> tuple[datasets.DatasetDict, CorpusStats] | None:
    if not (path / "stats.json").is_file():
        return None
    try:
        splits = datasets.load_from_disk(str(path))
        stats = CorpusStats(**json.loads((path / "stats.json").read_text()))
    except Exception:
        return None  # unreadable cache: prepare again
    stats.from_cache, stats.cache_path = True, str(path)
    return splits, stats


# --- the whole preparation -----------------------------------------------------------------------


def prepare_datasets(cfg: DataConfig, tokenizer, use_cache: bool = True, rank: int = 0, world_size: int = 1):
    """Return ({"train", "validation"} datasets of blocks, CorpusStats). `rank` and `world_size` matter only
    when streaming, where each training process reads its own part of the corpus."""
    if tokenizer.eos_token_id is None:
        raise RecipeError("the tokenizer has no EOS token, which separates documents; use a tokenizer with one")
    source = find_corpus(cfg.path)
    if cfg.streaming:
        return prepare_streaming(source, cfg, tokenizer, rank, world_size)
    path = cache_path_for(source, cfg, tokenizer)
    if use_cache and (cached := load_cached(path)):
        return cached
    start = time.perf_counter()
    documents, text_column = load_documents(source, cfg)
    if len(documents) == 0:
        raise RecipeError(f"the corpus '{cfg.path}' holds no documents; check data.path and data.split")
    tokens, blocks, num_tokens = tokenize_and_pack(documents, text_column, tokenizer, cfg)
    if num_tokens == 0:
        raise RecipeError(f"the corpus '{cfg.path}' holds no text; check data.path and data.text_column")
    if blocks is None or len(blocks) < 2:
        raise RecipeError(
            f"the corpus has {num_tokens:,} tokens, fewer than the 2 blocks of {cfg.block_size} needed "
            "(one to train on, one to validate); use more text or a smaller data.block_size"
        )
    splits = split_train_validation(blocks, cfg)
    stats = CorpusStats(
        documents=len(tokens),
        tokens=num_tokens,
        train_blocks=len(splits["train"]),
        validation_blocks=len(splits["validation"]),
        block_size=cfg.block_size,
        tokenize_seconds=time.perf_counter() - start,
        cache_path=str(path),
    )
    if use_cache:
        path.parent.mkdir(parents=True, exist_ok=True)
        save_atomically(splits, stats, path)
        if cached := load_cached(path):  # train from the memory-mapped cache, not the temporary files
            splits = cached[0]
    return splits, stats


def prepare_streaming(source: CorpusSource, cfg: DataConfig, tokenizer, rank: int = 0, world_size: int = 1):
    """Stream documents, tokenize and pack on the fly. Each of `world_size` processes reads its own part of
    the documents (`open_stream`); the first blocks of process 0's part are held out for validation."""
    documents, text_column = load_documents(source, cfg, streaming=True)
    tokenize = tokenize_function(tokenizer, text_column)
    reader = PackedReader(part_of(documents, 0, world_size), tokenize, text_column, cfg.block_size)
    validation = datasets.Dataset.from_dict({"input_ids": reader.take(cfg.max_validation_blocks)})
    if len(validation) == 0:
        raise RecipeError(f"the corpus '{cfg.path}' holds no full block of {cfg.block_size} tokens")
    if len(validation) < cfg.max_validation_blocks or not reader.take(1):
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
    )
    stats = CorpusStats(
        documents=None, tokens=None, train_blocks=None, validation_blocks=len(validation), block_size=cfg.block_size
    )
    return {"train": train, "validation": validation}, stats


def open_stream(source: CorpusSource, cfg: DataConfig, rank: int, world_size: int):
    """The documents process `rank` reads, from a newly opened stream."""
    return part_of(load_documents(source, cfg, streaming=True)[0], rank, world_size)


def part_of(documents, rank: int, world_size: int):
    """With several processes, `split_dataset_by_node` gives each whole files where their number divides
    evenly, and otherwise every world_size-th document."""
    if world_size == 1:
        return documents
    from datasets.distributed import split_dataset_by_node

    return split_dataset_by_node(documents, rank=rank, world_size=world_size)


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
        if not self.batches:
            return {
                "documents": copy.deepcopy(self.documents.state_dict()),
                "skip_tokens": 0,
                "blocks_read": self.blocks_read,
            }
        state, total, left = self.batches[0]
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
    so each block comes with the position after it (`position_of`): a checkpoint holds the position after
    the last block trained on, and a resumed run seeks the stream there (`resume_at`) instead of reading
    and tokenizing everything before it again."""

    WINDOW = 1000  # blocks: 2M tokens at block_size 2048, the memory a shuffle buffer would take

    def __init__(self, open_documents, tokenize, text_column: str, block_size: int, held_out: int, seed: int):
        self.open_documents, self.tokenize, self.text_column = open_documents, tokenize, text_column
        self.block_size, self.held_out, self.seed = block_size, held_out, seed
        self.windows: dict[int, dict] = {}  # number -> {"start", "first_block", "size" (None: not read yet)}
        self.resume_at: dict | None = None

    def __iter__(self):
        resume, self.resume_at = self.resume_at, None
        number, offset = (resume["window"], resume["offset"]) if resume else (0, 0)
        first_block = resume["first_block"] if resume else 0
        start = resume["start"] if resume else None
        while True:  # one pass over the stream
            reader = PackedReader(self.open_documents(), self.tokenize, self.text_column, self.block_size, start)
            from_the_beginning, start = start is None, None
            if reader.blocks_read < self.held_out:
                reader.take(self.held_out - reader.blocks_read)
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
            size = window["size"]
            inside = (
                window["first_block"] <= block < window["first_block"] + size
                if size
                else block == window["first_block"]
            )
            if inside:
                return {"window": number, "offset": block - window["first_block"], **window, "block": block}
        return None


def collate_blocks(examples: list[dict]) -> dict[str, torch.Tensor]:
    """Blocks are full length, so no padding and no attention mask; the model shifts the labels itself.
    Streamed blocks carry their stream position: the batch keeps its last one (RecipeTrainer takes it out)."""
    input_ids = torch.from_numpy(np.array([e["input_ids"] for e in examples], dtype=np.int64))
    batch = {"input_ids": input_ids, "labels": input_ids.clone()}
    if "stream_position" in examples[-1]:
        batch["stream_position"] = examples[-1]["stream_position"]
    return batch


class DocumentAwareCollator:
    """Blocks whose documents stay apart: position ids restart after each EOS, which transformers turns
    into attention that stops at document boundaries (varlen kernels under flash-attention-2, a block
    diagonal mask otherwise), and the first token of a document is not predicted from the one before."""

    def __init__(self, eos_token_id: int):
        self.eos_token_id = eos_token_id

    def __call__(self, examples: list[dict]) -> dict[str, torch.Tensor]:
        batch = collate_blocks(examples)
        input_ids = batch["input_ids"]
        starts = torch.zeros_like(input_ids, dtype=torch.bool)
        starts[:, 0] = True
        starts[:, 1:] = input_ids[:, :-1] == self.eos_token_id
        index = torch.arange(input_ids.shape[1]).expand_as(input_ids)
        batch["position_ids"] = index - torch.where(starts, index, 0).cummax(dim=1).values
        batch["labels"][:, 1:][starts[:, 1:]] = -100
        return batch


def collator_for(cfg: DataConfig, tokenizer):
    return DocumentAwareCollator(tokenizer.eos_token_id) if cfg.document_aware else collate_blocks


def load_tokenizer(name_or_path: str):
    from transformers import AutoTokenizer

    local = Path(name_or_path).expanduser().exists()
    offline = not local and not hub_is_reachable()
    try:
        return AutoTokenizer.from_pretrained(name_or_path, local_files_only=offline)
    except Exception as e:
        where = "the Hub cannot be reached and it is not in the local cache" if offline else type(e).__name__
        raise RecipeError(
            f"could not load tokenizer '{name_or_path}' ({where}); set tokenizer=PATH to a local copy "
            "(the recipe ships one: tokenizer=assets/cosmo2-tokenizer)"
        ) from None


def main(argv: list[str] | None = None) -> int:
    import argparse

    parser = argparse.ArgumentParser(description="Tokenize, pack and cache the corpus; print the numbers.")
    parser.add_argument("--config", default=None, help="YAML config (default: config_smollm2_135M.yaml)")
    parser.add_argument("--no-cache", action="store_true", help="tokenize again even if a cache exists")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, as for train.py")
    args = parser.parse_args(argv)
    try:
        cfg = load_config(args.config, args.overrides)
        tokenizer = load_tokenizer(cfg.tokenizer)
        splits, stats = prepare_datasets(cfg.data, tokenizer, use_cache=not args.no_cache)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(stats.summary())
    if stats.cache_path and not args.no_cache:
        print(f"cache: {stats.cache_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
