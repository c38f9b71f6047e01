"""Load the recipe's YAML config, apply `section.key=value` overrides and validate every key and type.

One loader serves train.py, data.py, bench.py, push.py: `load_config(path, overrides)` returns a
`RecipeConfig`. The YAML holds the numbers; the dataclasses below only say which keys exist and what
type each one has. `model:` is checked against `LlamaConfig`'s fields and `training:` against
`TrainingArguments`', so any of their keyword arguments can be set, and a typo is caught before any work.
"""

from __future__ import annotations

import dataclasses
import difflib
import enum
import types
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

ROOT = Path(__file__).resolve().parent
DEFAULT_CONFIG = ROOT / "config_smollm2_135M.yaml"


class RecipeError(Exception):
    """A mistake the user can fix: printed as one line, then the program exits non-zero."""


def log(message: str) -> None:
    """One line on the console of the main process (accelerate's PartialState knows which one that is),
    written through tqdm so that it never lands inside a progress bar."""
    from accelerate import PartialState
    from tqdm.auto import tqdm

    if PartialState().is_main_process:
        tqdm.write(message)


def hub_is_reachable(timeout: float = 3.0) -> bool:
    """Whether the Hugging Face Hub's host answers a name lookup in a few seconds. Offline, huggingface_hub
    would retry for about a minute before failing; the recipe asks for local files only instead."""
    import socket
    import threading
    from urllib.parse import urlparse

    from huggingface_hub import constants

    if constants.HF_HUB_OFFLINE:
        return False
    host = urlparse(constants.ENDPOINT).hostname or "huggingface.co"  # HF_ENDPOINT, if set
    answer: list[bool] = []

    def lookup():
        try:
            socket.getaddrinfo(host, 443)
            answer.append(True)
        except OSError:
            answer.append(False)

    thread = threading.Thread(target=lookup, daemon=True)
    thread.start()
    thread.join(timeout)
    return bool(answer and answer[0])


def first_line(error: BaseException) -> str:
    """The first line of a library's error message (or its type), to quote inside a one-line error."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


# The dataclasses say which keys exist and what type each takes; their values, comments included, live in the
# YAML alone (a YAML that `extends:` another takes the keys it does not set from it).


@dataclass
class DataConfig:
    path: str | list[str]
    text_column: str
    dataset_config: str | None
    split: str
    sample_by: Literal["document", "paragraph", "line"]
    streaming: bool
    block_size: int
    validation_fraction: float
    max_validation_blocks: int
    seed: int
    num_proc: int | None
    cache_dir: str | None
    document_aware: bool


@dataclass
class SamplesConfig:
    """When to sample during training and from which prompts; the rest are generate.py's SamplingSettings."""

    every_n_steps: int
    prompts: list[str]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None

    def sampling(self):
        """These settings as the SamplingSettings that generate.py, app.py and the samples all use."""
        from generate import SamplingSettings

        return SamplingSettings(self.max_new_tokens, self.temperature, self.top_p, self.top_k, self.seed)


@dataclass
class ResumeConfig:
    extra_steps: int
    lr_factor: float


@dataclass
class HubConfig:
    repo_id: str | None
    private: bool
    license: str
    dataset: str | None


@dataclass
class RecipeConfig:
    name: str
    model: dict[str, Any]
    tokenizer: str
    data: DataConfig
    training: dict[str, Any]
    attn_implementation: Literal["flash_attention_2", "sdpa", "eager"]
    samples: SamplesConfig
    resume: ResumeConfig
    init_from: str | None
    hub: HubConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


SECTIONS = {"data": DataConfig, "samples": SamplesConfig, "resume": ResumeConfig, "hub": HubConfig}
# Accepted by LlamaConfig although not one of its dataclass fields (it becomes rope_parameters).
EXTRA_MODEL_KEYS: dict[str, Any] = {"rope_theta": float}


def model_key_types() -> dict[str, Any]:
    import inspect
    import sys

    import torch
    from transformers import LlamaConfig

    namespace = {**vars(typing), **vars(sys.modules[LlamaConfig.__module__]), "torch": torch}
    hints = {}
    for name, param in inspect.signature(LlamaConfig.__init__).parameters.items():
        if name == "self" or param.kind is param.VAR_KEYWORD:
            continue
        hints[name] = _evaluate_annotation(param.annotation, namespace)
    return {**hints, **EXTRA_MODEL_KEYS}


def _evaluate_annotation(annotation: Any, namespace: dict) -> Any:
    if not isinstance(annotation, str):
        return Any if annotation is inspect_empty() else annotation
    try:
        return eval(annotation, namespace)  # noqa: S307 - annotations of transformers' own classes
    except Exception:
        return Any


def inspect_empty() -> Any:
    import inspect

    return inspect.Parameter.empty


def training_key_types() -> dict[str, Any]:
    from transformers import TrainingArguments

    types_ = {f.name: f.type for f in dataclasses.fields(TrainingArguments) if f.init}
    return {**types_, **TRAINING_EXTENSIONS}


# Recipe extensions of TrainingArguments keys, resolved by arguments.py before TrainingArguments is built:
# `auto` picks for the hardware, and the schedule kwargs may be given per schedule name.
TRAINING_EXTENSIONS: dict[str, Any] = {
    "torch_compile": bool | Literal["auto"],
    "activation_checkpointing": bool | Literal["auto"],
    "lr_scheduler_kwargs": dict | str | None,
}


def recipe_key_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


# --- type checking -------------------------------------------------------------------------------


class _Mismatch(Exception):
    pass


def _type_name(annotation: Any) -> str:
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def coerce(value: Any, annotation: Any) -> Any:
    """Return `value` converted to `annotation`, or raise _Mismatch.

    Numbers written like `3e-4` (a string to PyYAML) become floats; ints are accepted for floats;
    nothing else is converted silently.
    """
    if annotation is Any or annotation is typing.Any:
        return value
    origin = typing.get_origin(annotation)
    if origin in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        if value is None:
            if type(None) in members:
                return None
            raise _Mismatch
        for member in sorted(members, key=lambda m: not _exact_match(value, m)):
            if member is type(None):
                continue
            try:
                return coerce(value, member)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is typing.Literal:
        if value in typing.get_args(annotation):
            return value
        raise _Mismatch
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        args = typing.get_args(annotation)
        item_type = args[0] if args else Any
        return [coerce(v, item_type) for v in value]
    if origin is dict or annotation is dict:
        if not isinstance(value, dict):
            raise _Mismatch
        return value
    if value is None:
        raise _Mismatch
    if annotation is bool:
        if isinstance(value, bool):
            return value
        raise _Mismatch
    if annotation is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _Mismatch
    if annotation is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value  # an int is a float's value too, and stays printable as one (save_steps: 500)
        if isinstance(value, float):
            return value
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                raise _Mismatch from None
        raise _Mismatch
    if annotation is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        if isinstance(value, annotation):
            return value
        if isinstance(value, str) and value in {m.value for m in annotation}:
            return value
        raise _Mismatch
    if isinstance(annotation, type):
        if isinstance(value, annotation):
            return value
        raise _Mismatch
    return value


def _exact_match(value: Any, annotation: Any) -> bool:
    return isinstance(annotation, type) and type(value) is annotation


def choices_of(annotation: Any) -> list[str] | None:
    """The allowed values of a Literal (or of bool | Literal[...]), as the YAML writes them."""
    if typing.get_origin(annotation) is typing.Literal:
        return [str(v) for v in typing.get_args(annotation)]
    if typing.get_origin(annotation) in (typing.Union, types.UnionType):
        members = typing.get_args(annotation)
        literals = [m for m in members if typing.get_origin(m) is typing.Literal]
        if literals and all(m is bool or m in literals for m in members):
            return (["true", "false"] if bool in members else []) + [str(v) for m in literals for v in typing.get_args(m)]
    return None


def check_value(where: str, value: Any, annotation: Any) -> Any:
    try:
        return coerce(value, annotation)
    except _Mismatch:
        if choices := choices_of(annotation):
            raise RecipeError(f"{where}: {value!r} is not one of {', '.join(choices)}") from None
        raise RecipeError(
            f"{where}: expected {_type_name(annotation)}, got {value!r} ({type(value).__name__}); "
            f"fix the value in the YAML or the override"
        ) from None


def unknown_key_error(where: str, key: str, valid: typing.Iterable[str]) -> RecipeError:
    valid = list(valid)
    close = difflib.get_close_matches(key, valid, n=1, cutoff=0.5)
    hint = f"did you mean '{where}{close[0]}'?" if close else f"valid keys: {', '.join(sorted(valid))}"
    return RecipeError(f"unknown config key '{where}{key}': {hint}")


# --- overrides -----------------------------------------------------------------------------------


def parse_override(text: str) -> tuple[list[str], Any, str]:
    """`training.max_steps=20` -> (["training", "max_steps"], 20, "20")."""
    if "=" not in text:
        raise RecipeError(f"cannot read override '{text}': write it as section.key=value (e.g. training.max_steps=20)")
    dotted, raw = text.split("=", 1)
    keys = dotted.strip().split(".")
    if not all(keys):
        raise RecipeError(f"cannot read override '{text}': empty key name")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw
    return keys, value, raw


def apply_override(raw_config: dict, keys: list[str], value: Any, raw: str) -> None:
    node = raw_config
    for key in keys[:-1]:
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        if not isinstance(child, dict):
            raise RecipeError(f"override '{'.'.join(keys)}': '{key}' is not a section")
        node = child
    # keep the text as typed where YAML would turn it into something else (e.g. eval_strategy=no -> False)
    node[keys[-1]] = _RawText(value, raw)


@dataclass
class _RawText:
    """An override value together with the text it was parsed from."""

    value: Any
    raw: str


def _resolve(where: str, value: Any, annotation: Any) -> Any:
    if isinstance(value, _RawText):
        try:
            return coerce(value.value, annotation)
        except _Mismatch:
            try:
                return coerce(value.raw, annotation)
            except _Mismatch:
                return check_value(where, value.value, annotation)
    if isinstance(value, dict) and _is_dict_type(annotation):
        return {k: _strip_raw(v) for k, v in value.items()}
    return check_value(where, value, annotation)


def _strip_raw(value: Any) -> Any:
    if isinstance(value, _RawText):
        return value.value
    if isinstance(value, dict):
        return {k: _strip_raw(v) for k, v in value.items()}
    return value


def _is_dict_type(annotation: Any) -> bool:
    if annotation is dict or typing.get_origin(annotation) is dict:
        return True
    return any(_is_dict_type(a) for a in typing.get_args(annotation))


# --- loading -------------------------------------------------------------------------------------


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The YAML at `path`, merged over the YAML it `extends:` (a path relative to it), if any."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"config file not found: {path}; pass an existing YAML with --config PATH")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"config file {path} is not valid YAML{at}: fix its syntax") from None
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"config file {path} must hold sections (model:, data:, training:, ...)")
    base = raw.pop("extends", None)
    if base is None:
        return raw
    base_path = (path.parent / str(base)).resolve()
    if base_path in _seen:
        raise RecipeError(f"config file {path} extends {base}, which extends it again: remove the loop")
    return merge(read_yaml(base_path, (*_seen, base_path)), raw)


def merge(base: dict, changes: dict) -> dict:
    """`changes` over `base`, section by section; a schedule's kwargs and the prompts are replaced whole."""
    out = dict(base)
    for key, value in changes.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict) and key not in ("lr_scheduler_kwargs",):
            out[key] = merge(out[key], value)
        else:
            out[key] = value
    return out


def missing_key_error(key: str) -> RecipeError:
    return RecipeError(
        f"the config has no '{key}': add it, or start the YAML with `extends: config_smollm2_135M.yaml` "
        "to take every key you do not set from the default"
    )


def _section(name: str, raw: Any, key_types: dict[str, Any], required: typing.Iterable[str] = ()) -> dict[str, Any]:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise RecipeError(f"config section '{name}' must be a mapping of keys to values")
    out = {}
    for key, value in raw.items():
        if key not in key_types:
            raise unknown_key_error(f"{name}.", str(key), key_types)
        out[key] = _resolve(f"{name}.{key}", value, key_types[key])
    for key in required:
        if key not in out:
            raise missing_key_error(f"{name}.{key}")
    return out


def build_config(raw: dict) -> RecipeConfig:
    top_types = recipe_key_types(RecipeConfig)
    for key in raw:
        if key not in top_types:
            raise unknown_key_error("", str(key), top_types)
    values: dict[str, Any] = {
        "model": _section("model", raw.get("model"), model_key_types()),
        "training": _section("training", raw.get("training"), training_key_types(), required=("output_dir",)),
    }
    for name, cls in SECTIONS.items():
        fields = recipe_key_types(cls)
        values[name] = cls(**_section(name, raw.get(name), fields, required=fields))
    for name in top_types.keys() - values.keys():
        if name not in raw:
            raise missing_key_error(name)
        values[name] = _resolve(name, raw[name], top_types[name])
    cfg = RecipeConfig(**values)
    validate(cfg)
    return cfg


def positive(where: str, value: Any) -> None:
    if value is None or value < 1:
        raise RecipeError(f"{where} must be at least 1, got {value}")


def validate(cfg: RecipeConfig) -> None:
    """Checks between keys, and bounds no type says; the libraries check the rest in check_before_work."""
    data, samples, training = cfg.data, cfg.samples, cfg.training
    if data.block_size < 2:
        raise RecipeError(f"data.block_size must be at least 2, got {data.block_size}")
    max_positions = cfg.model.get("max_position_embeddings")
    if max_positions and data.block_size > max_positions:
        raise RecipeError(
            f"data.block_size {data.block_size} is longer than model.max_position_embeddings {max_positions}: "
            f"use data.block_size<={max_positions}"
        )
    if not 0 < data.validation_fraction < 1:
        raise RecipeError(f"data.validation_fraction must be between 0 and 1, got {data.validation_fraction}")
    positive("data.max_validation_blocks", data.max_validation_blocks)
    for key in ("max_steps", "per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        if key in training or key == "max_steps":
            positive(f"training.{key}", training.get(key))
    if samples.every_n_steps < 0:
        raise RecipeError("samples.every_n_steps must be >= 0 (0 turns samples off)")
    check_samples(samples)
    positive("resume.extra_steps", cfg.resume.extra_steps)
    if not cfg.resume.lr_factor > 0:
        raise RecipeError(f"resume.lr_factor must be above 0, got {cfg.resume.lr_factor}")


MAX_NEW_TOKENS = 4096  # samples longer than this would hold a run (and a stop signal) for minutes


def check_samples(samples: SamplesConfig) -> None:
    """generate.py's checks of the sampling settings, and a bound of its own: samples hold up training."""
    from generate import SettingError

    try:
        samples.sampling().check()
    except SettingError as e:
        raise RecipeError(f"samples.{e.field} {e.problem}; set e.g. samples.{e.field}={e.example}") from None
    if samples.max_new_tokens > MAX_NEW_TOKENS:
        raise RecipeError(f"samples.max_new_tokens must be at most {MAX_NEW_TOKENS:,}, got {samples.max_new_tokens}")


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> RecipeConfig:
    """Read the YAML at `path` (default: config_smollm2_135M.yaml), apply overrides, validate."""
    raw = read_yaml(path or DEFAULT_CONFIG)
    for text in overrides:
        keys, value, raw_text = parse_override(text)
        apply_override(raw, keys, value, raw_text)
    return find_shipped_files(build_config(raw))


def find_shipped_files(cfg: RecipeConfig) -> RecipeConfig:
    """Relative paths that do not exist here but in the recipe's folder (the shipped `assets/`) point there,
    so that the default config works from any working directory."""

    def shipped(path: str) -> str:
        if Path(path).is_absolute() or Path(path).exists() or not (ROOT / path).exists():
            return path
        return str(ROOT / path)

    cfg.tokenizer = shipped(cfg.tokenizer)
    if isinstance(cfg.data.path, str):
        cfg.data.path = shipped(cfg.data.path)
    return cfg
