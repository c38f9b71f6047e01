"""The Trainer builds the training DataLoader around the recipe's block order, so every `dataloader_*` setting
applies; a run with persistent dataloader workers resumes exactly, streamed or not."""

import json

import train

import pytest
from conftest import StopAt, tiny_overrides
from transformers import TrainerCallback


class KeepLoader(TrainerCallback):
    def on_train_begin(self, args, state, control, train_dataloader=None, **kwargs):
        self.loader = train_dataloader


def losses(folder) -> list[tuple[int, float]]:
    history = json.loads((folder / "trainer_state.json").read_text())["log_history"]
    return [(h["step"], h["loss"]) for h in history if "loss" in h]


@pytest.mark.parametrize("streamed", [False, True], ids=["blocks", "streamed"])
def test_persistent_dataloader_workers_train_and_resume_exactly(tmp_path, cache_dir, streamed):
    workers = 1 if streamed else 2  # a stream is read in one place
    settings = dict(max_steps=8, save_steps=100, eval_steps=4, bf16="false", dataloader_num_workers=workers)
    extra = ["training.dataloader_persistent_workers=true", "samples.every_n_steps=0"]
    if streamed:
        extra += ["data.streaming=true", "data.sample_by=paragraph", "data.max_validation_blocks=3"]
    straight, kept = tmp_path / "straight", KeepLoader()
    assert train.main(tiny_overrides(straight, cache_dir, **settings) + extra, extra_callbacks=[kept]) == 0
    torch_loader = kept.loader.base_dataloader  # under accelerate's wrapper
    assert torch_loader.persistent_workers and torch_loader.num_workers == workers

    overrides = tiny_overrides(tmp_path / "broken", cache_dir, **settings) + extra
    assert train.main(overrides, extra_callbacks=[StopAt(4)]) == train.EXIT_INTERRUPTED
    assert train.main(["--resume", *overrides]) == 0
    assert losses(tmp_path / "broken") == losses(straight)
