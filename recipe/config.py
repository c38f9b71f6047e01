"""The recipe's config: the YAML (a file may `extends:` another), `key=value` overrides, and every problem
with them found at once, before any work.

`load_config(path, overrides)` returns a `RecipeConfig`. The YAML holds the numbers; the dataclasses below
only say which keys exist and what type each takes, and dacite fills them (wrong types, bad choices,
missing keys). `model:` holds `LlamaConfig` keyword arguments and `training:` `TrainingArguments` ones: their
keys are checked here by name (with a suggestion for a typo) and the training values by type; the libraries
check their own values when train.py builds them. What no library can check, the rules between keys, is
`validate`. All problems are reported together, in one line.
"""

from __future__ import annotations

import dataclasses
import difflib
import inspect
import re
import typing
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from recipe.cli import ROOT, RecipeError
from recipe.sampling import SamplingSettings, SettingError

import dacite
import yaml
from dacite.types import is_instance
from transformers import LlamaConfig, TrainingArguments

DEFAULT_CONFIG = ROOT / "config_smollm2_135M.yaml"
ATTENTION = ("flash_attention_2", "flash_attention_3", "sdpa", "eager")  # or a Hub kernel id (user/name)
MAX_NEW_TOKENS = 4096  # samples longer than this would hold a run (and a stop signal) for minutes


class YamlLoader(yaml.SafeLoader):
    """YAML as people write configs: `3e-4` is a number (PyYAML's YAML 1.1 reads it as a string), and only
    true/false are booleans (`eval_strategy: no` is the word no)."""


YamlLoader.yaml_implicit_resolvers = {
    first: [(tag, regexp) for tag, regexp in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool", re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"), list("tTfF")
)
YamlLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"), list("-+0123456789.")
)


def parse_yaml(text: str) -> Any:
    return yaml.load(text, Loader=YamlLoader)  # noqa: S506 - a SafeLoader with two resolvers changed


# --- the sections ------------------------------------------------------------------------------------------
# No defaults here: the values, comments included, live in the YAML alone (a YAML that `extends:` another
# takes the keys it does not set from it).


@dataclass
class SourceConfig:
    """One corpus of a mixture (`data.sources`). A key it leaves out (None) comes from the `data:` section; its
    name, for `eval_<name>_loss` and the logs, from its file, folder or Hub id."""

    path: str | list[str]
    weight: float
    name: str | None = None
    text_column: str | None = None
    dataset_config: str | None = None
    split: str | None = None
    sample_by: Literal["document", "paragraph", "line"] | None = None


def name_of(path: str | list[str] | None) -> str:
    """A source's default name: its path's first file or folder, up to any glob and suffix."""
    first = re.split(r"[*?[]", path if isinstance(path, str) else (path or [""])[0])[0]
    return re.sub(r"[^\w-]", "_", Path(first).name.split(".")[0]) or "source"


INHERITED = ("text_column", "dataset_config", "split", "sample_by")  # a source's keys that default to data:'s


@dataclass
class DataConfig:
    path: str | list[str] | None  # ignored (and recorded as null) when `sources` are given
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
    sources: list[SourceConfig] | None

    def __post_init__(self):
        """Each source gets a name (from its path: books/*.txt is "books") and, for what it does not set
        itself, the section's own settings. With sources, the section's own path is not read."""
        for source in self.sources or []:
            source.name = source.name or name_of(source.path)
            for key in INHERITED:
                if getattr(source, key) is None:
                    setattr(source, key, getattr(self, key))
        self.path = None if self.sources else self.path

    def specs(self) -> dict[str, DataConfig]:
        """The section as each source reads it, by the config key of the source's path ({"data.path": self} alone)."""
        if not self.sources:
            return {"data.path": self}
        return {
            f"data.sources.{s.name}.path": dataclasses.replace(
                self, sources=None, **{key: getattr(s, key) for key in ("path", *INHERITED)}
            )
            for s in self.sources
        }


@dataclass
class SamplesConfig:
    """When to sample during training and from which prompts; the rest are sampling.py's settings."""

    every_n_steps: int
    prompts: list[str]
    max_new_tokens: int
    temperature: float
    top_p: float
    top_k: int
    seed: int | None

    def sampling(self) -> SamplingSettings:
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
    attn_implementation: str
    samples: SamplesConfig
    resume: ResumeConfig
    init_from: str | None
    hub: HubConfig

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# Recipe extensions of TrainingArguments keys, resolved by arguments.py before TrainingArguments is built:
# `auto` picks for the hardware, and the schedule kwargs may be given per schedule name.
TRAINING_EXTENSIONS: dict[str, Any] = {
    "torch_compile": bool | Literal["auto"],
    "activation_checkpointing": bool | Literal["auto"],
    "lr_scheduler_kwargs": dict | None,
}


def model_keys() -> set[str]:
    """LlamaConfig's keyword arguments, and rope_theta, which it turns into rope_parameters."""
    return {*inspect.signature(LlamaConfig.__init__).parameters} - {"self", "kwargs"} | {"rope_theta"}


def training_types() -> dict[str, Any]:
    hints = typing.get_type_hints(TrainingArguments)
    return {f.name: hints[f.name] for f in dataclasses.fields(TrainingArguments) if f.init} | TRAINING_EXTENSIONS


# --- reading the YAML and the overrides --------------------------------------------------------------------


def read_yaml(path: str | Path, _seen: tuple[Path, ...] = ()) -> dict:
    """The YAML at `path`, merged over the YAML it `extends:` (a path relative to it), if any."""
    path = Path(path)
    if not path.is_file():
        raise RecipeError(f"config file not found: {path}; pass an existing YAML with --config PATH")
    try:
        raw = parse_yaml(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        at = f" at line {mark.line + 1}" if mark else ""
        raise RecipeError(f"config file {path} is not valid YAML{at}: fix its syntax") from None
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
    """`changes` over `base`, section by section; a schedule's kwargs and lists are replaced whole."""
    out = dict(base)
    for key, value in changes.items():
        nested = isinstance(value, dict) and isinstance(out.get(key), dict) and key != "lr_scheduler_kwargs"
        out[key] = merge(out[key], value) if nested else value
    return out


def apply_override(raw: dict, text: str) -> None:
    """`training.max_steps=20` sets raw["training"]["max_steps"] = 20; the value is read as YAML."""
    dotted, sep, value = text.partition("=")
    keys = dotted.strip().split(".")
    if not sep or not all(keys):
        raise RecipeError(f"cannot read override '{text}': write it as section.key=value (e.g. training.max_steps=20)")
    node = raw
    for key in keys[:-1]:
        if node.get(key) is None:
            node[key] = {}
        if not isinstance(node[key], dict):
            raise RecipeError(f"override '{dotted}': '{key}' is not a section")
        node = node[key]
    try:
        node[keys[-1]] = parse_yaml(value) if value.strip() else ""
    except yaml.YAMLError:
        node[keys[-1]] = value  # e.g. a prompt with a colon in it


# --- checking ----------------------------------------------------------------------------------------------


def unknown_keys(where: str, given: dict, known: typing.Iterable[str]) -> list[str]:
    known = list(known)
    problems = []
    for key in given:
        close = difflib.get_close_matches(str(key), known, n=1, cutoff=0.5)
        hint = f"did you mean '{where}{close[0]}'?" if close else f"valid keys: {', '.join(sorted(known))}"
        problems.append(f"unknown config key '{where}{key}': {hint}")
    return problems


def type_problem(key: str, value: Any, expected: Any) -> str | None:
    bool_as_number = isinstance(value, bool) and expected in (int, float)  # True is an int to Python, not to a config
    if not bool_as_number and (expected is float and isinstance(value, int) or is_instance(value, expected)):
        return None
    return describe_type_problem(key, value, expected)


def describe_type_problem(key: str, value: Any, expected: Any) -> str:
    members = typing.get_args(expected) if typing.get_origin(expected) is not Literal else [expected]
    choices = [str(c) for m in members if typing.get_origin(m) is Literal for c in typing.get_args(m)]
    if choices and bool in members:
        choices = ["true", "false", *choices]
    if choices:
        return f"{key}: {value!r} is not one of {', '.join(choices)}"
    name = expected.__name__ if isinstance(expected, type) else str(expected).replace("typing.", "")
    return f"{key}: expected {name}, got {value!r} ({type(value).__name__})"


def section(name: str, cls: type, raw: Any, problems: list[str]):
    """One of the recipe's own sections as its dataclass, or None with the problems added."""
    if not isinstance(raw, dict):
        problems.append(f"config section '{name}' must be a mapping of keys to values")
        return None
    fields = {f.name for f in dataclasses.fields(cls)}
    if unknown := unknown_keys(f"{name}.", {k: v for k, v in raw.items() if k not in fields}, fields):
        problems.extend(unknown)
        return None
    try:
        return dacite.from_dict(cls, raw, config=dacite.Config(strict=True, type_hooks={float: to_float}))
    except dacite.UnexpectedDataError as e:  # only a nested section, data.sources, gets this far
        fields = [f.name for f in dataclasses.fields(SourceConfig)]
        problems += unknown_keys(f"{name}.sources.", dict.fromkeys(e.keys), fields)
    except dacite.MissingValueError as e:
        where, _, key = e.field_path.rpartition(".")
        problems.append(f"{name}.{where}: a source has no '{key}'" if where else missing(f"{name}.{e.field_path}"))
    except dacite.WrongTypeError as e:  # the value as written (dacite's own may be half-built, e.g. a generator)
        problems.append(describe_type_problem(f"{name}.{e.field_path}", raw.get(e.field_path, e.value), e.field_type))
    return None


def to_float(value: Any) -> Any:
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def missing(*keys: str) -> str:
    return (
        f"the config has no {', '.join(repr(k) for k in keys)}: add {'them' if len(keys) > 1 else 'it'}, or start "
        "the YAML with `extends: config_smollm2_135M.yaml` to take every key you do not set from the default"
    )


def build_config(raw: dict) -> RecipeConfig:
    problems: list[str] = []
    top = {f.name: f.type for f in dataclasses.fields(RecipeConfig)}
    problems += unknown_keys("", {k: v for k, v in raw.items() if k not in top}, top)
    if absent := [key for key in top if key not in raw]:
        problems.append(missing(*absent))
    for name in ("model", "training"):
        if name in raw and not isinstance(raw[name], dict):
            problems.append(f"config section '{name}' must be a mapping of keys to values")
    model, training = dict(raw.get("model") or {}), dict(raw.get("training") or {})
    problems += unknown_keys("model.", {k: v for k, v in model.items() if k not in model_keys()}, model_keys())
    types = training_types()
    problems += unknown_keys("training.", {k: v for k, v in training.items() if k not in types}, types)
    problems += [p for k, v in training.items() if k in types and (p := type_problem(f"training.{k}", v, types[k]))]
    if "output_dir" not in training:
        problems.append(missing("training.output_dir"))
    sections = {"data": DataConfig, "samples": SamplesConfig, "resume": ResumeConfig, "hub": HubConfig}
    values = {name: section(name, cls, raw.get(name), problems) for name, cls in sections.items() if name in raw}
    for key in ("name", "tokenizer", "attn_implementation", "init_from"):
        if key in raw and (p := type_problem(key, raw[key], str | None if key == "init_from" else str)):
            problems.append(p)
    if problems:
        raise RecipeError("; ".join(problems))
    cfg = RecipeConfig(**{**{k: raw[k] for k in top}, **values, "model": model, "training": training})
    if problems := cross_key_problems(cfg):
        raise RecipeError("; ".join(problems))
    return cfg


def cross_key_problems(cfg: RecipeConfig) -> list[str]:
    """The rules between keys, and bounds no type says. Each problem is listed: fix them in one round."""
    return [
        *data_problems(cfg.data, cfg.model.get("max_position_embeddings")),
        *source_problems(cfg.data),
        *training_problems(cfg),
        *sample_problems(cfg.samples),
    ]


def data_problems(data: DataConfig, max_positions: int | None) -> list[str]:
    problems = []
    if data.block_size < 2:
        problems.append(f"data.block_size must be at least 2, got {data.block_size}")
    elif max_positions and data.block_size > max_positions:
        problems.append(
            f"data.block_size {data.block_size} is longer than model.max_position_embeddings "
            f"{max_positions}: use data.block_size<={max_positions}"
        )
    if not 0 < data.validation_fraction < 1:
        problems.append(f"data.validation_fraction must be between 0 and 1, got {data.validation_fraction}")
    return problems


def source_problems(data: DataConfig) -> list[str]:
    sources, names = data.sources or [], [s.name for s in data.sources or []]
    problems = ["data.path is null and data.sources is not set: set one of them"] * (
        data.sources is None and data.path is None
    )
    bad = [s for s in sources if isinstance(s.weight, bool) or not 0 <= s.weight < float("inf")]
    problems += [f"data.sources.{s.name}.weight must be a number, 0 or more, got {s.weight}" for s in bad]
    # each weight a number, but no share can be taken of their sum
    if sum(s.weight for s in sources if s not in bad) == float("inf"):
        problems.append(
            "data.sources: the weights add up past what a float holds; give them as shares, e.g. 0.7 and 0.3"
        )
    if data.sources is not None and not any(s.weight > 0 for s in sources):
        problems.append(
            "data.sources is empty or no weight is above 0: give a source a weight above 0 (or set data.sources=null)"
        )
    problems += [
        f"data.sources: two sources are named '{n}'; give each its own name"
        for n in sorted(set(names))
        if names.count(n) > 1
    ]
    return problems


def training_problems(cfg: RecipeConfig) -> list[str]:
    training = cfg.training
    at_least_one = {
        "data.max_validation_blocks": cfg.data.max_validation_blocks,
        "resume.extra_steps": cfg.resume.extra_steps,
        "training.max_steps": training.get("max_steps"),
    }
    for key in ("per_device_train_batch_size", "per_device_eval_batch_size", "gradient_accumulation_steps"):
        at_least_one[f"training.{key}"] = training.get(key, 1)
    problems = [
        f"{key} must be at least 1, got {value}" for key, value in at_least_one.items() if value is None or value < 1
    ]
    if not training.get("learning_rate", 1) > 0:
        problems.append(
            f"training.learning_rate must be above 0, got {training.get('learning_rate')}: nothing would train"
        )
    if not cfg.resume.lr_factor > 0:
        problems.append(f"resume.lr_factor must be above 0, got {cfg.resume.lr_factor}")
    if training.get("save_strategy", "steps") == "steps" and training.get("save_steps", 1) <= 0:
        problems.append(
            "training.save_steps must be above 0: a crash would lose the whole run (or set "
            "training.save_strategy=no to save only at the end)"
        )
    for key in ("logging_steps", "eval_steps"):  # TrainingArguments would take 0 as "every logging step"
        if training.get(key) is not None and training[key] <= 0:
            off = "; training.eval_strategy=no evaluates never" if key == "eval_steps" else ""
            problems.append(f"training.{key} must be above 0, got {training[key]} (e.g. training.{key}=10{off})")
    if cfg.data.streaming and (training.get("dataloader_num_workers") or 0) > 1:
        problems.append(
            "data.streaming reads each process's stream in one place: set training.dataloader_num_workers "
            "to 1 (a worker reads ahead while the model trains) or 0"
        )
    if cfg.attn_implementation not in ATTENTION and "/" not in cfg.attn_implementation:
        problems.append(
            f"attn_implementation: {cfg.attn_implementation!r} is not one of {', '.join(ATTENTION)}, "
            "or a Hub kernel id such as kernels-community/flash-attn2"
        )
    return problems


def sample_problems(samples: SamplesConfig) -> list[str]:
    problems = ["samples.every_n_steps must be >= 0 (0 turns samples off)"] * (samples.every_n_steps < 0)
    try:
        samples.sampling().check()
    except SettingError as e:
        problems.append(e.for_key("samples"))
    if samples.max_new_tokens > MAX_NEW_TOKENS:
        problems.append(f"samples.max_new_tokens must be at most {MAX_NEW_TOKENS:,}, got {samples.max_new_tokens}")
    return problems


def load_config(path: str | Path | None = None, overrides: typing.Sequence[str] = ()) -> RecipeConfig:
    """Read the YAML at `path` (default: config_smollm2_135M.yaml), apply the overrides, check everything."""
    raw = read_yaml(path or DEFAULT_CONFIG)
    for text in overrides:
        apply_override(raw, text)
    return find_shipped_files(build_config(raw))


def find_shipped_files(cfg: RecipeConfig) -> RecipeConfig:
    """Relative paths that do not exist here but in the recipe's folder (the shipped `assets/`) point there,
    so that the default config works from any working directory."""

    def shipped(path: str) -> str:
        return str(ROOT / path) if not Path(path).exists() and (ROOT / path).exists() else path

    cfg.tokenizer = shipped(cfg.tokenizer)
    for source in [cfg.data, *(cfg.data.sources or [])]:
        source.path = shipped(source.path) if isinstance(source.path, str) else source.path
    return cfg
