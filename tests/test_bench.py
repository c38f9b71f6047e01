"""bench.py runs and prints its table (the figures themselves are for BENCHMARKS.md, not asserted here)."""

import re
import sys

from conftest import CORPUS, ROOT, TINY_MODEL, TOKENIZER

sys.path.insert(0, str(ROOT / "benchmarks"))
import bench  # noqa: E402
import data_timings  # noqa: E402

TINY = [f"tokenizer={TOKENIZER}", f"data.path={CORPUS}", "data.block_size=64", *TINY_MODEL]


def test_vs_baseline_prints_one_table_and_the_ratio(tmp_path, capsys):
    overrides = [*TINY, f"data.cache_dir={tmp_path}", "training.per_device_train_batch_size=2"]
    assert bench.main(["--vs-baseline", "--steps", "2", "--warmup", "1", *overrides]) == 0
    out = capsys.readouterr().out
    assert "| run | tokens/s | step time (s) | MFU | peak memory (GB) |" in out
    rows = [line for line in out.splitlines() if line.startswith(("| recipe", "| baseline"))]
    # both rows run the same settings: fp32, or bf16 autocast on a CPU with native bf16
    settings = {re.search(r": (sdpa_causal, (?:bf16|fp32), checkpointing (?:on|off))", row).group(1) for row in rows}
    assert len(rows) == 2 and len(settings) == 1
    assert re.search(r"ratio recipe/baseline \(tokens/s\): \d+\.\d{3}", out)


def test_stream_seek_reads_as_one_of_several_processes(tmp_path, capsys):
    corpus = tmp_path / "small.txt"
    corpus.write_text(open(CORPUS).read()[:40_000])
    overrides = [*TINY, f"data.path={corpus}", "data.sample_by=paragraph", "data.max_validation_blocks=3"]
    assert data_timings.main(["--stream-seek", "20", "--stream-processes", "2", *overrides]) == 0
    out = capsys.readouterr().out
    assert "streaming: 20 blocks of process 0's part of 2 (1,280 tokens) read, tokenized and packed" in out
    assert "resuming at block 20 by seeking" in out
