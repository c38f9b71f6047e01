"""Corpus -> tokenized, packed blocks of `data.block_size` tokens, with a held-out validation split.

Each document (corpus.py finds and reads them) is tokenized (batched `map`, several processes for many
documents), followed by EOS, and the token stream is cut into blocks. Whole blocks are held out for
validation, so training and validation share no token. The packed result is cached on disk, keyed by the
corpus's fingerprint, the tokenizer and the settings: a second run loads it instead of tokenizing again,
after checking it holds the blocks it recorded (a damaged cache is rebuilt, with one line saying so).

This cache sits beside the `datasets` cache for one reason: `datasets` records nothing to check its Arrow files
against. A file cut at a record-batch boundary (a full disk, a copy killed halfway) loads silently with part of
the corpus missing: 1,900 of the 3,593 blocks of a 25 MB corpus, as BENCHMARKS.md measured ("The block cache
next to datasets' cache"). A damaged cache is rebuilt from the files, not from `datasets`' copies, which may be
cut alike. It is not there for speed (`datasets` already spares the tokenizing on a second run), and as the
blocks are written into this cache only, it costs no extra disk.

    python data.py data.path=my_corpus.txt

prepares the data alone and prints the numbers (same config and overrides as train.py).

With `data.streaming`, `prepare_datasets` hands over to `streaming.py`: documents are read, tokenized and
packed on the fly, in bounded memory. With `data.sources`, each source is prepared so, and mixed by weight.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import sys
import tempfile
import time
from dataclasses import asdict
from pathlib import Path

from recipe import cli
from recipe.arguments import sequences_per_step
from recipe.cli import RecipeError, first_line, hub_is_reachable
from recipe.config import DataConfig, load_config
from recipe.corpus import (
    CorpusSource,
    CorpusStats,
    check_readable,
    find_corpus,
    fingerprint,
    load_documents,
    progress_bars,
    tokenize_function,
)
from recipe.run_folder import atomic_folder
from recipe.streaming import StreamedMixture, prepare_streaming
from recipe.trainer import MixedBlocks

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from huggingface_hub import constants
from transformers import AutoTokenizer

CACHE_FORMAT_VERSION = 2


def _num_proc(cfg: DataConfig, num_documents: int) -> int | None:
    if cfg.num_proc is not None:
        return cfg.num_proc if cfg.num_proc > 1 else None
    cores = os.cpu_count() or 1
    return min(cores, num_documents // 1000) if cores > 1 and num_documents >= 2000 else None


def tokenize_and_pack(documents, text_column: str, tokenizer, cfg: DataConfig, blocks_dir=None, fresh=False):
    """The tokens (cached by datasets; `fresh`: tokenized again all the same), their number, and the blocks,
    written to `blocks_dir` (None: datasets' cache)."""
    with interrupts_stop_the_pool():
        tokens = documents.map(
            tokenize_function(tokenizer, text_column),
            batched=True,
            num_proc=_num_proc(cfg, len(documents)),
            remove_columns=documents.column_names,
            load_from_cache_file=False if fresh else None,
            desc="tokenizing",
        )
    # counted on the memory-mapped Arrow column, without loading the corpus into Python
    num_tokens = (pc.sum(pc.list_value_length(tokens.data.column("input_ids"))).as_py() or 0) if len(tokens) else 0
    if num_tokens < 2 * cfg.block_size:
        return tokens, None, num_tokens  # too short to pack: prepare_datasets says why
    return tokens, pack_dataset_into_blocks(tokens, cfg.block_size, blocks_dir), num_tokens


@contextlib.contextmanager
def interrupts_stop_the_pool():
    """Ctrl-C or SIGTERM during a multi-process `map` ends as that interrupt, not as the multiprocess TimeoutError
    that datasets raises while it unwinds, when it cannot collect the workers' results. The workers leave the
    signal to this process (cli.command), whose unwinding ends the pool."""
    try:
        yield
    except Exception as e:
        cause = e
        while cause is not None and not isinstance(cause, KeyboardInterrupt):
            cause = cause.__cause__ or cause.__context__
        if cause is not None:
            raise cause from None
        raise


def pack_dataset_into_blocks(tokens: datasets.Dataset, block_size: int, cache_dir=None) -> datasets.Dataset:
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
    with progress_bars(False):  # seconds of work, under the tokenizing bar's
        return datasets.Dataset.from_generator(blocks, features=features, fingerprint=fingerprint, cache_dir=cache_dir)


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


def cache_path_for(source: CorpusSource, cfg: DataConfig, tokenizer) -> Path:
    """The cache folder of these blocks, named by a hash of everything they depend on."""
    settings = {
        "version": CACHE_FORMAT_VERSION,
        "corpus": fingerprint(source, cfg),
        "text_column": cfg.text_column,
        "sample_by": cfg.sample_by,
        "block_size": cfg.block_size,
        "validation": [cfg.validation_fraction, cfg.max_validation_blocks, cfg.seed],
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }
    key = hashlib.sha256(json.dumps(settings, sort_keys=True).encode()).hexdigest()[:20]
    root = Path(cfg.cache_dir).expanduser() if cfg.cache_dir else Path(constants.HF_HOME) / "smollm2-recipe"
    return root / f"blocks-{key}"


class DamagedCache(Exception):
    """A cache folder that does not hold what its stats.json records."""


def read_cache(path: Path) -> tuple[datasets.DatasetDict, CorpusStats]:
    """The cached blocks, checked against the counts recorded with them: an Arrow file cut at a record-batch
    boundary still loads, with fewer blocks. Raises DamagedCache saying what is wrong."""
    try:
        stats = CorpusStats(**json.loads((path / "stats.json").read_text()))
        splits = datasets.load_from_disk(str(path))
    except Exception as e:  # a missing or unreadable file, Arrow data cut inside a record batch
        raise DamagedCache(f"{type(e).__name__}: {first_line(e)}") from None
    if not isinstance(splits, datasets.DatasetDict) or set(splits) != {"train", "validation"}:
        raise DamagedCache("it holds no train and validation splits")
    for name, recorded in (("train", stats.train_blocks), ("validation", stats.validation_blocks)):
        if len(splits[name]) != recorded:
            raise DamagedCache(f"{len(splits[name]):,} {name} blocks where stats.json records {recorded:,}")
    stats.from_cache, stats.cache_path = True, str(path)
    return splits, stats


def save_atomically(splits: datasets.DatasetDict, stats: CorpusStats, path: Path) -> None:
    """Write into a temporary folder that replaces `path` in one rename (run_folder.atomic_folder), so that a
    crash never leaves a half-written cache. A write that fails is fine only where another process has put
    the same, verified cache in place first."""
    try:
        with atomic_folder(path) as tmp, progress_bars(False):
            splits.save_to_disk(str(tmp))
            (tmp / "stats.json").write_text(json.dumps(asdict(stats), indent=2))
    except OSError as e:
        with contextlib.suppress(DamagedCache):
            read_cache(path)
            return  # another process finished the same cache first
        raise RecipeError(
            f"could not write the data cache {path} ({first_line(e)}); free some space, remove that folder, or "
            "set data.cache_dir to a writable folder"
        ) from None


def make_cache_folder(folder: Path) -> None:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RecipeError(
            f"could not create the data cache folder {folder} ({first_line(e)}); set data.cache_dir"
        ) from None


# --- the whole preparation -----------------------------------------------------------------------


def prepare_datasets(
    cfg: DataConfig, tokenizer, use_cache: bool = True, rank: int = 0, world_size: int = 1, drawn: int = 0
):
    """Return ({"train", "validation"} datasets of blocks, CorpusStats); a mixture's, see `prepare_mixture`. `rank`
    and `world_size` matter only when streaming, where each training process reads its own part of the corpus."""
    if cfg.sources:
        return prepare_mixture(cfg, tokenizer, use_cache, rank, world_size, drawn)
    if cfg.streaming:
        return prepare_streaming(cfg, tokenizer, rank, world_size)
    source = find_corpus(cfg.path)
    if not use_cache:
        return build_blocks(source, cfg, tokenizer)
    path = cache_path_for(source, cfg, tokenizer)
    fresh = False
    if path.exists():
        try:
            return read_cache(path)
        except DamagedCache as e:
            print(f"data: the cache {path} is damaged ({e}); preparing the data again", flush=True)
            fresh = True  # datasets' copies of the documents and tokens may be cut alike: not reused
    make_cache_folder(path.parent)
    # the blocks are written once, into the recipe's cache, rather than into datasets' cache as well
    with tempfile.TemporaryDirectory(prefix=f".{path.name}.packing-", dir=path.parent) as scratch:
        splits, stats = build_blocks(source, cfg, tokenizer, blocks_dir=scratch, fresh=fresh)
        stats.cache_path = str(path)
        save_atomically(splits, stats, path)
    try:
        return read_cache(path)[0], stats  # memory-mapped on the cache, not on the scratch files
    except DamagedCache as e:
        raise RecipeError(f"the data cache {path} does not read back ({e}); check the disk") from None


def build_blocks(source: CorpusSource, cfg: DataConfig, tokenizer, blocks_dir=None, fresh: bool = False):
    check_readable(source, cfg)
    start = time.perf_counter()
    documents, text_column = load_documents(source, cfg, fresh=fresh)
    if len(documents) == 0:
        raise RecipeError(f"the corpus '{cfg.path}' holds no documents; check data.path and data.split")
    tokens, blocks, num_tokens = tokenize_and_pack(documents, text_column, tokenizer, cfg, blocks_dir, fresh)
    if num_tokens == 0:
        raise RecipeError(f"the corpus '{cfg.path}' holds no text; check data.path and data.text_column")
    if blocks is None or len(blocks) < 2:
        raise RecipeError(
            f"the corpus has {num_tokens:,} tokens, fewer than the 2 blocks of {cfg.block_size} needed "
            "(one to train on, one to validate); use more text or a smaller data.block_size"
        )
    splits = split_train_validation(blocks, cfg)
    return splits, CorpusStats(
        documents=len(tokens),
        tokens=num_tokens,
        train_blocks=len(splits["train"]),
        validation_blocks=len(splits["validation"]),
        block_size=cfg.block_size,
        tokenize_seconds=time.perf_counter() - start,
    )


# --- a mixture of sources ------------------------------------------------------------------------


def prepare_mixture(cfg: DataConfig, tokenizer, use_cache: bool, rank: int, world_size: int, drawn: int):
    """Each source prepared as `data.path` alone would be (its cache, its held-out blocks, by name), its training
    blocks drawn by weight (MixedBlocks, or StreamedMixture when streaming). `drawn`: max_steps x samples per step."""
    specs, weights = list(cfg.specs().values()), [s.weight for s in cfg.sources]
    parts = [prepare_datasets(spec, tokenizer, use_cache, rank, world_size) for spec in specs]
    trains = [splits["train"] for splits, _ in parts]
    train = StreamedMixture(trains, weights, cfg.seed) if cfg.streaming else MixedBlocks(trains, weights)
    shares = np.array(weights) / sum(weights)  # of the blocks drawn, on average
    rows, lines = [], [f"data: {len(specs)} sources, mixed by blocks"]
    lines[0] += f"; the run draws {drawn:,} blocks" if drawn else ""
    for source, spec, (_, stats), share in zip(cfg.sources, specs, parts, shares, strict=True):
        passes = drawn * share / stats.train_blocks if drawn and stats.train_blocks else None
        rows.append(
            {
                "name": source.name,
                "corpus": find_corpus(spec.path).names(),
                "weight": source.weight,
                "share": float(share),
                "documents": stats.documents,
                "tokens": stats.tokens,
                "passes": passes,
            }
        )
        lines.append(
            f"data: {source.name}: {stats.summary().removeprefix('data: ')}; weight {source.weight:g}, "
            f"{share:.1%} of the training blocks" + (f", {passes:,.2f} passes" if passes else "")
        )
    validation = {source.name: splits["validation"] for source, (splits, _) in zip(cfg.sources, parts, strict=True)}
    total = CorpusStats(None, None, None, sum(map(len, validation.values())), cfg.block_size, sources=rows, lines=lines)
    return {"train": train, "validation": validation}, total


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
    offline = not Path(name_or_path).expanduser().exists() and not hub_is_reachable()
    try:
        tokenizer = AutoTokenizer.from_pretrained(name_or_path, local_files_only=offline)
    except Exception as e:
        where = "the Hub cannot be reached and it is not in the local cache" if offline else type(e).__name__
        raise RecipeError(
            f"could not load tokenizer '{name_or_path}' ({where}); set tokenizer=PATH to a local copy "
            "(the recipe ships one: tokenizer=assets/cosmo2-tokenizer)"
        ) from None
    if tokenizer.eos_token_id is None:  # checked as it is loaded, before any data work
        raise RecipeError("the tokenizer has no EOS token, which separates documents; use a tokenizer with one")
    return tokenizer


@cli.command("stopped while preparing the data; nothing was cached")
def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("data.py", "Tokenize, pack and cache the corpus; print the numbers.")
    parser.add_argument("--config", default=None, help="YAML config (default: config_smollm2_135M.yaml)")
    parser.add_argument("--no-cache", action="store_true", help="tokenize again even if a cache exists")
    parser.add_argument("overrides", nargs="*", help="section.key=value overrides, as for train.py")
    args = parser.parse(argv)
    cfg = load_config(args.config, args.overrides)
    tokenizer = load_tokenizer(cfg.tokenizer)
    start = time.perf_counter()
    drawn = cfg.training["max_steps"] * sequences_per_step(cfg.training)  # the blocks a run draws: each source's passes
    splits, stats = prepare_datasets(cfg.data, tokenizer, use_cache=not args.no_cache, drawn=drawn)
    print(stats.summary())
    print(f"blocks ready in {time.perf_counter() - start:.2f} s")
    if stats.cache_path and not args.no_cache:
        print(f"cache: {stats.cache_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
