"""Corpus -> blocks: EOS between documents, full blocks, a validation split that shares no token, a cache."""

import copy
import json
import re
from dataclasses import replace

import pytest
from conftest import CORPUS, TOKENIZER

import data
from config import DataConfig, RecipeError, load_config


def config(tmp_path, **kw) -> DataConfig:
    """The YAML's data section, with the test corpus, short blocks and a cache of the test's own."""
    return replace(load_config().data, **{"path": CORPUS, "block_size": 64, "cache_dir": str(tmp_path / "cache"), **kw})


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


@pytest.mark.parametrize(
    "setup, message",
    [
        (lambda p: None, "data file not found"),
        (lambda p: p.write_text(""), "data file is empty"),
        (lambda p: p.write_text("\n\n  \n"), "holds no text"),
        (lambda p: p.write_text("Only a few words."), "fewer than the 2 blocks of 64"),
    ],
)
def test_bad_corpora_fail_with_one_clear_line(tmp_path, tokenizer, setup, message):
    path = tmp_path / "corpus.txt"
    setup(path)
    with pytest.raises(RecipeError, match=message):
        data.prepare_datasets(config(tmp_path, path=str(path)), tokenizer)


def test_streaming_holds_out_the_first_blocks(tmp_path, tokenizer):
    cfg = config(tmp_path, streaming=True, max_validation_blocks=4, sample_by="paragraph")
    splits, stats = data.prepare_datasets(cfg, tokenizer)
    validation = [tuple(b) for b in splits["validation"]["input_ids"]]
    assert stats.validation_blocks == 4 and len(validation) == 4
    train = [tuple(b["input_ids"].tolist()) for _, b in zip(range(50), splits["train"], strict=False)]
    assert all(len(b) == 64 for b in train) and not set(train) & set(validation)


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


def test_streamed_blocks_resume_exactly_where_a_checkpoint_stood(tmp_path, tokenizer, monkeypatch):
    """Seeking the stream from a remembered position gives the very blocks an unbroken run trains on next:
    inside a window, at a window's edge and across the end of a pass, after a JSON round trip."""
    monkeypatch.setattr(data.StreamedBlocks, "WINDOW", 7)
    monkeypatch.setattr(data.PackedReader, "DOCUMENTS_PER_BATCH", 5)
    corpus = tmp_path / "small.txt"
    corpus.write_text(open(CORPUS).read()[:30_000])
    cfg = config(tmp_path, path=str(corpus), streaming=True, sample_by="paragraph", max_validation_blocks=3)
    splits, _ = data.prepare_datasets(cfg, tokenizer)
    documents, text_column = data.load_documents(data.find_corpus(cfg.path), cfg, streaming=True)
    whole_pass = len(data.PackedReader(documents, splits["train"].tokenize, text_column, 64).take(10**6)) - 3
    wanted = {5, 7, 13, 14, whole_pass - 1, whole_pass, whole_pass + 1, 2 * whole_pass + 4}
    stream, blocks, positions = splits["train"], [], {}
    for block in stream:
        blocks.append(block["input_ids"].tolist())
        if len(blocks) in wanted:  # the position each block carries: where the stream stands after it
            positions[len(blocks)] = json.loads(json.dumps(block["stream_position"]))
        if len(blocks) == max(wanted) + 20:
            break
    validation = {tuple(b) for b in splits["validation"]["input_ids"]}
    assert not validation & {tuple(b) for b in blocks} and len(blocks[0]) == 64
    assert blocks[:whole_pass] != blocks[whole_pass : 2 * whole_pass]  # each pass in another order
    assert sorted(blocks[:whole_pass]) == sorted(blocks[whole_pass : 2 * whole_pass])  # of the same blocks
    assert positions.keys() == wanted
    for n, position in positions.items():
        resumed, _ = data.prepare_datasets(cfg, tokenizer)
        resumed["train"].resume_at = position
        again = [b["input_ids"].tolist() for _, b in zip(range(15), resumed["train"], strict=False)]
        assert again == blocks[n : n + 15], n


def test_streamed_corpus_too_small_for_the_held_out_blocks_is_one_line(tmp_path, tokenizer):
    corpus = tmp_path / "small.txt"
    corpus.write_text(open(CORPUS).read()[:3_000])
    cfg = config(tmp_path, path=str(corpus), streaming=True, sample_by="paragraph", max_validation_blocks=100)
    with pytest.raises(RecipeError, match=r"holds only \d+ blocks of 64 tokens, all of them held out"):
        data.prepare_datasets(cfg, tokenizer)


def test_document_aware_collator_restarts_positions_and_keeps_documents_apart(tokenizer):
    import torch
    from conftest import TINY_MODEL
    from transformers import AutoModelForCausalLM

    from config import load_config
    from model import build_llama_config

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


@pytest.mark.parametrize("files", [1, 2])
def test_streaming_processes_read_their_own_documents(tmp_path, tokenizer, files):
    """Two processes: each reads its own documents (every other one of one file, or a file each), both hold
    out the same validation blocks, and only the document the last held-out block cuts goes on in training."""
    text = open(CORPUS).read()
    paths = [tmp_path / f"part{f}.jsonl" for f in range(files)]
    for f, path in enumerate(paths):
        per_file = 120 // files
        docs = [f"doc{f * per_file + i}x {text[i * 300 : i * 300 + 300]}" for i in range(per_file)]
        path.write_text("\n".join(json.dumps({"text": d}) for d in docs))
    cfg = config(tmp_path, path=[str(p) for p in paths], streaming=True, max_validation_blocks=3)
    splits = [data.prepare_datasets(cfg, tokenizer, rank=r, world_size=2)[0] for r in (0, 1)]
    assert splits[0]["validation"]["input_ids"] == splits[1]["validation"]["input_ids"]

    def documents_in(blocks) -> set[int]:  # the doc<n>x markers each block holds whole
        return {int(n) for b in blocks for n in re.findall(r"(?:^|>)doc(\d+)x ", tokenizer.decode(b))}

    held_out = documents_in(splits[0]["validation"]["input_ids"])
    read = [documents_in(b["input_ids"].tolist() for _, b in zip(range(60), s["train"], strict=False)) for s in splits]
    if files == 1:  # every other document
        assert all(d % 2 == 0 for d in read[0] | held_out) and all(d % 2 == 1 for d in read[1])
    else:  # a file each
        assert all(d < 60 for d in read[0] | held_out) and all(d >= 60 for d in read[1])
    assert len(read[0]) > 10 and len(read[1]) > 10
    assert max(held_out) <= min(read[0])  # at most the document cut by the last held-out block is in both


def test_a_process_left_without_documents_is_one_line(tmp_path, tokenizer):
    cfg = config(tmp_path, streaming=True, max_validation_blocks=3)  # one file, one document
    with pytest.raises(RecipeError, match="process 1 of 2 gets no block of 64 tokens from the stream"):
        data.prepare_datasets(cfg, tokenizer, rank=0, world_size=2)


def test_fast_batch_encoding_gives_the_ids_of_the_tokenizer(tokenizer):
    texts = [
        open(CORPUS).read()[:5_000],
        "  leading spaces, tabs\t and\nnewlines ",
        "naïve café 東京 🙂",
        "a<|endoftext|>b",
        "",
    ]
    expected = tokenizer(texts, add_special_tokens=False)["input_ids"]
    assert data.batch_encoder(tokenizer)(texts) == expected
    tokenize = data.tokenize_function(tokenizer, "text")
    eos = tokenizer.eos_token_id
    assert tokenize({"text": texts + [None]})["input_ids"] == [ids + [eos] for ids in expected[:4]]
    truncating = copy.deepcopy(tokenizer)
    truncating.backend_tokenizer.enable_truncation(8)  # as a tokenizer.json may set it: never cut documents
    assert data.batch_encoder(truncating)(texts) == expected
