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
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

DEFAULT_CONFIG = Path(__file__).resolve().parent / "config_smollm2_135M.yaml"


class RecipeError(Exception):
    """A mistake the user can fix: printed as one line, then the program exits non-zero."""


def first_line(error: BaseException) -> str:
    """The first line of a library's error message (or its type), to quote inside a one-line error."""
    lines = str(error).strip().splitlines()
    return lines[0] if lines else type(error).__name__


@dataclass
class DataConfig:
    path: str | list[str] = "input.txt"
    text_column: str = "text"
    dataset_config: str | None = None
    split: str = "train"
    sample_by: str = "document"
    streaming: bool = False
    block_size: int = 2048
    validation_fraction: float = 0.05
    max_validation_blocks: int = 256
    seed: int = 42
    num_proc: int | None = None
    cache_dir: str | None = None
    document_aware: bool = False


@dataclass
class SamplesConfig:
    every_n_steps: int = 500
    prompts: list[str] = field(default_factory=list)
    max_new_tokens: int = 64
    do_sample: bool = True
    temperature: float = 0.8
    top_p: float = 0.9
    top_k: int = 50
    seed: int = 42


@dataclass
class ResumeConfig:
    extra_steps: int = 50
    lr_factor: float = 0.1


@dataclass
class HubConfig:
    repo_id: str | None = None
    private: bool = False
    license: str = "apache-2.0"
    dataset: str | None = None


@dataclass
class RecipeConfig:
    name: str = "SmolLM2-135M"
    model: dict[str, Any] = field(default_factory=dict)
    tokenizer: str = "HuggingFaceTB/cosmo2-tokenizer"
    data: DataConfig = field(default_factory=DataConfig)
    training: dict[str, Any] = field(default_factory=dict)
    attn_implementation: str = "flash_attention_2"
    samples: SamplesConfig = field(default_factory=SamplesConfig)
    resume: ResumeConfig = field(default_factory=ResumeConfig)
    init_from: str | None = None
    hub: HubConfig = field(default_factory=HubConfig)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


ATTN_IMPLEMENTATIONS = ("flash_attention_2", "sdpa", "eager")
SAMPLE_BY = ("document", "paragraph", "line")
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

    return {f.name: f.type for f in dataclasses.fields(TrainingArguments) if f.init}


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
        if isinstance(value, (int, float)):
            return float(value)
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


def check_value(where: str, value: Any, annotation: Any) -> Any:
    try:
        return coerce(value, annotation)
    except _Mismatch:
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


def read_yaml(path: str | Path) -> dict:
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
    return raw


def _section(name: str, raw: Any, key_types: dict[str, Any]) -> dict[str, Any]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise RecipeError(f"config section '{name}' must be a mapping of keys to values")
    out = {}
    for key, value in raw.items():
        if key not in key_types:
            raise unknown_key_error(f"{name}.", str(key), key_types)
        out[key] = _resolve(f"{name}.{key}", value, key_types[key])
    return out


def build_config(raw: dict) -> RecipeConfig:
    top_types = recipe_key_types(RecipeConfig)
    for key in raw:
        if key not in top_types:
            raise unknown_key_error("", str(key), top_types)
    cfg = RecipeConfig()
    cfg.model = _section("model", raw.get("model"), model_key_types())
    cfg.training = _section("training", raw.get("training"), training_key_types())
    for name in ("data", "samples", "resume", "hub"):
        sub_cls = type(getattr(cfg, name))
        values = _section(name, raw.get(name), recipe_key_types(sub_cls))
        setattr(cfg, name, sub_cls(**values))
    for name in ("name", "tokenizer", "attn_implementation", "init_from"):
        if name in raw:
            setattr(cfg, name, _resolve(name, raw[name], top_types[name]))
    validate(cfg)
    return cfg


def validate(cfg: RecipeConfig) -> None:
    if cfg.attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise RecipeError(
            f"attn_implementation: '{cfg.attn_implementation}' is not one of {', '.join(ATTN_IMPLEMENTATIONS)}"
        )
    if cfg.data.sample_by not in SAMPLE_BY:
        raise RecipeError(f"data.sample_by: '{cfg.data.sample_by}' is not one of {', '.join(SAMPLE_BY)}")
    if cfg.data.block_size < 2:
        raise RecipeError(f"data.block_size must be at least 2, got {cfg.data.block_size}")
    if not 0 < cfg.data.validation_fraction < 1:
        raise RecipeError(f"data.validation_fraction must be between 0 and 1, got {cfg.data.validation_fraction}")
    if cfg.samples.every_n_steps < 0:
        raise RecipeError("samples.every_n_steps must be >= 0 (0 turns samples off)")
    if cfg.resume.extra_steps < 1:
        raise RecipeError(f"resume.extra_steps must be at least 1, got {cfg.resume.extra_steps}")
    if not cfg.training.get("output_dir"):
        raise RecipeError("training.output_dir is not set: add it to the YAML or pass training.output_dir=PATH")
    max_steps = cfg.training.get("max_steps", -1)
    if max_steps is None or max_steps <= 0:
        raise RecipeError("training.max_steps must be a positive number of optimizer steps")


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> RecipeConfig:
    """Read the YAML at `path` (default: config_smollm2_135M.yaml), apply overrides, validate."""
    raw = read_yaml(path or DEFAULT_CONFIG)
    for text in overrides:
        keys, value, raw_text = parse_override(text)
        apply_override(raw, keys, value, raw_text)
    return build_config(raw)
