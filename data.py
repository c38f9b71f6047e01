"""Corpus -> tokenized, packed blocks of `data.block_size` tokens, with a held-out validation split.

Reads a text file, several files, a glob, a folder, `.jsonl`/`.parquet` files with a text column, or a
Hub dataset id, through `datasets.load_dataset`. Files that cannot be read (binary, not UTF-8, a line
that is not JSON, a column that is not text) stop the run in one line naming the file and the line. Each
document is tokenized (batched `map`, several processes for many documents), followed by EOS, and the
token stream is cut into blocks. Whole blocks are held out for validation, so training and validation
share no token. The packed result is cached on disk, keyed by the files, the tokenizer and the settings:
a second run loads it instead of tokenizing again, after checking it holds the blocks it recorded (a
damaged cache is rebuilt, with one line saying so).

    python data.py data.path=my_corpus.txt

prepares the data alone and prints the numbers (same config and overrides as train.py).

With `data.streaming`, `prepare_datasets` hands over to `streaming.py`: documents are read, tokenized and
packed on the fly, in bounded memory.
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import gzip
import hashlib
import json
import logging
import os
import shutil
import signal
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import datasets
import numpy as np
import pyarrow.compute as pc
import torch
from datasets.exceptions import DatasetGenerationError

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


# --- files that cannot be read -------------------------------------------------------------------

HEAD_BYTES = 8192  # read from each file before any work: enough to tell text from binary, as git does
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")
TEXT_TYPES = ("string", "large_string", "string_view", "null")

# datasets logs a JSON file it cannot parse before it raises; the recipe's own error names the line
logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)


def check_readable(source: CorpusSource, cfg: DataConfig) -> None:
    """Cheap checks before any work: the start of each text or JSON file is UTF-8 text, and each Parquet file
    has a Parquet footer whose text column holds strings. A problem further into a file shows up when
    `datasets` reads it, and `unreadable_data_error` then finds the line."""
    for path in source.files:
        if source.builder == "parquet":
            check_parquet(path, cfg.text_column)
        elif not path.lower().endswith(COMPRESSED_SUFFIXES):
            check_start_is_text(path)


def check_start_is_text(path: str) -> None:
    with open(path, "rb") as f:
        head = f.read(HEAD_BYTES)
    if head.startswith((codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE)):
        raise RecipeError(f"data file is UTF-16, not UTF-8: '{path}'; convert it (e.g. iconv -f UTF-16 -t UTF-8)")
    if b"\0" in head:
        raise RecipeError(
            f"data file is binary, not text: '{path}' (a NUL byte at byte {head.index(0):,}); data.path takes "
            "text (.txt, .md), .jsonl or .parquet files"
        )
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # not final: a character cut at the end is fine
    except UnicodeDecodeError as e:
        raise not_utf8(path, head.count(b"\n", 0, e.start) + 1, head[e.start]) from None


def check_parquet(path: str, text_column: str) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    try:
        schema = pq.read_schema(path)  # the footer only
    except (pa.ArrowException, OSError) as e:
        raise RecipeError(f"data file is not a Parquet file: '{path}' ({first_line(e)}); check data.path") from None
    if text_column in schema.names:
        kind = schema.field(text_column).type
        if not (pa.types.is_string(kind) or pa.types.is_large_string(kind) or pa.types.is_null(kind)):
            raise not_text(path, None, text_column, str(kind))


def not_utf8(path: str, line: int, byte: int) -> RecipeError:
    return RecipeError(
        f"data file is not UTF-8 text: '{path}', line {line:,} (byte 0x{byte:02x}); convert it to UTF-8 "
        "(e.g. iconv -f latin1 -t utf-8)"
    )


def not_text(path: str, line: int | None, text_column: str, kind: str) -> RecipeError:
    where = f"'{path}'" + (f", line {line:,}" if line else "")
    return RecipeError(
        f"data file has non-text values in column '{text_column}' ({kind}): {where}; set data.text_column to the "
        "column that holds the documents' text"
    )


def first_unreadable(path: str, builder: str | None, text_column: str) -> RecipeError | None:
    """The first thing `datasets` cannot read in `path` (undecodable bytes, a line that is not JSON, a value
    that is not text), as an error naming the line; None if there is none."""
    if builder == "parquet":
        try:
            check_parquet(path, text_column)
        except RecipeError as e:
            return e
        return None
    lines_are_json = builder == "json" and path.lower().endswith((".jsonl", ".jsonl.gz"))
    try:
        with (gzip.open if path.lower().endswith(".gz") else open)(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                try:
                    line = raw.decode("utf-8")  # exact per line: UTF-8 never puts a newline byte inside a character
                except UnicodeDecodeError as e:
                    return not_utf8(path, number, raw[e.start])
                if lines_are_json and line.strip() and (problem := json_line_problem(path, number, line, text_column)):
                    return problem
    except (OSError, EOFError) as e:  # e.g. a .gz file that is not gzip
        return RecipeError(f"data file cannot be read: '{path}' ({first_line(e)}); check data.path")
    return None


def json_line_problem(path: str, number: int, line: str, text_column: str) -> RecipeError | None:
    try:
        row = json.loads(line.strip())
    except json.JSONDecodeError as e:
        return RecipeError(
            f"data file has a line that is not JSON: '{path}', line {number:,} ({e.msg}: column {e.colno}); "
            "fix or remove that line"
        )
    if not isinstance(row, dict):
        return RecipeError(
            f"data file has a line that is not a JSON object: '{path}', line {number:,}; each line of a .jsonl "
            f'file holds one object, such as {{"{text_column}": "..."}}'
        )
    value = row.get(text_column)
    if value is None or isinstance(value, str):
        return None
    return not_text(path, number, text_column, type(value).__name__)


def unreadable_data_error(source: CorpusSource, cfg: DataConfig, error: BaseException) -> RecipeError:
    """What `datasets` could not read, as one line naming the file and the line. The files are read again,
    line by line, to find it: only after a failure, so that a good corpus is read once."""
    text_column = "text" if source.builder == "text" else cfg.text_column
    for path in source.files:
        if (problem := first_unreadable(path, source.builder, text_column)) is not None:
            return problem
    if isinstance(error, RecipeError):
        return error
    while error.__cause__ or error.__context__:  # DatasetGenerationError wraps what went wrong
        error = error.__cause__ or error.__context__
    where = source.hub_id or ", ".join(source.files[:3])
    return RecipeError(f"could not read the corpus '{where}' ({type(error).__name__}: {first_line(error)}); check it")


def check_text_column(documents, source: CorpusSource, text_column: str) -> None:
    """The documents' column holds text, or one line names the file (and line) that holds something else."""
    feature = (documents.features or {}).get(text_column)
    if feature is None or (isinstance(feature, datasets.Value) and feature.dtype in TEXT_TYPES):
        return
    for path in source.files:
        if (problem := first_unreadable(path, source.builder, text_column)) is not None:
            raise problem
    kind = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__
    raise not_text(source.hub_id or ", ".join(source.files[:3]), None, text_column, kind)


# --- loading and tokenizing ----------------------------------------------------------------------


def load_documents(source: CorpusSource, cfg: DataConfig, streaming: bool = False, fresh: bool = False):
    """A `datasets` Dataset (or IterableDataset when streaming) with the documents' text column. `fresh`: read
    the files again rather than datasets' Arrow copy of them."""
    options = {
        "split": "train",
        "streaming": streaming,
        **({"download_mode": "reuse_cache_if_exists"} if fresh else {}),
    }
    try:
        if source.hub_id:
            ds = datasets.load_dataset(source.hub_id, cfg.dataset_config, **{**options, "split": cfg.split})
        elif source.builder == "text":
            ds = datasets.load_dataset("text", data_files=source.files, sample_by=cfg.sample_by, **options)
        else:
            ds = datasets.load_dataset(source.builder, data_files=source.files, **options)
    except DatasetGenerationError as e:  # a file it could not read: which one, and where
        raise unreadable_data_error(source, cfg, e) from None
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
    check_text_column(ds, source, text_column)
    return ds, text_column


def tokenize_function(tokenizer, text_column: str):
    """A batched `map` function: each non-blank document's token ids, followed by EOS."""
    eos = tokenizer.eos_token_id
    encode = batch_encoder(tokenizer)

    def tokenize(batch):
        column = batch[text_column]
        other = next((text for text in column if text is not None and not isinstance(text, str)), None)
        if other is not None:
            # a stream whose column type was not known ahead (check_text_column names the file when it is)
            raise RecipeError(
                f"the corpus has non-text values in column '{text_column}' ({type(other).__name__}); set "
                "data.text_column to the column that holds the documents' text"
            )
        texts = [text or "" for text in column]  # a null in a .jsonl is an empty document
        return {"input_ids": [ids + [eos] for ids, text in zip(encode(texts), texts, strict=True) if text.strip()]}

    return tokenize


def batch_encoder(tokenizer):
    """Token ids of a list of texts, without special tokens. A fast tokenizer's own `encode_batch_fast`
    (which skips the character offsets) gives the same ids as `tokenizer(texts)`, faster (BENCHMARKS.md,
    "Tokenizing"); a tokenizer whose file sets truncation or padding goes through `tokenizer(texts)`."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None or not hasattr(backend, "encode_batch_fast") or backend.truncation or backend.padding:
        return lambda texts: tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]
    return lambda texts: [encoding.ids for encoding in backend.encode_batch_fast(texts, add_special_tokens=False)]


def _num_proc(cfg: DataConfig, num_documents: int) -> int | None:
    if cfg.num_proc is not None:
        return cfg.num_proc if cfg.num_proc > 1 else None
    cores = os.cpu_count() or 1
    return min(cores, num_documents // 1000) if cores > 1 and num_documents >= 2000 else None


def tokenize_and_pack(documents, text_column: str, tokenizer, cfg: DataConfig, blocks_dir=None, fresh=False):
    """The tokens (cached by datasets; `fresh`: tokenized again all the same), their number, and the blocks,
    written to `blocks_dir` (None: datasets' cache)."""
    num_proc = _num_proc(cfg, len(documents))
    with interrupts_stop_the_pool() if num_proc else contextlib.nullcontext():
        tokens = documents.map(
            tokenize_function(tokenizer, text_column),
            batched=True,
            num_proc=num_proc,
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
    """Ctrl-C during a multi-process `map` ends as a KeyboardInterrupt, not as the multiprocess TimeoutError
    that datasets raises when it cannot collect the workers' results. Ctrl-C reaches the whole process group:
    the workers (forked with this handler) ignore it, the main process raises, and the pool ends them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    main_pid, interrupted = os.getpid(), False

    def on_interrupt(signum, frame):
        nonlocal interrupted
        if os.getpid() == main_pid:
            interrupted = True
            raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, on_interrupt)
    try:
        yield
    except Exception as e:
        if interrupted or _caused_by_interrupt(e):
            raise KeyboardInterrupt from None
        raise
    finally:
        signal.signal(signal.SIGINT, previous)


def _caused_by_interrupt(error: BaseException | None) -> bool:
    while error is not None:
        if isinstance(error, KeyboardInterrupt):
            return True
        error = error.__cause__ or error.__context__
    return False


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
# Why a cache of the recipe's own next to datasets' fingerprint cache (BENCHMARKS.md, "The block cache next
# to datasets' cache"): not for speed, since datasets' cache already spares the tokenizing on a second run
# and loading from either takes a fraction of a second. datasets records nothing to check its cached Arrow
# files against, and one cut at a record-batch boundary loads silently with part of the corpus missing;
# here, stats.json records the number of blocks there must be. The blocks are written here only, not into
# datasets' cache as well, so this costs no extra disk.


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


def discard(path: Path) -> None:
    trash = path.with_name(f".{path.name}.damaged-{os.getpid()}")
    shutil.rmtree(trash, ignore_errors=True)
    try:
        os.rename(path, trash)  # at once, so that no other process loads it meanwhile
    except FileNotFoundError:
        return  # another process removed it first
    except OSError as e:
        raise RecipeError(f"could not remove the damaged data cache {path} ({first_line(e)}); delete it") from None
    shutil.rmtree(trash, ignore_errors=True)


def save_atomically(splits: datasets.DatasetDict, stats: CorpusStats, path: Path) -> None:
    """Write into a temporary folder that replaces `path` in one rename (checkpoints.atomic_folder), so that a
    crash never leaves a half-written cache. A write that fails is fine only where another process has put
    the same, verified cache in place first."""
    from checkpoints import atomic_folder

    try:
        with atomic_folder(path) as tmp:
            splits.save_to_disk(str(tmp))
            (tmp / "stats.json").write_text(json.dumps(asdict(stats), indent=2))
    except OSError as e:
        if path.exists() and is_verified(path):
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


def is_verified(path: Path) -> bool:
    try:
        read_cache(path)
    except DamagedCache:
        return False
    return True


# --- the whole preparation -----------------------------------------------------------------------


def check_tokenizer(tokenizer) -> None:
    if tokenizer.eos_token_id is None:
        raise RecipeError("the tokenizer has no EOS token, which separates documents; use a tokenizer with one")


def prepare_datasets(cfg: DataConfig, tokenizer, use_cache: bool = True, rank: int = 0, world_size: int = 1):
    """Return ({"train", "validation"} datasets of blocks, CorpusStats). `rank` and `world_size` matter only
    when streaming, where each training process reads its own part of the corpus."""
    if cfg.streaming:
        from streaming import prepare_streaming  # streaming.py builds on this module

        return prepare_streaming(cfg, tokenizer, rank, world_size)
    check_tokenizer(tokenizer)
    source = find_corpus(cfg.path)
    if not use_cache:
        check_readable(source, cfg)
        return build_blocks(source, cfg, tokenizer)
    path = cache_path_for(source, cfg, tokenizer)
    fresh = False
    if path.exists():
        try:
            return read_cache(path)
        except DamagedCache as e:
            print(f"data: the cache {path} is damaged ({e}); preparing the data again", flush=True)
            discard(path)
            fresh = True  # datasets' own copies of the documents and tokens may be cut alike: not reused
    check_readable(source, cfg)
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
    stats = CorpusStats(
        documents=len(tokens),
        tokens=num_tokens,
        train_blocks=len(splits["train"]),
        validation_blocks=len(splits["validation"]),
        block_size=cfg.block_size,
        tokenize_seconds=time.perf_counter() - start,
    )
    return splits, stats


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
        start = time.perf_counter()
        splits, stats = prepare_datasets(cfg.data, tokenizer, use_cache=not args.no_cache)
        seconds = time.perf_counter() - start
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("\ninterrupted while preparing the data; nothing was cached", file=sys.stderr)
        return 130
    print(stats.summary())
    print(f"blocks ready in {seconds:.2f} s")
    if stats.cache_path and not args.no_cache:
        print(f"cache: {stats.cache_path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
