"""Weighted mixtures (`data.sources`): blocks drawn from several corpora in proportion to their weights, each
source cached and validated on its own, exact resume (cached and streamed), one line for every mistake."""

import json
import subprocess
import sys
from collections import Counter
from itertools import islice
from pathlib import Path

import data
import push
import train
from recipe import resume
from recipe.cli import RecipeError
from recipe.config import load_config
from recipe.run_folder import read_trainer_state
from recipe.run_state import RunState
from recipe.trainer import MixedBlocks, MixtureOrder, RecipeTrainer

import numpy as np
import pytest
from conftest import CORPUS, TINY_MODEL, TOKENIZER, StopAt, tiny_overrides, torchrun_command
from test_resume import MAIN, checkpoint


@pytest.fixture(scope="session")
def corpora(tmp_path_factory) -> Path:
    """Two corpora of different kinds from the halves of tiny Shakespeare: a text file and a .jsonl whose text
    is in a column `content`."""
    folder = tmp_path_factory.mktemp("corpora")
    text = Path(CORPUS).read_text()
    (folder / "books.txt").write_text(text[: len(text) // 2])
    lines = [json.dumps({"content": p}) for p in text[len(text) // 2 :].split("\n\n")]
    (folder / "notes.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def sources(folder: Path, books: float = 0.7, notes: float = 0.3, notes_path: Path | None = None) -> str:
    return (
        f"data.sources=[{{path: {folder / 'books.txt'}, weight: {books}}}, "
        f"{{path: {notes_path or folder / 'notes.jsonl'}, weight: {notes}, text_column: content}}]"
    )


def mixture_overrides(folder: Path, cache: Path, *more: str) -> list[str]:
    return [
        f"tokenizer={TOKENIZER}",
        "data.block_size=64",
        "data.max_validation_blocks=8",
        f"data.cache_dir={cache}",
        sources(folder),
        *more,
    ]


def mixture_config(folder: Path, cache: Path, *more: str):
    return load_config(None, mixture_overrides(folder, cache, *more))


def blocks_of(dataset) -> set[tuple]:
    return {tuple(row) for row in dataset["input_ids"]}


# --- the config ----------------------------------------------------------------------------------


def test_sources_take_what_they_do_not_set_from_the_data_section(corpora, tmp_path):
    cfg = mixture_config(corpora, tmp_path, "data.text_column=body", "data.sample_by=paragraph")
    books, notes = cfg.data.sources
    assert (books.name, books.text_column, books.sample_by, books.weight) == ("books", "body", "paragraph", 0.7)
    assert (notes.name, notes.text_column, notes.sample_by) == ("notes", "content", "paragraph")
    assert cfg.data.path is None  # ignored with sources, and recorded as null
    specs = cfg.data.specs()
    assert list(specs) == ["data.sources.books.path", "data.sources.notes.path"]
    assert (
        specs["data.sources.notes.path"].text_column == "content" and specs["data.sources.notes.path"].sources is None
    )
    assert list(load_config().data.specs()) == ["data.path"]  # one corpus: the simple case, as before


MISTAKES = [
    ("[{path: a.txt, weight: -1}]", "data.sources.a.weight must be a number, 0 or more, got -1.0"),
    ("[{path: a.txt, weight: .nan}]", "data.sources.a.weight must be a number, 0 or more, got nan"),
    ("[{path: a.txt, weight: 0}, {path: b.txt, weight: 0}]", "data.sources is empty or no weight is above 0"),
    ("[]", "data.sources is empty or no weight is above 0"),
    ("[{path: a.txt, weight: 1e308}, {path: b.txt, weight: 1e308}]", "data.sources: the weights add up past what"),
    ("[{path: a.txt, weight: lots}]", "data.sources.weight: expected float, got 'lots' (str)"),
    ("[{path: a.txt, weight: true}]", "data.sources.a.weight must be a number, 0 or more, got True"),
    ("[{weight: 1}]", "data.sources: a source has no 'path'"),
    ("[{path: a.txt}]", "data.sources: a source has no 'weight'"),
    (
        "[{path: a.txt, weight: 1, wieght: 2}]",
        "unknown config key 'data.sources.wieght': did you mean 'data.sources.weight'?",
    ),
    (
        "[{path: a.txt, weight: 1, sample_by: word}]",
        "data.sources.sample_by: 'word' is not one of document, paragraph, line",
    ),
    ("[{path: x/a.txt, weight: 1}, {path: y/a.txt, weight: 1}]", "data.sources: two sources are named 'a'"),
    ("[{path: /nonexistent/a.txt, weight: 1}]", "data file not found: '/nonexistent/a.txt'; set data.sources.a.path"),
]


@pytest.mark.parametrize("value, message", MISTAKES, ids=[m[0][:40] for m in MISTAKES])
def test_a_bad_source_or_weight_is_one_line_exit_2_and_nothing_written(value, message, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    out = tmp_path / "run"
    argv = [
        *TINY_MODEL,
        f"tokenizer={TOKENIZER}",
        "data.block_size=64",
        f"training.output_dir={out}",
        "training.report_to=wandb",
        f"data.sources={value}",
    ]
    assert train.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"error: {message}"), err
    assert not out.exists() and not list(tmp_path.iterdir())


# --- the blocks ----------------------------------------------------------------------------------


def test_blocks_are_drawn_in_proportion_to_the_weights(corpora, tmp_path, tokenizer):
    """Counted on the blocks themselves: 2,000 samples of the block order the Trainer reads, each block told to
    its source by its tokens. The small source, drawn more than it holds, is repeated, each pass over it in a new
    order; the large one is not repeated before all its blocks were drawn."""
    small = tmp_path / "notes.jsonl"  # about 200 blocks
    small.write_text("".join((corpora / "notes.jsonl").read_text().splitlines(keepends=True)[:300]))
    cfg = mixture_config(corpora, tmp_path / "cache", sources(corpora, books=0.3, notes=0.7, notes_path=small))
    splits, stats = data.prepare_datasets(cfg.data, tokenizer, drawn=2000)
    train_set = splits["train"]
    assert isinstance(train_set, MixedBlocks)
    own = {s["name"]: s for s in stats.sources}
    assert own["notes"]["share"] == pytest.approx(0.7) and own["notes"]["passes"] > 5 > own["books"]["passes"]
    known = {
        name: blocks_of(data.prepare_datasets(spec, tokenizer)[0]["train"])
        for name, spec in zip(["books", "notes"], cfg.data.specs().values(), strict=True)
    }
    order = iter(MixtureOrder(train_set.sizes, train_set.weights, seed=42))
    drawn = [tuple(train_set[next(order)]["input_ids"]) for _ in range(2000)]
    source_of = {block: name for name, blocks in known.items() for block in blocks}
    counts = Counter(source_of.get(block, "?") for block in drawn)
    assert counts["?"] == 0
    assert counts["books"] / 2000 == pytest.approx(0.3, abs=0.03) and counts["notes"] / 2000 == pytest.approx(
        0.7, abs=0.03
    )
    notes = [block for block in drawn if source_of[block] == "notes"]
    n = len(known["notes"])
    assert set(notes[:n]) == known["notes"] and notes[n : 2 * n] != notes[:n]  # a whole pass, then a new order
    books = [block for block in drawn if source_of[block] == "books"]
    assert len(set(books)) == len(books)  # about 600 of its 2,500 blocks, none twice
    assert set(splits["validation"]) == {"books", "notes"}  # held out per source, never trained on
    for name, validation in splits["validation"].items():
        assert not blocks_of(validation) & known[name]


def test_the_mixture_order_is_a_function_of_the_sample_index():
    """Resumed at any sample, with any batch size or number of processes, it goes on as the unbroken order."""
    weights = np.array([0.2, 0.5, 0.3])
    whole = list(islice(MixtureOrder([7, 50, 1000], weights, seed=3), 5000))
    for start in (1, 999, 1000, 1001, 3456):
        assert (
            list(islice(MixtureOrder([7, 50, 1000], weights, seed=3, start=start), 500)) == whole[start : start + 500]
        )
    assert list(islice(MixtureOrder([7, 50, 1000], weights, seed=4), 5000)) != whole
    assert max(whole) < 1057 and min(whole) >= 0


def test_each_source_is_cached_by_its_own_fingerprint(corpora, tmp_path, tokenizer, capsys):
    """Adding a source to a mixture tokenizes only the new one; a source alone and in a mixture share a cache."""
    cache = tmp_path / "cache"
    alone = load_config(
        None, [*mixture_overrides(corpora, cache), "data.sources=null", f"data.path={corpora / 'books.txt'}"]
    )
    _, first = data.prepare_datasets(alone.data, tokenizer)
    assert not first.from_cache
    _, mixed = data.prepare_datasets(mixture_config(corpora, cache).data, tokenizer)
    lines = mixed.summary().splitlines()
    assert "loaded from cache" in lines[1] and lines[1].startswith("data: books: ")
    assert "loaded from cache" not in lines[2] and lines[2].startswith("data: notes: ")
    assert len(list(cache.glob("blocks-*"))) == 2


def test_data_py_prints_a_line_per_source(corpora, tmp_path, capsys):
    argv = [
        f"tokenizer={TOKENIZER}",
        "data.block_size=64",
        f"data.cache_dir={tmp_path}",
        sources(corpora),
        "training.max_steps=100",
        "training.per_device_train_batch_size=4",
        "training.gradient_accumulation_steps=1",
    ]
    assert data.main(argv) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "data: 2 sources, mixed by blocks; the run draws 400 blocks"
    books, notes = out[1], out[2]
    assert books.startswith("data: books: 1 documents, ") and "weight 0.7, 70.0% of the training blocks, 0." in books
    assert notes.startswith("data: notes: ") and "weight 0.3, 30.0% of the training blocks, 0." in notes
    assert books.endswith(" passes") and "validation blocks of 64" in notes


# --- resume checks -------------------------------------------------------------------------------


def test_resume_names_the_source_that_changed(corpora, tmp_path, capsys):
    cfg = mixture_config(corpora, tmp_path)
    prints = {"tokenizer": "t", "data.sources.books.path": "b-1", "data.sources.notes.path": "n-1"}
    run = RunState("run-a", [MAIN], fingerprints=prints)
    plan = resume.ResumePlan(checkpoint(tmp_path, 4, overrides=mixture_overrides(corpora, tmp_path)), 4, run)
    resume.check_what_changed(plan, cfg, prints, allow_changes=False)  # nothing changed
    with pytest.raises(
        RecipeError,
        match=r"differs from checkpoint-4's: corpus files of data.sources.notes changed "
        r"\(same name, other contents\); resume",
    ):
        resume.check_what_changed(plan, cfg, {**prints, "data.sources.notes.path": "n-2"}, allow_changes=False)
    moved = mixture_config(corpora, tmp_path, sources(corpora, notes_path=tmp_path / "elsewhere" / "notes.jsonl"))
    resume.check_what_changed(plan, moved, prints, allow_changes=False)  # the same contents: said in one line
    reweighted = mixture_config(corpora, tmp_path, sources(corpora, books=0.5, notes=0.5))
    with pytest.raises(RecipeError, match="data.sources.books.weight 0.7 -> 0.5; data.sources.notes.weight 0.3 -> 0.5"):
        resume.check_what_changed(plan, reweighted, prints, allow_changes=False)
    assert "resume: data.sources.notes.path moved from" in capsys.readouterr().out


def test_a_streamed_mixture_resumes_exactly_where_a_position_stood(corpora, tmp_path, tokenizer):
    from recipe import streaming

    cfg = mixture_config(corpora, tmp_path, "data.streaming=true", "data.sample_by=paragraph")
    splits, stats = data.prepare_datasets(cfg.data, tokenizer)
    assert set(splits["validation"]) == {"books", "notes"} and "streaming" in stats.summary()
    assert isinstance(splits["train"], streaming.StreamedBlocks)  # the Trainer and resume_stream treat it as one
    stream = iter(splits["train"])
    straight = [next(stream) for _ in range(1200)]  # past a round of 1,000 draws
    assert Counter(len(b["stream_position"]["sources"]) for b in straight) == {2: 1200}
    for at in (1, 700, 1000, 1100):
        again, _ = data.prepare_datasets(cfg.data, tokenizer)
        again["train"].resume_at = json.loads(json.dumps(straight[at - 1]["stream_position"]))  # as saved
        resumed = iter(again["train"])
        assert all((next(resumed)["input_ids"] == s["input_ids"]).all() for s in straight[at : at + 100])
    heads = Counter(
        int(any((s["input_ids"] == v).all() for v in splits["validation"]["books"]["input_ids"])) for s in straight[:50]
    )
    assert heads[1] == 0  # the held-out blocks are not trained on


# --- end to end ----------------------------------------------------------------------------------


class RecordBlocks:
    def __init__(self, monkeypatch):
        self.seen: list[tuple] = []
        real = RecipeTrainer.compute_loss

        def compute_loss(trainer, model, inputs, *args, **kwargs):
            if model.training:
                self.seen.extend(tuple(row.tolist()) for row in inputs["input_ids"])
            return real(trainer, model, inputs, *args, **kwargs)

        monkeypatch.setattr(RecipeTrainer, "compute_loss", compute_loss)


def history(folder: Path) -> list[dict]:
    return json.loads((folder / "trainer_state.json").read_text())["log_history"]


def losses(folder: Path) -> list[tuple[int, float]]:
    return [(h["step"], h["loss"]) for h in history(folder) if "loss" in h]


@pytest.mark.slow
def test_a_mixture_trains_evaluates_each_source_resumes_exactly_and_shows_in_the_card(
    corpora, tmp_path, cache_dir, capsys, monkeypatch
):
    settings = dict(max_steps=12, save_steps=6, eval_steps=6, bf16="false")
    mix = [sources(corpora), "samples.every_n_steps=0"]
    straight = tmp_path / "straight"
    seen = RecordBlocks(monkeypatch)
    assert train.main(tiny_overrides(straight, cache_dir, **settings) + mix) == 0
    expected_blocks = list(seen.seen)
    out = capsys.readouterr().out
    assert "data: 2 sources, mixed by blocks; the run draws 48 blocks" in out
    assert "data: books: " in out and "weight 0.7, 70.0% of the training blocks" in out
    assert "step 6/12 | eval loss " in out  # the console line: the pooled loss
    evals = [h for h in history(straight) if any(k.startswith("eval_") and k.endswith("_loss") for k in h)]
    at_6 = {k: v for h in evals if h["step"] == 6 for k, v in h.items()}
    assert {"eval_books_loss", "eval_notes_loss", "eval_loss", "eval_books_perplexity", "eval_perplexity"} <= set(at_6)
    assert min(at_6["eval_books_loss"], at_6["eval_notes_loss"]) <= at_6["eval_loss"]
    assert at_6["eval_loss"] <= max(at_6["eval_books_loss"], at_6["eval_notes_loss"])
    record = json.loads((straight / "final" / "run.json").read_text())
    assert [(s["name"], s["corpus"], s["weight"]) for s in record["sources"]] == [
        ("books", ["books.txt"], 0.7),
        ("notes", ["notes.jsonl"], 0.3),
    ]
    assert str(corpora) not in json.dumps(record)  # file names, never local paths

    # interrupted at step 6 and resumed: the same losses, exactly
    broken = tmp_path / "broken"
    overrides = tiny_overrides(broken, cache_dir, **{**settings, "save_steps": 100}) + mix
    assert train.main(overrides, extra_callbacks=[StopAt(6)]) == train.EXIT_INTERRUPTED
    assert train.main(["--resume", *overrides]) == 0
    assert losses(broken) == losses(straight)

    # and resumed with twice the batch: the same blocks, in the same order
    doubled_dir = tmp_path / "doubled"
    seen = RecordBlocks(monkeypatch)
    overrides = tiny_overrides(doubled_dir, cache_dir, **{**settings, "save_steps": 100, "max_steps": 9}) + mix
    assert train.main(overrides, extra_callbacks=[StopAt(6)]) == train.EXIT_INTERRUPTED
    doubled = [o.replace("per_device_train_batch_size=4", "per_device_train_batch_size=8") for o in overrides]
    assert train.main(["--resume", *doubled]) == 0  # steps 7-9 of 8 blocks
    assert seen.seen == expected_blocks

    # the card
    card_dir = tmp_path / "card"
    assert (
        push.main(["--checkpoint", str(straight / "final"), "--repo-id", "me/mix", "--dry-run", "--out", str(card_dir)])
        == 0
    )
    card = (card_dir / "README.md").read_text()
    table = card.split("## Training data\n", 1)[1].split("\n## ", 1)[0]
    assert "| books | `books.txt` | 1 | " in table and "| 0.7 | 70.0% |" in table
    assert "| notes | `notes.jsonl` | " in table and "| 0.3 | 30.0% |" in table


@pytest.mark.slow
@pytest.mark.parametrize("workers", [0, 1], ids=["in-the-main-process", "in-a-dataloader-worker"])
def test_a_streamed_mixture_trains_and_resumes_exactly(corpora, tmp_path, cache_dir, capsys, workers):
    settings = dict(max_steps=10, save_steps=100, eval_steps=5, bf16="false", dataloader_num_workers=workers)
    mix = [
        sources(corpora),
        "data.streaming=true",
        "data.sample_by=paragraph",
        "data.max_validation_blocks=3",
        "samples.every_n_steps=0",
    ]
    straight = tmp_path / "straight"
    assert train.main(tiny_overrides(straight, cache_dir, **settings) + mix) == 0
    assert any(
        "eval_books_loss" in h and "eval_notes_loss" in h
        for h in [{k: v for h in history(straight) if h["step"] == 5 for k, v in h.items()}]
    )
    broken = tmp_path / "broken"
    overrides = tiny_overrides(broken, cache_dir, **settings) + mix
    assert train.main(overrides, extra_callbacks=[StopAt(5)]) == train.EXIT_INTERRUPTED
    [position] = RunState.from_trainer_state(read_trainer_state(broken / "checkpoint-5")).stream_positions
    assert position["block"] == 20 and len(position["sources"]) == 2
    capsys.readouterr()
    assert train.main(["--resume", *overrides]) == 0
    assert (
        "streaming: continuing at block 20 of the stream without reading what came before it" in capsys.readouterr().out
    )
    assert losses(broken) == losses(straight)


@pytest.mark.slow
def test_two_processes_draw_the_mixture_as_one_does(corpora, tmp_path, cache_dir):
    """The mixture's order is a function of the sample index: two processes of 2 sequences train on what one
    process of 4 does."""
    common = dict(max_steps=4, save_steps=100, eval_steps=2, bf16="false")
    mix = [sources(corpora), "samples.every_n_steps=0", "--no-prompt"]
    runs = {2: tmp_path / "2", 1: tmp_path / "1"}
    command = torchrun_command(2, *tiny_overrides(runs[2], cache_dir, per_device_train_batch_size=2, **common), *mix)
    result = subprocess.run(command, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert train.main([*tiny_overrides(runs[1], cache_dir, per_device_train_batch_size=4, **common), *mix]) == 0
    for (s1, l1), (s2, l2) in zip(losses(runs[1]), losses(runs[2]), strict=True):
        assert s1 == s2 and l1 == pytest.approx(l2, abs=1e-4)
    evals = [h for h in history(runs[2]) if "eval_books_loss" in h or "eval_notes_loss" in h]
    assert len(evals) == 4  # each source at steps 2 and 4


if __name__ == "__main__":
    sys.exit(pytest.main([__file__, "-q"]))
