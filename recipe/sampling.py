"""The sampling settings and sampling: one set of checks and one mapping to `generate()` for the YAML's
`samples:`, generate.py's flags and the app's sliders, and the samples a run writes as it trains."""

from __future__ import annotations

import contextlib
import math
from dataclasses import dataclass

from recipe.cli import RecipeError, first_line

import torch
from transformers import GenerationConfig, StoppingCriteria

MAX_SEED = 2**32 - 1  # the range numpy and transformers.set_seed accept


class SettingError(ValueError):
    """A sampling setting out of range. The CLI names the flag, the app the slider, the config the key."""

    def __init__(self, field: str, problem: str, example: str):
        super().__init__(f"{field} {problem}")
        self.field, self.problem, self.example = field, problem, example

    def for_flag(self) -> str:
        flag = "--" + self.field.replace("_", "-")
        return f"{flag} {self.problem}; pass e.g. {flag} {self.example}"

    def for_label(self, label: str) -> str:
        return f"{label} {self.problem}; use e.g. {self.example}"

    def for_key(self, section: str) -> str:
        return f"{section}.{self.field} {self.problem}; set e.g. {section}.{self.field}={self.example}"


@dataclass
class SamplingSettings:
    max_new_tokens: int = 100
    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 50
    seed: int | None = None  # None: fresh randomness each time; a number: the same text each time

    def check(self) -> None:
        """Raise SettingError for the first value out of range, before any model work."""
        if self.max_new_tokens < 1:
            raise SettingError("max_new_tokens", f"must be at least 1 (got {self.max_new_tokens})", "100")
        if not math.isfinite(self.temperature) or self.temperature < 0:
            raise SettingError("temperature", f"must be 0 (greedy) or more (got {self.temperature})", "0.8")
        if not (0 < self.top_p <= 1):
            raise SettingError("top_p", f"must be more than 0 and at most 1 (got {self.top_p})", "0.9")
        if self.top_k < 0:
            raise SettingError("top_k", f"must be 0 (off) or more (got {self.top_k})", "50")
        if self.seed is not None and not (0 <= self.seed <= MAX_SEED):
            raise SettingError("seed", f"must be between 0 and {MAX_SEED:,} (got {self.seed})", "42")

    def generate_kwargs(self) -> dict:
        """The settings as `generate()` takes them; temperature 0 is greedy decoding."""
        greedy = {"max_new_tokens": self.max_new_tokens, "do_sample": False}
        if self.temperature <= 0:
            return greedy
        return dict(greedy, do_sample=True, temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)


def generation_config(settings: SamplingSettings, tokenizer) -> GenerationConfig:
    return GenerationConfig(
        **settings.generate_kwargs(),
        pad_token_id=tokenizer.eos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        bos_token_id=tokenizer.bos_token_id,
        use_cache=True,
    )


def check_samples(prompts: list[str], settings: SamplingSettings, tokenizer, max_positions: int) -> None:
    """The samples' generation config as transformers validates it, and prompts that fit the model."""
    try:
        generation_config(settings, tokenizer).validate(strict=True)
    except ValueError as e:
        raise RecipeError(f"samples: {first_line(e)}") from None
    longest = max((len(tokenizer(p)["input_ids"]) for p in prompts), default=0)
    if longest + settings.max_new_tokens > max_positions:
        raise RecipeError(
            f"samples: the longest prompt ({longest} tokens) plus samples.max_new_tokens "
            f"({settings.max_new_tokens}) exceed model.max_position_embeddings ({max_positions}); shorten them"
        )


class StopWhen(StoppingCriteria):
    """Ends generation as soon as `should_stop()` turns true (a stop signal, the app's Stop button)."""

    def __init__(self, should_stop):
        self.should_stop = should_stop

    def __call__(self, input_ids, scores, **kwargs) -> torch.Tensor:
        return torch.full((input_ids.shape[0],), self.should_stop(), dtype=torch.bool, device=input_ids.device)


def generate_samples(
    model, tokenizer, prompts: list[str], settings: SamplingSettings, bf16: bool = False, should_stop=lambda: False
) -> list[tuple[str, str]]:
    """Complete each prompt, seeded (`settings.seed`; None: fresh randomness); leaves the model's mode and the
    global RNG as they were. Returns [] if `should_stop()` turned true on the way."""
    was_training, device = model.training, next(model.parameters()).device
    config = generation_config(settings, tokenizer)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16) if bf16 else contextlib.nullcontext()
    results = []
    model.eval()
    try:
        with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []), autocast:
            if settings.seed is not None:
                torch.manual_seed(settings.seed)
            for prompt in prompts:
                inputs = tokenizer(prompt, return_tensors="pt").to(device)
                output = model.generate(**inputs, generation_config=config, stopping_criteria=[StopWhen(should_stop)])
                if should_stop():
                    return []
                completion = tokenizer.decode(output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
                results.append((prompt, completion))
    finally:
        model.train(was_training)
    return results
