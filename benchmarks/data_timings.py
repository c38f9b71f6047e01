"""How long the data takes: tokenizing and packing a corpus cold and loading it back from the cache, and, when
streaming, reading N blocks against seeking back to block N as `--resume` does.

    python benchmarks/data_timings.py tokenizer=... data.path=...                     # cold, then from the cache
    python benchmarks/data_timings.py --stream-seek 1500 data.path=corpus.jsonl       # streaming: read, then seek
    python benchmarks/data_timings.py --stream-seek 600 --stream-processes 2 ...      # as process 0 of 2

The figures of BENCHMARKS.md's data sections come from this script (config and overrides as for train.py).
"""

import resource
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

import datasets

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from data import load_tokenizer, prepare_datasets  # noqa: E402
from recipe import cli  # noqa: E402
from recipe.cli import RecipeError  # noqa: E402
from recipe.config import load_config  # noqa: E402


def bench_data(cfg, tokenizer) -> list[str]:
    datasets.disable_caching()  # cold: no reuse of earlier `datasets.map` results either
    with tempfile.TemporaryDirectory() as cache:
        data_cfg = replace(cfg.data, cache_dir=cache)
        start = time.perf_counter()
        _, stats = prepare_datasets(data_cfg, tokenizer)
        cold = time.perf_counter() - start
        start = time.perf_counter()
        _, cached = prepare_datasets(data_cfg, tokenizer)
        warm = time.perf_counter() - start
    datasets.enable_caching()
    assert cached.from_cache
    return [
        f"data: {stats.tokens:,} tokens; cold (tokenize, pack, cache): {cold:.2f} s = "
        f"{stats.tokens / cold:,.0f} tokens/s; from cache: {warm:.2f} s"
    ]


def bench_stream_seek(cfg, tokenizer, blocks: int, processes: int = 1) -> list[str]:
    """Streaming: read `blocks` training blocks as process 0 of `processes` would, then resume at that block
    as a checkpoint would, by seeking."""
    data_cfg = replace(cfg.data, streaming=True)
    splits, _ = prepare_datasets(data_cfg, tokenizer, rank=0, world_size=processes)
    read, position = 0, None
    start = time.perf_counter()
    for read, block in enumerate(splits["train"], start=1):
        if read == blocks:
            position = block["stream_position"]
            break
    reading = time.perf_counter() - start
    if position is None:
        raise RecipeError(f"the stream ended after {read} blocks; ask for fewer with --stream-seek")
    resumed, _ = prepare_datasets(data_cfg, tokenizer, rank=0, world_size=processes)
    resumed["train"].resume_at = position
    start = time.perf_counter()
    next(iter(resumed["train"]))
    seeking = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**10
    tokens = blocks * cfg.data.block_size
    whose = f" of process 0's part of {processes}" if processes > 1 else ""
    return [
        f"streaming: {blocks:,} blocks{whose} ({tokens:,} tokens) read, tokenized and packed in {reading:.1f} s "
        f"({tokens / reading:,.0f} tokens/s); resuming at block {blocks:,} by seeking: {seeking:.2f} s to the "
        f"first block; peak RSS of the process {peak:,.0f} MB"
    ]


def main(argv: list[str] | None = None) -> int:
    parser = cli.parser("benchmarks/data_timings.py", __doc__)
    parser.add_argument("--config", default=None)
    parser.add_argument("--stream-seek", type=int, metavar="N", help="stream N blocks, then seek back to block N")
    parser.add_argument(
        "--stream-processes",
        type=int,
        default=1,
        metavar="W",
        help="with --stream-seek: read as process 0 of W, each reading its own part",
    )
    parser.add_argument("overrides", nargs="*")
    try:
        args = parser.parse(argv)
        cfg = load_config(args.config, args.overrides)
        tokenizer = load_tokenizer(cfg.tokenizer)
        if args.stream_seek:
            lines = bench_stream_seek(cfg, tokenizer, args.stream_seek, args.stream_processes)
        else:
            lines = bench_data(cfg, tokenizer)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
