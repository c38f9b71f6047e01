"""Streaming (temporary shim: the streaming module proper replaces this file)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from accelerate.data_loader import prepare_data_loader
from accelerate.utils import gather_object
from torch.utils.data import DataLoader
from transformers import TrainerCallback

from config import log
from data import StreamedBlocks  # noqa: F401


def streamed_dataloader(dataset, args, collate_fn):
    workers = args.dataloader_num_workers
    loader = DataLoader(dataset, batch_size=args.train_batch_size, collate_fn=collate_fn, num_workers=workers,
                        pin_memory=args.dataloader_pin_memory,
                        prefetch_factor=args.dataloader_prefetch_factor if workers else None)  # fmt: skip
    return prepare_data_loader(
        loader, args.device, num_processes=1, process_index=0, put_on_device=True, dispatch_batches=False
    )


def resume_stream(stream, checkpoint: Path, args) -> None:
    try:
        saved = json.loads((checkpoint / StreamPositionCallback.FILE).read_text())
        if len(saved["processes"]) != args.world_size:
            log(f"streaming: {checkpoint.name} was written by {len(saved['processes'])} process(es) and this run has "
                f"{args.world_size}, which split the stream differently; replaying the stream up to it")  # fmt: skip
            return
        position = saved["processes"][args.process_index]
    except (OSError, ValueError, KeyError, TypeError):
        log(f"streaming: {checkpoint.name} holds no stream position; replaying the stream up to it")
        return
    stream.resume_at = position
    args.ignore_data_skip = True
    each = " in each process's part" if args.world_size > 1 else ""
    log(f"streaming: continuing at block {position['block']:,} of the stream{each} without reading what came before it")


class StreamPositionCallback(TrainerCallback):
    FILE = "stream_position.json"

    def __init__(self):
        self.latest = None

    def on_save(self, args, state, control, **kwargs):
        positions = gather_object([self.latest])
        if not args.should_save or None in positions:
            return
        folder = Path(args.output_dir) / f"checkpoint-{state.global_step}"
        tmp = folder / f".{self.FILE}.tmp"
        tmp.write_text(json.dumps({"step": state.global_step, "processes": positions}))
        os.replace(tmp, folder / self.FILE)
