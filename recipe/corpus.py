"""The corpus: where its documents are, whether they can be read, how they are loaded and tokenized, and
its one fingerprint.

`data.path` (or each of `data.sources`) is a text file, several files, a glob, a folder, `.jsonl`/`.parquet`/
`.csv` files with a text column, or a Hub dataset id, read through `datasets.load_dataset`. Files that cannot
be read (binary, not UTF-8, a line that is not JSON, a column that is not text) stop the run in one line
naming the file and the line. The functions take a source's settings (`path`, `text_column`,
`dataset_config`, `split`, `sample_by`): the `data:` section itself, or one of its `sources`.
"""

from __future__ import annotations

import codecs
import contextlib
import glob
import gzip
import json
import logging
import os
from dataclasses import dataclass
from pathlib import Path

from recipe.cli import RecipeError, first_line, log, looks_like_hub_id

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import xxhash
from datasets.exceptions import DatasetGenerationError

BUILDERS = {  # the `datasets` builder of each kind of file
    "parquet": (".parquet",),
    "json": (".jsonl", ".json", ".jsonl.gz", ".json.gz"),
    "csv": (".csv",),
    "text": (".txt", ".text", ".md"),
}
LONG_LOAD_BYTES = 256 * 2**20  # a corpus this large takes datasets long enough to read that its bar is news
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
    sources: list[dict] | None = None  # a mixture's: a row per source, as the run record keeps them
    lines: list[str] | None = None  # and its summary: a line per source

    def summary(self) -> str:
        if self.lines:
            return "\n".join(self.lines)
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
        if self.tokens and self.tokenize_seconds:
            line += f"; tokenized at {self.tokens / self.tokenize_seconds:,.0f} tokens/s"
        return line


# --- finding the corpus --------------------------------------------------------------------------


@dataclass
class CorpusSource:
    """Where the documents come from: a `datasets` builder ("text", "json", "parquet", "csv") and its files,
    or a Hub dataset id (builder None)."""

    builder: str | None
    files: list[str]
    hub_id: str | None = None

    def names(self) -> list[str]:
        """The corpus as a model card may name it: the Hub id or the file names, never a local path."""
        return [self.hub_id] if self.hub_id else [os.path.basename(f) for f in self.files]


def builder_for(path: str) -> str | None:
    for builder, suffixes in BUILDERS.items():
        if path.lower().endswith(suffixes):
            return builder
    return "text" if "." not in Path(path).name else None  # a file without a suffix is text


SAID: set[str] = set()  # folders whose skipped files were named


def files_in_folder(folder: Path, key: str) -> list[str]:
    """The corpus files of a folder; the files it skips are named in one line, so none goes missing unseen."""
    files = sorted(p for p in folder.rglob("*") if p.is_file())
    used = [str(p) for p in files if builder_for(p.name) and not p.name.startswith(".")]
    skipped = [str(p.relative_to(folder)) for p in files if str(p) not in used]
    if skipped and str(folder) not in SAID:  # the corpus is looked at more than once; said once
        SAID.add(str(folder))
        more = f" and {len(skipped) - 3} more" if len(skipped) > 3 else ""
        log(
            f"data: {key} skips {len(skipped)} file(s) in {folder} that are hidden or not .txt, .md, .jsonl, "
            f".parquet or .csv: {', '.join(skipped[:3])}{more}"
        )
    return used


def find_corpus(path: str | list[str], key: str = "data.path") -> CorpusSource:
    """Resolve a source's `path` to files (or a Hub dataset id), or raise a RecipeError naming the problem."""
    paths = [path] if isinstance(path, str) else list(path)
    if not paths:
        raise RecipeError(f"{key} is empty: set it to a text file, a folder, a glob or a Hub dataset id")
    if len(paths) == 1 and not os.path.exists(os.path.expanduser(paths[0])) and looks_like_hub_id(paths[0]):
        return CorpusSource(builder=None, files=[], hub_id=paths[0])
    files = [f for p in paths for f in files_of(p, key)]
    builders = {builder_for(f) or "text" for f in files}
    if len(builders) > 1:
        raise RecipeError(
            f"{key} mixes file kinds ({', '.join(sorted(builders))}); use one kind per source, several "
            "kinds as data.sources (docs/data.md)"
        )
    for f in files:
        if os.path.getsize(f) == 0:
            raise RecipeError(f"data file is empty: '{f}'; put text in it or remove it from {key}")
    return CorpusSource(builder=builders.pop(), files=files)


def files_of(path: str, key: str) -> list[str]:
    """The files one entry of a source's `path` names: a glob's matches, a folder's corpus files, or the file."""
    expanded = os.path.expanduser(path)
    if any(ch in expanded for ch in "*?["):
        matches = sorted(f for f in glob.glob(expanded, recursive=True) if os.path.isfile(f))
        if not matches:
            raise RecipeError(f"{key}: no files match '{path}'")
        return matches
    if os.path.isdir(expanded):
        found = files_in_folder(Path(expanded), key)
        if not found:
            raise RecipeError(f"{key}: folder '{path}' holds no .txt, .md, .jsonl, .parquet or .csv files")
        return found
    if os.path.isfile(expanded):
        return [expanded]
    hint = f" (tiny Shakespeare: curl -o input.txt {TINY_SHAKESPEARE_URL})" if path == "input.txt" else ""
    raise RecipeError(f"data file not found: '{path}'; set {key} to your corpus{hint}")


def fingerprint(source: CorpusSource, spec) -> str:
    """The corpus's one fingerprint, for the data cache and for --resume: each file's name, size and first and
    last MiB (a Hub id with its config and split). It follows the contents, not the path: a moved corpus keeps
    it, a corpus that grows or is edited at either end changes it, without reading a large corpus whole."""
    if source.hub_id:
        return f"hub:{source.hub_id}:{spec.dataset_config}:{spec.split}"
    digest = xxhash.xxh3_128()
    for name in source.files:
        size = os.path.getsize(name)
        digest.update(f"{os.path.basename(name)}:{size}".encode())
        with open(name, "rb") as f:
            digest.update(f.read(2**20))
            f.seek(max(0, size - 2**20))
            digest.update(f.read(2**20))
    return digest.hexdigest()[:20]


# --- files that cannot be read -------------------------------------------------------------------

HEAD_BYTES = 8192  # read from each file before any work: enough to tell text from binary, as git does
COMPRESSED_SUFFIXES = (".gz", ".bz2", ".xz", ".zst", ".lz4", ".zip")
TEXT_TYPES = ("string", "large_string", "string_view", "null")  # a text column's Arrow types, in Parquet too

# datasets logs a JSON file it cannot parse before it raises; the recipe's own error names the line
logging.getLogger("datasets.packaged_modules.json.json").setLevel(logging.CRITICAL)


def check_readable(source: CorpusSource, spec) -> None:
    """Cheap checks before any work: the start of each text or JSON file is UTF-8 text, and each Parquet file
    has a Parquet footer whose text column holds strings. A problem further into a file shows up when
    `datasets` reads it, and `unreadable_data_error` then finds the line."""
    for path in source.files:
        if source.builder == "parquet":
            check_parquet(path, spec.text_column)
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
            "text (.txt, .md), .jsonl, .parquet or .csv files"
        )
    try:
        codecs.getincrementaldecoder("utf-8")().decode(head)  # not final: a character cut at the end is fine
    except UnicodeDecodeError as e:
        raise not_utf8(path, head.count(b"\n", 0, e.start) + 1, head[e.start]) from None


def check_parquet(path: str, text_column: str) -> None:
    try:
        schema = pq.read_schema(path)  # the footer only
    except (pa.ArrowException, OSError) as e:
        raise RecipeError(f"data file is not a Parquet file: '{path}' ({first_line(e)}); check data.path") from None
    if text_column in schema.names and (kind := str(schema.field(text_column).type)) not in TEXT_TYPES:
        raise not_text(path, None, text_column, kind)


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
        return None  # no lines to name; check_readable has checked its footer and its column's type before any work
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


def unreadable_data_error(source: CorpusSource, spec, error: BaseException) -> RecipeError:
    """What `datasets` could not read, as one line naming the file and the line. The files are read again,
    line by line, to find it: only after a failure, so that a good corpus is read once."""
    text_column = "text" if source.builder == "text" else spec.text_column
    for path in source.files:
        if (problem := first_unreadable(path, source.builder, text_column)) is not None:
            return problem
    if isinstance(error, RecipeError):
        return error
    while error.__cause__ or error.__context__:  # DatasetGenerationError wraps what went wrong
        error = error.__cause__ or error.__context__
    where = source.hub_id or ", ".join(source.files[:3])
    return RecipeError(f"could not read the corpus '{where}' ({type(error).__name__}: {first_line(error)}); check it")


def check_text_column(documents, source: CorpusSource, spec, text_column: str) -> None:
    """The documents' column holds text, or one line names the file (and line) that holds something else."""
    feature = (documents.features or {}).get(text_column)
    if feature is None or (isinstance(feature, datasets.Value) and feature.dtype in TEXT_TYPES):
        return
    kind = feature.dtype if isinstance(feature, datasets.Value) else type(feature).__name__
    where = source.hub_id or ", ".join(source.files[:3])
    raise unreadable_data_error(source, spec, not_text(where, None, text_column, kind))


# --- loading and tokenizing ----------------------------------------------------------------------


@contextlib.contextmanager
def progress_bars(shown: bool):
    """datasets' progress bars for long work only: a bar around a second's work, once per split, is noise."""
    was = datasets.is_progress_bar_enabled()
    (datasets.enable_progress_bars if shown and was else datasets.disable_progress_bars)()
    try:
        yield
    finally:
        (datasets.enable_progress_bars if was else datasets.disable_progress_bars)()


def load_documents(source: CorpusSource, spec, streaming: bool = False, fresh: bool = False):
    """A `datasets` Dataset (or IterableDataset when streaming) with the documents' text column. `fresh`: read
    the files again rather than datasets' Arrow copy of them."""
    options = {"split": "train", "streaming": streaming, "download_mode": "reuse_cache_if_exists" if fresh else None}
    long = source.hub_id is not None or sum(os.path.getsize(f) for f in source.files) > LONG_LOAD_BYTES
    try:
        with progress_bars(long and not streaming):
            if source.hub_id:
                ds = datasets.load_dataset(source.hub_id, spec.dataset_config, **{**options, "split": spec.split})
            elif source.builder == "text":
                ds = datasets.load_dataset("text", data_files=source.files, sample_by=spec.sample_by, **options)
            else:
                ds = datasets.load_dataset(source.builder, data_files=source.files, **options)
    except DatasetGenerationError as e:  # a file it could not read: which one, and where
        raise unreadable_data_error(source, spec, e) from None
    except (ValueError, OSError) as e:  # FileNotFoundError and ConnectionError are OSErrors
        where = source.hub_id or ", ".join(source.files[:3])
        raise RecipeError(f"could not load the corpus '{where}': {first_line(e)}") from None
    except Exception as e:  # datasets raises its own errors for Hub ids (DatasetNotFoundError, ...)
        if source.hub_id:
            raise RecipeError(
                f"could not load Hub dataset '{source.hub_id}' ({type(e).__name__}); check the id and your network, "
                "or point data.path at local files"
            ) from None
        raise
    text_column = "text" if source.builder == "text" else spec.text_column
    columns = ds.column_names or []
    if columns and text_column not in columns:
        raise RecipeError(
            f"the corpus has no column '{text_column}' (columns: {', '.join(columns)}); set data.text_column"
        )
    check_text_column(ds, source, spec, text_column)
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
