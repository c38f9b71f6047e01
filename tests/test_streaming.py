"""Streaming: held-out blocks first, each process its own documents, exact resumes by seeking, position hand-off."""

import json
import re
from dataclasses import replace
from types import SimpleNamespace

import data
from recipe import corpus, streaming
from recipe.cli import RecipeError
from recipe.config import DataConfig, load_config

import pytest
from conftest import CORPUS


def config(tmp_path, **kw) -> DataConfig:
    settings = {"path": CORPUS, "block_size": 64, "cache_dir": str(tmp_path / "cache"), "streaming": True, **kw}
    return replace(load_config().data, **settings)


def test_streaming_holds_out_the_first_blocks(tmp_path, tokenizer):
    cfg = config(tmp_path, max_validation_blocks=4, sample_by="paragraph")
    splits, stats = streaming.prepare_streaming(cfg, tokenizer)
    validation = [tuple(b) for b in splits["validation"]["input_ids"]]
    assert stats.validation_blocks == 4 and len(validation) == 4
    train = [tuple(b["input_ids"].tolist()) for _, b in zip(range(50), splits["train"], strict=False)]
    assert all(len(b) == 64 for b in train) and not set(train) & set(validation)


def test_prepare_datasets_hands_streaming_over(tmp_path, tokenizer):
    splits, _ = data.prepare_datasets(config(tmp_path, max_validation_blocks=4, sample_by="paragraph"), tokenizer)
    assert isinstance(splits["train"], streaming.StreamedBlocks)


def test_streamed_blocks_resume_exactly_where_a_checkpoint_stood(tmp_path, tokenizer, monkeypatch):
    """Seeking the stream from a remembered position gives the very blocks an unbroken run trains on next:
    inside a window, at a window's edge and across the end of a pass, after a JSON round trip."""
    monkeypatch.setattr(streaming.StreamedBlocks, "WINDOW", 7)
    monkeypatch.setattr(streaming.PackedReader, "DOCUMENTS_PER_BATCH", 5)
    small = tmp_path / "small.txt"
    small.write_text(open(CORPUS).read()[:30_000])
    cfg = config(tmp_path, path=str(small), sample_by="paragraph", max_validation_blocks=3)
    splits, _ = streaming.prepare_streaming(cfg, tokenizer)
    documents, text_column = corpus.load_documents(corpus.find_corpus(cfg.path), cfg, streaming=True)
    whole_pass = len(streaming.PackedReader(documents, splits["train"].tokenize, text_column, 64).take(10**6)) - 3
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
        resumed, _ = streaming.prepare_streaming(cfg, tokenizer)
        resumed["train"].resume_at = position
        again = [b["input_ids"].tolist() for _, b in zip(range(15), resumed["train"], strict=False)]
        assert again == blocks[n : n + 15], n


def test_streamed_corpus_too_small_for_the_held_out_blocks_is_one_line(tmp_path, tokenizer):
    corpus = tmp_path / "small.txt"
    corpus.write_text(open(CORPUS).read()[:3_000])
    cfg = config(tmp_path, path=str(corpus), sample_by="paragraph", max_validation_blocks=100)
    with pytest.raises(RecipeError, match=r"holds only \d+ blocks of 64 tokens, all of them held out"):
        streaming.prepare_streaming(cfg, tokenizer)


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
    cfg = config(tmp_path, path=[str(p) for p in paths], max_validation_blocks=3)
    splits = [streaming.prepare_streaming(cfg, tokenizer, rank=r, world_size=2)[0] for r in (0, 1)]
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
    cfg = config(tmp_path, max_validation_blocks=3)  # one file, one document
    with pytest.raises(RecipeError, match="process 1 of 2 gets no block of 64 tokens from the stream"):
        streaming.prepare_streaming(cfg, tokenizer, rank=0, world_size=2)


def test_a_bad_line_far_into_a_stream_is_one_line_naming_it(tmp_path, tokenizer):
    """The held-out blocks come from the first file; the malformed line of the second shows up only while
    training reads on."""
    text = open(CORPUS).read()
    for name in ("a", "b"):
        (tmp_path / f"{name}.jsonl").write_text(
            "\n".join(json.dumps({"text": text[i : i + 200]}) for i in range(0, 20_000, 200))
        )
    with open(tmp_path / "b.jsonl", "a") as f:
        f.write('\n{"text": "cut off\n')
    cfg = config(tmp_path, path=str(tmp_path / "*.jsonl"), max_validation_blocks=3)
    splits, _ = streaming.prepare_streaming(cfg, tokenizer)
    with pytest.raises(RecipeError, match=r"^data file has a line that is not JSON: '.*b.jsonl', line 101 "):
        for _ in splits["train"]:
            pass


def test_the_position_goes_from_the_batch_to_the_run_state_and_back():
    """take_position keeps a batch's position (and takes it out of the batch); at the end of a step that saves, every
    process's goes into the run state the checkpoint keeps; resume_stream seeks there and tells the Trainer not to
    skip batches itself."""
    run = SimpleNamespace(stream_positions=None)
    callback = streaming.StreamPositionCallback(run)
    batch = {"input_ids": [[1, 2]], "stream_position": {"block": 8, "window": 1}}
    callback.take_position(batch)
    callback.take_position({"input_ids": [[3, 4]]})  # an evaluation batch carries none
    assert "stream_position" not in batch and callback.latest == {"block": 8, "window": 1}
    callback.on_step_end(None, None, SimpleNamespace(should_save=False))
    assert run.stream_positions is None
    callback.on_step_end(None, None, SimpleNamespace(should_save=True))
    assert run.stream_positions == [{"block": 8, "window": 1}]

    stream = SimpleNamespace(resume_at=None)
    resumed = SimpleNamespace(world_size=1, process_index=0, ignore_data_skip=False)
    streaming.resume_stream(stream, json.loads(json.dumps(run.stream_positions)), "checkpoint-2", resumed)
    assert stream.resume_at == {"block": 8, "window": 1} and resumed.ignore_data_skip


@pytest.mark.parametrize(
    "positions, line",
    [
        (None, "checkpoint-2 holds no stream position; replaying the stream up to it"),
        ([{"block": 8}, {"block": 8}], "written by 2 process(es) and this run has 1"),
    ],
)
def test_a_checkpoint_without_a_usable_position_replays_the_stream(capsys, positions, line):
    stream, args = (
        SimpleNamespace(resume_at=None),
        SimpleNamespace(world_size=1, process_index=0, ignore_data_skip=False),
    )
    streaming.resume_stream(stream, positions, "checkpoint-2", args)
    assert line in capsys.readouterr().out
    assert stream.resume_at is None and not args.ignore_data_skip


def test_streaming_with_several_dataloader_workers_is_one_line():
    load_config(None, ["data.streaming=true", "training.dataloader_num_workers=1"])
    with pytest.raises(RecipeError, match="set training.dataloader_num_workers to 1"):
        load_config(None, ["data.streaming=true", "training.dataloader_num_workers=2"])
