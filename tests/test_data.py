"""Corpus -> blocks: EOS between documents, full blocks, a validation split that shares no token, a cache."""

import copy
import errno
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import data
from recipe import corpus
from recipe.cli import RecipeError
from recipe.config import DataConfig, load_config

import datasets
import pytest
from conftest import CORPUS, ROOT, TOKENIZER


def config(tmp_path, **kw) -> DataConfig:
    """The YAML's data section, with the test corpus, short blocks and a cache of the test's own."""
    return replace(load_config().data, **{"path": CORPUS, "block_size": 64, "cache_dir": str(tmp_path / "cache"), **kw})


def nothing_cached(tmp_path) -> bool:
    cache = tmp_path / "cache"
    return not cache.exists() or not any(cache.iterdir())


def test_eos_is_appended_after_every_document(tmp_path, tokenizer):
    lines = [json.dumps({"text": t}) for t in ["Hello there.", "General Kenobi!", "", "You are a bold one."] * 40]
    (tmp_path / "docs.jsonl").write_text("\n".join(lines))
    cfg = config(tmp_path, path=str(tmp_path / "docs.jsonl"), block_size=16, validation_fraction=0.25)
    splits, stats = data.prepare_datasets(cfg, tokenizer)
    assert stats.documents == 120  # the empty documents are skipped
    expected = (
        sum(len(tokenizer(t)["input_ids"]) + 1 for t in ["Hello there.", "General Kenobi!", "You are a bold one."]) * 40
    )
    assert stats.tokens == expected
    stream = [t for split in ("train", "validation") for block in splits[split]["input_ids"] for t in block]
    assert stream.count(tokenizer.eos_token_id) >= (stats.train_blocks + stats.validation_blocks) * 16 // 12 - 2


def test_validation_split_is_disjoint_and_covers_the_corpus(tmp_path, tokenizer):
    splits, stats = data.prepare_datasets(config(tmp_path), tokenizer)
    train = [tuple(b) for b in splits["train"]["input_ids"]]
    validation = [tuple(b) for b in splits["validation"]["input_ids"]]
    assert all(len(b) == 64 for b in train + validation)
    assert stats.tokens == 341_095  # tiny shakespeare + one EOS
    assert len(train) + len(validation) == stats.tokens // 64
    assert len(validation) == min(256, round(stats.tokens // 64 * 0.05))
    # the blocks partition the token stream: cutting it ourselves gives each block exactly once across both
    # splits (a multiset equality), so no stretch of the corpus is both trained on and validated on
    ids = tokenizer(open(CORPUS).read(), add_special_tokens=False, verbose=False)["input_ids"] + [0]
    all_blocks = [tuple(ids[i : i + 64]) for i in range(0, len(ids) // 64 * 64, 64)]
    assert sorted(train + validation) == sorted(all_blocks)
    assert len(set(all_blocks)) == len(all_blocks) and not set(train) & set(validation)


def test_second_run_loads_the_cache_instead_of_tokenizing(tmp_path, tokenizer, monkeypatch):
    first, stats1 = data.prepare_datasets(config(tmp_path, block_size=32), tokenizer)
    assert not stats1.from_cache

    def fail(*a, **k):
        raise AssertionError("tokenized again")

    monkeypatch.setattr(data, "tokenize_and_pack", fail)
    second, stats2 = data.prepare_datasets(config(tmp_path, block_size=32), tokenizer)
    assert stats2.from_cache and stats2.cache_path == stats1.cache_path
    assert second["validation"]["input_ids"] == first["validation"]["input_ids"]
    # another block size is another cache entry
    monkeypatch.undo()
    _, stats3 = data.prepare_datasets(config(tmp_path, block_size=48), tokenizer)
    assert not stats3.from_cache and stats3.cache_path != stats1.cache_path


def record_batch_ends(arrow_file) -> list[int]:
    """Byte offsets at which each record batch of an Arrow stream file ends."""
    import pyarrow as pa

    ends = []
    with open(arrow_file, "rb") as f:
        pa.ipc.read_schema(pa.ipc.read_message(f))
        while f.tell() < os.path.getsize(arrow_file):
            try:
                pa.ipc.read_message(f)
            except (StopIteration, EOFError):  # the end-of-stream marker
                break
            ends.append(f.tell())
    return ends


def damage(path, how: str) -> None:
    arrow_file = next((path / "train").glob("*.arrow"))
    if how == "cut at a record-batch boundary":  # still loads, silently, with fewer blocks
        ends = record_batch_ends(arrow_file)
        assert len(ends) > 2
        os.truncate(arrow_file, ends[1])
    elif how == "cut inside a record batch":
        os.truncate(arrow_file, os.path.getsize(arrow_file) // 2 + 7)
    else:
        (path / "stats.json").write_text("{")


@pytest.mark.parametrize(
    "how", ["cut at a record-batch boundary", "cut inside a record batch", "stats.json unreadable"]
)
def test_a_damaged_cache_is_rebuilt_with_one_line(tmp_path, tokenizer, capsys, how):
    first, stats = data.prepare_datasets(config(tmp_path), tokenizer)
    expected = first["train"]["input_ids"][:3]
    del first  # memory-mapped on the file about to be cut
    damage(Path(stats.cache_path), how)
    capsys.readouterr()

    again, rebuilt = data.prepare_datasets(config(tmp_path), tokenizer)
    line = capsys.readouterr().out.strip()
    assert line.startswith(f"data: the cache {stats.cache_path} is damaged (") and "\n" not in line
    assert line.endswith("; preparing the data again")
    if how == "cut at a record-batch boundary":
        assert f"2,000 train blocks where stats.json records {stats.train_blocks:,}" in line
    assert not rebuilt.from_cache and len(again["train"]) == stats.train_blocks
    assert again["train"]["input_ids"][:3] == expected
    _, loaded = data.prepare_datasets(config(tmp_path), tokenizer)  # the rebuilt cache is in place
    assert loaded.from_cache and loaded.train_blocks == stats.train_blocks
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == [Path(stats.cache_path).name]


def test_a_damaged_cache_is_rebuilt_from_the_files_not_from_datasets_cache(tmp_path, tokenizer, monkeypatch, capsys):
    """Cut alike, datasets' own Arrow copies of the documents and tokens would load silently too: the
    rebuild reads and tokenizes the files again."""
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", str(tmp_path / "datasets"))
    jsonl(tmp_path / "docs.jsonl", documents() * 30)  # 3,000 documents
    cfg = config(tmp_path, path=str(tmp_path / "docs.jsonl"))
    first, stats = data.prepare_datasets(cfg, tokenizer)
    expected = first["validation"]["input_ids"]
    del first
    cut = [arrow for arrow in (tmp_path / "datasets").rglob("*.arrow") if len(record_batch_ends(arrow)) > 1]
    assert cut  # the documents and tokens, each 3,000 rows in batches of 1,000
    for arrow in cut + list((Path(stats.cache_path) / "train").glob("*.arrow")):
        os.truncate(arrow, record_batch_ends(arrow)[0])

    again, rebuilt = data.prepare_datasets(cfg, tokenizer)
    assert "is damaged (1,000 train blocks where stats.json records" in capsys.readouterr().out
    assert (rebuilt.documents, rebuilt.tokens, rebuilt.train_blocks) == (
        stats.documents,
        stats.tokens,
        stats.train_blocks,
    )
    assert again["validation"]["input_ids"] == expected


def test_a_cache_that_cannot_be_put_in_place_is_an_error_unless_another_process_wrote_it(
    tmp_path, tokenizer, monkeypatch
):
    splits, stats = data.prepare_datasets(config(tmp_path), tokenizer, use_cache=False)
    path = tmp_path / "cache" / "blocks-x"
    path.mkdir(parents=True)
    (path / "stray").write_text("not a cache")
    real_rename = Path.rename

    def refuse_to_put_it_in_place(self, target):
        if Path(target) == path and self.name.startswith(".blocks-x.tmp"):
            raise OSError(errno.EACCES, "Permission denied")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", refuse_to_put_it_in_place)
    with pytest.raises(RecipeError, match=f"^could not write the data cache {path} .*; free some space"):
        data.save_atomically(splits, stats, path)
    assert sorted(p.name for p in path.parent.iterdir()) == ["blocks-x"]  # the temporary folder is gone
    assert (path / "stray").is_file()  # and what was there is back

    monkeypatch.setattr(Path, "rename", real_rename)
    data.save_atomically(splits, stats, path)  # as another process would, first
    monkeypatch.setattr(Path, "rename", refuse_to_put_it_in_place)
    data.save_atomically(splits, stats, path)  # cannot put its own in place, but a verified cache is there
    assert data.read_cache(path)[1].train_blocks == stats.train_blocks
    assert sorted(p.name for p in path.parent.iterdir()) == ["blocks-x"]


def test_a_full_disk_while_caching_is_one_line_and_leaves_nothing(tmp_path, tokenizer, monkeypatch):
    def fill_the_disk(self, folder, **kwargs):
        Path(folder).mkdir(parents=True, exist_ok=True)
        (Path(folder) / "data.arrow").write_bytes(b"half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(datasets.DatasetDict, "save_to_disk", fill_the_disk)
    with pytest.raises(RecipeError, match=r"^could not write the data cache .*No space left on device"):
        data.prepare_datasets(config(tmp_path), tokenizer)
    assert nothing_cached(tmp_path)


def test_changed_file_invalidates_the_cache(tmp_path, tokenizer):
    corpus = tmp_path / "corpus.txt"
    corpus.write_text(open(CORPUS).read()[:20000])
    cfg = config(tmp_path, path=str(corpus))
    _, first = data.prepare_datasets(cfg, tokenizer)
    corpus.write_text(open(CORPUS).read()[:30000])
    _, second = data.prepare_datasets(cfg, tokenizer)
    assert not second.from_cache and second.tokens > first.tokens


def test_folder_glob_and_list_of_files(tmp_path, tokenizer):
    text = open(CORPUS).read()
    folder = tmp_path / "books"
    folder.mkdir()
    for i in range(3):
        (folder / f"part{i}.txt").write_text(text[i * 10000 : (i + 1) * 10000])
    for path in [str(folder), str(folder / "*.txt"), [str(folder / f"part{i}.txt") for i in range(3)]]:
        _, stats = data.prepare_datasets(config(tmp_path, path=path), tokenizer, use_cache=False)
        assert stats.documents == 3


def test_parquet_with_text_column(tmp_path, tokenizer):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [open(CORPUS).read()[i : i + 2000] for i in range(0, 40000, 2000)]
    pq.write_table(pa.table({"content": rows, "id": list(range(len(rows)))}), tmp_path / "c.parquet")
    cfg = config(tmp_path, path=str(tmp_path / "c.parquet"), text_column="content")
    _, stats = data.prepare_datasets(cfg, tokenizer)
    assert stats.documents == 20
    with pytest.raises(RecipeError, match="no column 'text'.*set data.text_column"):
        data.prepare_datasets(config(tmp_path, path=str(tmp_path / "c.parquet")), tokenizer)


TEXT = open(CORPUS).read()


def jsonl(path, rows):
    path.write_text("\n".join(json.dumps(row) for row in rows))


def documents(n=100):
    return [{"text": TEXT[i * 300 : i * 300 + 300]} for i in range(n)]


def with_line(number, line):
    def write(path):
        rows = [json.dumps(row) for row in documents()]
        rows[number - 1] = line
        path.write_text("\n".join(rows))

    return write


def parquet(path, column):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.table({"text": column}), path)


# file name, how it is written, the first words of the error, where in the file (None: the whole file)
BAD_CORPORA = {
    "missing": ("corpus.txt", lambda p: None, "data file not found", None),
    "empty": ("corpus.txt", lambda p: p.write_text(""), "data file is empty", None),
    "blank": ("corpus.txt", lambda p: p.write_text("\n\n  \n"), "the corpus '", None),  # '<path>' holds no text
    "too short": (
        "corpus.txt",
        lambda p: p.write_text("Only a few words."),
        "the corpus has 6 tokens, fewer than",
        None,
    ),
    "binary": ("weights.bin", lambda p: p.write_bytes(bytes(range(256)) * 40), "data file is binary, not text", None),
    "utf-16": ("corpus.txt", lambda p: p.write_text(TEXT[:5000], encoding="utf-16"), "data file is UTF-16", None),
    "latin-1 at the start": (
        "corpus.txt",
        lambda p: p.write_bytes(TEXT[:200].encode() + "café\n".encode("latin-1") + TEXT[200:30_000].encode()),
        "data file is not UTF-8 text",
        "line 14",
    ),
    "latin-1 far in": (  # beyond the first bytes checked ahead: found after datasets fails
        "corpus.txt",
        lambda p: p.write_bytes(TEXT[:20_000].encode() + "café\n".encode("latin-1") + TEXT[20_000:30_000].encode()),
        "data file is not UTF-8 text",
        "line 757",
    ),
    "malformed json line": (
        "docs.jsonl",
        with_line(58, '{"text": "cut off'),
        "data file has a line that is not JSON",
        "line 58",
    ),
    "json line not an object": (
        "docs.jsonl",
        with_line(71, "[1, 2]"),
        "data file has a line that is not a JSON object",
        "line 71",
    ),
    "integers in json": (
        "docs.jsonl",
        lambda p: jsonl(p, [{"text": i} for i in range(50)]),
        "data file has non-text values in column 'text' (int)",
        "line 1",
    ),
    "one integer in json": (
        "docs.jsonl",
        with_line(71, '{"text": 5}'),
        "data file has non-text values in column 'text' (int)",
        "line 71",
    ),
    "lists in json": (
        "docs.jsonl",
        lambda p: jsonl(p, [{"text": ["a", "b"]}] * 50),
        "data file has non-text values in column 'text' (list)",
        "line 1",
    ),
    "integers in parquet": (
        "docs.parquet",
        lambda p: parquet(p, list(range(50))),
        "data file has non-text values in column 'text' (int64)",
        None,
    ),
    "not parquet": (
        "docs.parquet",
        lambda p: p.write_bytes(b"PAR1" + bytes(range(256)) * 4),
        "data file is not a Parquet file",
        None,
    ),
}


@pytest.mark.parametrize("name", BAD_CORPORA)
def test_bad_corpora_fail_with_one_line_naming_the_file(tmp_path, tokenizer, name):
    file_name, write, first_words, where = BAD_CORPORA[name]
    path = tmp_path / file_name
    write(path)
    with pytest.raises(RecipeError) as error:
        data.prepare_datasets(config(tmp_path, path=str(path)), tokenizer)
    message = str(error.value)
    assert message.startswith(first_words) and "\n" not in message and "; " in message  # what is wrong; the fix
    assert str(path) in message or name == "too short"  # a short corpus may be many files
    if where:
        assert re.search(rf"'{re.escape(str(path))}', {where}\b", message)
    assert nothing_cached(tmp_path)


def test_python_data_py_prints_the_numbers(tmp_path, capsys):
    code = data.main(
        [
            f"tokenizer={TOKENIZER}",
            f"data.path={CORPUS}",
            "data.block_size=256",
            f"data.cache_dir={tmp_path}",
        ]
    )
    out = capsys.readouterr().out
    assert code == 0
    assert "1 documents, 341,095 tokens -> 1,265 train / 67 validation blocks of 256" in out
    assert "tokens/s" in out


def test_document_aware_collator_restarts_positions_and_keeps_documents_apart(tokenizer):
    from recipe.config import load_config
    from recipe.model import build_llama_config

    import torch
    from conftest import TINY_MODEL
    from transformers import AutoModelForCausalLM

    eos = tokenizer.eos_token_id
    collate = data.DocumentAwareCollator(eos)
    batch = collate([{"input_ids": [5, 6, eos, 7, 8, 9, eos, 10]}, {"input_ids": [1, 2, 3, 4, 5, 6, 7, 8]}])
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1, 2, 3, 0], list(range(8))]
    assert batch["labels"].tolist() == [[5, 6, eos, -100, 8, 9, eos, -100], [1, 2, 3, 4, 5, 6, 7, 8]]

    # the model sees each packed document exactly as if it were alone
    cfg = load_config(None, TINY_MODEL)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(build_llama_config(cfg), attn_implementation="sdpa").eval()
    model.config.use_cache = False  # as the recipe trains: with a KV cache transformers ignores packing
    first = tokenizer("To be, or not to be")["input_ids"] + [eos]
    second = tokenizer("that is the question")["input_ids"]
    packed = collate([{"input_ids": first + second}])
    with torch.no_grad():
        together = model(input_ids=packed["input_ids"], position_ids=packed["position_ids"]).logits[0]
        alone = [model(input_ids=torch.tensor([ids])).logits[0] for ids in (first, second)]
        mixed = model(input_ids=packed["input_ids"]).logits[0]
    assert torch.allclose(together, torch.cat(alone), atol=1e-5)
    assert not torch.allclose(mixed[len(first) :], alone[1], atol=1e-3)  # plain packing does mix them


def test_fast_batch_encoding_gives_the_ids_of_the_tokenizer(tokenizer):
    texts = [
        open(CORPUS).read()[:5_000],
        "  leading spaces, tabs\t and\nnewlines ",
        "naïve café 東京 🙂",
        "a<|endoftext|>b",
        "",
    ]
    expected = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert corpus.batch_encoder(tokenizer)(texts) == expected
    tokenize = corpus.tokenize_function(tokenizer, "text")
    eos = tokenizer.eos_token_id
    assert tokenize({"text": texts + [None]})["input_ids"] == [ids + [eos] for ids in expected[:4]]
    truncating = copy.deepcopy(tokenizer)
    truncating.backend_tokenizer.enable_truncation(8)  # as a tokenizer.json may set it: never cut documents
    assert corpus.batch_encoder(truncating)(texts) == expected


@pytest.mark.slow
def test_ctrl_c_while_two_processes_tokenize_is_a_keyboard_interrupt(tmp_path):
    """Ctrl-C reaches the whole process group: the tokenizer processes and the main one. The run ends as a
    KeyboardInterrupt reported in one line (not datasets' multiprocess TimeoutError), and caches nothing."""
    corpus, started = tmp_path / "docs.jsonl", tmp_path / "tokenizing"
    jsonl(corpus, documents() * 40)  # 4,000 documents: two processes tokenize them
    script = f"""
import pathlib, sys, time
import data

tokenize_function = data.tokenize_function

def slowly(*args):  # a second per batch, so that Ctrl-C lands while the workers tokenize
    tokenize = tokenize_function(*args)

    def tokenize_slowly(batch):
        pathlib.Path({str(started)!r}).touch()
        time.sleep(1)
        return tokenize(batch)

    return tokenize_slowly

data.tokenize_function = slowly
sys.exit(data.main(sys.argv[1:]))
"""
    overrides = [
        f"tokenizer={TOKENIZER}",
        f"data.path={corpus}",
        "data.num_proc=2",
        f"data.cache_dir={tmp_path / 'cache'}",
    ]
    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "datasets")}
    process = subprocess.Popen(
        [sys.executable, "-c", script, *overrides],
        cwd=ROOT,
        env=env,
        text=True,
        start_new_session=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    deadline = time.monotonic() + 120
    while not started.exists() and process.poll() is None and time.monotonic() < deadline:
        time.sleep(0.1)
    assert started.exists(), process.communicate()
    os.killpg(process.pid, signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 130, err[-3000:]
    assert err.rstrip().splitlines()[-1] == "SIGINT: stopped while preparing the data; nothing was cached"
    assert "Traceback" not in err and "TimeoutError" not in err, err[-3000:]
    assert nothing_cached(tmp_path)


def test_corpus_fingerprint_follows_the_contents_not_the_path(tmp_path):
    text = "To be, or not to be.\n" * 100
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    for folder in ("a", "b"):
        (tmp_path / folder / "c.txt").write_text(text)
    spec = load_config(None, [f"data.path={tmp_path / 'a' / 'c.txt'}"]).data
    here = corpus.fingerprint(corpus.find_corpus(str(tmp_path / "a" / "c.txt")), spec)
    assert corpus.fingerprint(corpus.find_corpus(str(tmp_path / "b" / "c.txt")), spec) == here  # moved
    with (tmp_path / "a" / "c.txt").open("a") as f:
        f.write("That is the question.\n")
    assert corpus.fingerprint(corpus.find_corpus(str(tmp_path / "a" / "c.txt")), spec) != here  # grown


def test_a_csv_is_read_by_its_text_column_and_skipped_files_are_named(tmp_path, tokenizer, capsys):
    folder = tmp_path / "corpus"
    folder.mkdir()
    (folder / "notes.csv").write_text("id,content\n" + '1,"To be, or not to be"\n2,"that is the question"\n' * 200)
    (folder / "picture.png").write_bytes(b"\x89PNG")
    (folder / ".hidden.csv").write_text("id,content\n")
    source = corpus.find_corpus(str(folder))
    assert source.builder == "csv" and [Path(f).name for f in source.files] == ["notes.csv"]
    assert "skips 2 file(s)" in capsys.readouterr().out
    cfg = load_config(
        None,
        [
            f"data.path={folder}",
            "data.text_column=content",
            "data.block_size=16",
            f"data.cache_dir={tmp_path / 'cache'}",
        ],
    ).data
    splits, stats = data.prepare_datasets(cfg, tokenizer)
    assert stats.documents == 400  # rows, not lines of text with their commas
    first = tokenizer.decode(splits["train"][0]["input_ids"] + splits["validation"][0]["input_ids"])
    assert "id," not in first and '"' not in first
