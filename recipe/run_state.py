"""The run's state (`RunState`): one object, saved in every checkpoint and written to run.json, and the learning
rate of all its phases (`RunSchedule`).

`RunState` holds what a run is and has done (its fields say what). RunRecordCallback (callbacks.py) owns it while
training and says where the Trainer keeps it; `--resume`, the card and push.py read it back with `RunState.read`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from functools import cached_property
from pathlib import Path

from recipe.cli import RecipeError
from recipe.run_folder import RECORD, RECORD_KEY, read_dict

import torch
from transformers import get_scheduler


@dataclass
class Phase:
    """Steps first_step..last_step (global, from 1) on one schedule of their own."""

    name: str
    first_step: int
    last_step: int
    lr_scheduler_type: str
    learning_rate: float
    warmup_steps: int
    lr_scheduler_kwargs: dict
    processes: int
    samples_per_step: int

    @cached_property
    def factor(self):
        """The transformers schedule of the phase, as the factor of its learning rate after `n` of its steps."""
        optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
        scheduler = get_scheduler(
            self.lr_scheduler_type,
            optimizer,
            num_warmup_steps=self.warmup_steps,
            num_training_steps=self.last_step - self.first_step + 1,
            scheduler_specific_kwargs=self.lr_scheduler_kwargs,
        )
        return scheduler.lr_lambdas[0]

    def learning_rate_at(self, step: int) -> float:
        return self.learning_rate * self.factor(step - self.first_step)


@dataclass
class RunState:
    run_id: str
    phases: list[Phase]
    forked_from: dict | None = None  # the run and checkpoint a fork continues
    corpus: dict = field(default_factory=dict)  # as a card may name it: a Hub id or file names, never a local path
    base_model: str | None = None  # the Hub model the run continues
    sources: list[dict] = field(default_factory=list)  # a mixture's sources, by name
    fingerprints: dict = field(default_factory=dict)  # of the tokenizer and each corpus
    global_step: int = 0
    samples_trained: int = 0  # where the block order goes on
    tokens_trained: int = 0  # the Trainer's count (include_num_input_tokens_seen), over all processes
    stream_positions: list | None = None  # of a streamed corpus: each process's, in rank order

    @classmethod
    def from_dict(cls, fields: dict) -> RunState:
        return cls(**{**fields, "phases": [Phase(**p) for p in fields["phases"]]})

    @classmethod
    def read(cls, folder: Path) -> RunState | None:
        """The run.json of a run folder, checkpoint or final/; None where there is none."""
        fields = read_dict(Path(folder) / RECORD)
        if fields is None:
            return None
        try:
            return cls.from_dict(fields)
        except (KeyError, TypeError):
            raise RecipeError(f"{Path(folder) / RECORD} is not a run record of this recipe; fix or remove it") from None

    @classmethod
    def from_trainer_state(cls, state: dict) -> RunState:
        """The run state a checkpoint's trainer_state.json keeps as RunRecordCallback's."""
        return cls.from_dict(state["stateful_callbacks"][RECORD_KEY]["attributes"])

    def to_dict(self) -> dict:
        return asdict(self)

    @property
    def phase(self) -> Phase:
        return self.phases[-1]

    def learning_rate_at(self, step: int) -> float:
        """The rate at global step `step`, on the schedule of the phase that trains it (after the last, the last's)."""
        phase = next((p for p in self.phases if p.first_step <= step <= p.last_step), self.phases[-1])
        return phase.learning_rate_at(step)


class RunSchedule(torch.optim.lr_scheduler.LRScheduler):
    """The learning rate of every phase of a run over global steps, each phase on its own schedule from its first
    step. Restored from a checkpoint, it takes only the step: the phases come from the run state, so a phase with
    another learning rate than the checkpoint's starts on its own from its first step. The rate it reports is the
    one the optimizer holds, so the rate logged is the rate used."""

    def __init__(self, optimizer, run: RunState):
        self.run = run
        super().__init__(optimizer)

    def get_lr(self) -> list[float]:
        return [self.run.learning_rate_at(self.last_epoch + 1) for _ in self.optimizer.param_groups]

    def get_last_lr(self) -> list[float]:
        return [group["lr"] for group in self.optimizer.param_groups]

    def state_dict(self) -> dict:
        return {"last_epoch": self.last_epoch}

    def load_state_dict(self, state_dict: dict) -> None:
        """The step of the checkpoint, and the optimizer's rate for the step after it (the optimizer state loaded
        before this holds the rate of the checkpoint's own schedule)."""
        self.last_epoch = state_dict["last_epoch"]
        for group, lr in zip(self.optimizer.param_groups, self.get_lr(), strict=True):
            group["lr"] = lr
