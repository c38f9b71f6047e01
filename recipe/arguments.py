"""The `training:` section -> `TrainingArguments`, with the choices the YAML leaves to the hardware, and the
checks before any data work: the optimizer and scheduler are built, a Hub backup has its repo and token."""

from __future__ import annotations

import copy
import ctypes
import ctypes.util
import netrc
import os
import sys
from pathlib import Path

from recipe.cli import HUB_NAME, RecipeError, first_line, hub_is_reachable, log
from recipe.config import ROOT, RecipeConfig
from recipe.model import estimate_peak_memory
from recipe.run_state import Phase

import torch
from accelerate.utils import parse_flag_from_env
from huggingface_hub import HfApi, constants, get_token
from transformers import SchedulerType, Trainer, TrainingArguments
from transformers.integrations import INTEGRATION_TO_CALLBACK, get_available_reporting_integrations

MEMORY_MARGIN = 0.8  # activation checkpointing goes off when the estimated peak fits in this share of memory


def build_training_arguments(
    cfg: RecipeConfig, model_config=None, n_params: int | None = None, quiet=False, **changes
) -> TrainingArguments:
    """TrainingArguments from the YAML's `training:` (and `changes`), with precision, speed and schedule
    resolved for this machine. `quiet` leaves out the lines that say what was chosen."""
    kwargs = {**copy.deepcopy(cfg.training), **changes}
    say = (lambda _: None) if quiet else log
    say(choose_precision(kwargs))
    say(choose_speed(kwargs, model_config, n_params, cfg.data.block_size))
    given_schedule_kwargs = kwargs.pop("lr_scheduler_kwargs", None)
    kwargs.setdefault("include_num_input_tokens_seen", True)  # the tokens trained, counted over all processes
    kwargs.setdefault("disable_tqdm", not sys.stderr.isatty())  # in a log file a bar is one line per update
    kwargs.setdefault("project", "smollm2-recipe")  # trackio's project (TrainingArguments.project)
    kwargs.setdefault("trackio_static_space_id", False)  # push_to_hub would publish trackio's logs as a Space too
    check_hub_backup(kwargs)
    try:
        args = TrainingArguments(**kwargs)
    except (ValueError, TypeError, ImportError) as e:
        raise RecipeError(f"training arguments: {first_line(e)}") from None
    args.lr_scheduler_kwargs = schedule_kwargs(given_schedule_kwargs, args.lr_scheduler_type.value, args.max_steps)
    if 1 <= args.max_steps <= args.get_warmup_steps(args.max_steps):
        say(
            f"warning: training.warmup_steps {args.warmup_steps:g} is not below training.max_steps {args.max_steps}: "
            f"the learning rate never reaches its peak {args.learning_rate:g}; set fewer (or a share, e.g. 0.1)"
        )
    check_loggers(args.report_to)
    if "wandb" in args.report_to:
        configure_wandb(args.output_dir, say)
    return args


# --- precision -----------------------------------------------------------------------------------


def on_cpu(training: dict) -> bool:
    """Where the run trains, as TrainingArguments will tell accelerate: no CUDA, training.use_cpu or
    ACCELERATE_USE_CPU. train.py tells accelerate the same before anything logs: a CPU launch of several
    processes is one process each to accelerate unless it is told cpu=True."""
    return bool(training.get("use_cpu")) or parse_flag_from_env("ACCELERATE_USE_CPU") or not torch.cuda.is_available()


def choose_precision(training: dict) -> str:
    """The same YAML runs on GPU and CPU: without CUDA, train on the CPU, in bf16 only where the CPU has it."""
    if not on_cpu(training):
        return f"precision: {'bf16 autocast on CUDA' if training.get('bf16') else 'fp32 on CUDA'}"
    training["use_cpu"] = True
    if not training.get("bf16"):
        return "precision: fp32 on CPU (training.bf16 is false)"
    native = cpu_bf16_support()
    if native is None:
        training["bf16"] = False
        return "precision: fp32 on CPU (this CPU has no native bf16, where bf16 would be several times slower)"
    return f"precision: bf16 autocast on CPU (this CPU has {native})"


def cpu_bf16_support() -> str | None:
    """The CPU feature that makes bf16 fast ("AMX", "AVX512-BF16"), or None."""
    try:
        flags = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "AMX" if "AMX" in torch.backends.cpu.get_cpu_capability() else None
    if "amx_bf16" in flags:
        return "AMX"
    return "AVX512-BF16" if "avx512_bf16" in flags else None


# --- speed ---------------------------------------------------------------------------------------

# Liger kernels that fail to compile inside torch.compile (a Triton CompilationError on an H100, BENCHMARKS.md)
LIGER_KERNELS_UNDER_COMPILE = ("rope", "rms_norm", "swiglu")


def choose_speed(training: dict, model_config=None, n_params: int | None = None, seq_len: int = 2048) -> str:
    """Resolve `auto`: torch.compile on with CUDA and off on CPU; activation checkpointing off when the
    estimated peak memory fits the device with a margin. An explicit true/false is kept as it is."""
    cuda = torch.cuda.is_available()
    compile_, why_compile = training.get("torch_compile", False), " (set in the config)"
    if compile_ == "auto":
        compile_ = training["torch_compile"] = cuda
        why_compile = "" if cuda else " (auto on a CPU: compiling pays off only in long runs)"
    checkpointing = training.get("activation_checkpointing", training.get("gradient_checkpointing", False))
    why_checkpointing = " (set in the config)"
    if checkpointing == "auto":
        fits = False  # with no model or memory size to go by, checkpointing stays on
        if model_config is not None and n_params is not None and (available := device_memory()) is not None:
            micro = setting(training, "per_device_train_batch_size")
            peak = estimate_peak_memory(model_config, n_params, micro, seq_len, checkpointing=False)
            fits = peak <= MEMORY_MARGIN * available
            why_checkpointing = f" (estimated peak {peak / 2**30:.1f} GiB of {available / 2**30:.0f} GiB without it)"
        checkpointing = training["activation_checkpointing"] = not fits
    if checkpointing and not training.get(
        "activation_checkpointing_kwargs", training.get("gradient_checkpointing_kwargs")
    ):
        training["activation_checkpointing_kwargs"] = {"use_reentrant": False}
    line = (
        f"speed: torch.compile {'on' if compile_ else 'off'}{why_compile}, "
        f"activation checkpointing {'on' if checkpointing else 'off'}{why_checkpointing}"
    )
    if not cuda and keep_freed_memory():
        line += ", freed memory kept for reuse"
    if training.get("use_liger_kernel"):
        line += ", " + choose_liger_kernels(training, compile_)
    return line


M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # from glibc's malloc.h


def keep_freed_memory(keep: bool = True) -> bool:
    """On the CPU, glibc hands large buffers back to the kernel when they are freed (every one above 32 MB is
    its own mmap), and every step then page-faults its logits, gradients and activations in again. Kept in
    the heap instead (no mmap, no trimming below 1 GB), the quickstart trained several times as fast on a
    2-core machine for a few hundred MB more memory (BENCHMARKS.md). `keep=False` puts glibc's defaults back.
    True where glibc took the setting."""
    name = ctypes.util.find_library("c")
    if not name or "libc.so" not in name:
        return False  # not glibc: musl, macOS
    kept = {M_MMAP_MAX: 0, M_TRIM_THRESHOLD: 2**30}
    settings = kept if keep else {M_MMAP_MAX: 65536, M_MMAP_THRESHOLD: 128 * 2**10, M_TRIM_THRESHOLD: 128 * 2**10}
    try:
        libc = ctypes.CDLL(name)
        return all(libc.mallopt(option, value) for option, value in settings.items())
    except (OSError, AttributeError):
        return False


def choose_liger_kernels(training: dict, compiled: bool) -> str:
    if not compiled:
        return "Liger kernels on"
    kernels = dict(training.get("liger_kernel_config") or {})
    turned_off = [k for k in LIGER_KERNELS_UNDER_COMPILE if kernels.get(k, True)]
    training["liger_kernel_config"] = {**kernels, **dict.fromkeys(turned_off, False)}
    if not turned_off:
        return "Liger kernels on (as configured)"
    return f"Liger's fused linear cross-entropy on ({', '.join(turned_off)} kernels off: they fail under torch.compile)"


def device_memory() -> int | None:
    """Bytes of memory training can use: the GPU's, or the machine's."""
    if torch.cuda.is_available():
        return torch.cuda.get_device_properties(torch.cuda.current_device()).total_memory
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


# --- the learning-rate schedule ------------------------------------------------------------------


def schedule_kwargs(given: dict | None, schedule: str, max_steps: int) -> dict:
    """The kwargs of the chosen schedule. The YAML may give them per schedule name (only the chosen one's
    are used, so switching `lr_scheduler_type` never passes another schedule's kwargs); a `num_decay_steps`
    below 1 is, like `warmup_steps`, a share of max_steps."""
    given = given or {}
    if isinstance(given, str):
        raise RecipeError("training.lr_scheduler_kwargs must be a mapping, e.g. {num_decay_steps: 0.2}")
    if given and set(given) <= {s.value for s in SchedulerType}:  # keyed by schedule name
        given = given.get(schedule) or {}
    kwargs = dict(given)
    decay = kwargs.get("num_decay_steps")
    if isinstance(decay, (int, float)) and 0 < decay < 1:
        kwargs["num_decay_steps"] = max(1, round(max_steps * decay))
    return kwargs


def main_phase(args: TrainingArguments) -> Phase:
    """The main phase as the run records it: the schedule of the built TrainingArguments, over max_steps."""
    return Phase(
        name="main",
        first_step=1,
        last_step=args.max_steps,
        lr_scheduler_type=str(args.lr_scheduler_type.value),
        learning_rate=args.learning_rate,
        warmup_steps=args.get_warmup_steps(args.max_steps),
        lr_scheduler_kwargs=dict(args.lr_scheduler_kwargs),
        processes=args.world_size,
        samples_per_step=samples_per_step(args),
    )


def check_optimizer_and_schedule(args: TrainingArguments) -> None:
    """Build the optimizer the Trainer will build, on one parameter, and the main phase's schedule, which
    RunSchedule follows: a bad optimizer setting or schedule kwarg fails here, in one line, before any data work."""
    try:
        optimizer_cls, optimizer_kwargs = Trainer.get_optimizer_cls_and_kwargs(args)
        optimizer_cls([torch.nn.Parameter(torch.zeros(2, 2))], **optimizer_kwargs)
    except Exception as e:
        raise RecipeError(f"training.optim '{args.optim}': {first_line(e)}") from None
    kind = args.lr_scheduler_type.value
    if kind in (SchedulerType.REDUCE_ON_PLATEAU, SchedulerType.GREEDY):  # no factor of the step to follow
        raise RecipeError(
            f"training.lr_scheduler_type '{kind}' follows the eval loss, not the steps; choose a schedule over steps, "
            "such as cosine or warmup_stable_decay"
        )
    try:
        main_phase(args).learning_rate_at(1)
    except Exception as e:
        raise RecipeError(
            f"training.lr_scheduler_kwargs do not fit the '{kind}' schedule: {first_line(e)}; "
            f"give that schedule's own kwargs under training.lr_scheduler_kwargs.{kind}"
        ) from None


# --- loggers and the Hub -------------------------------------------------------------------------


def check_loggers(report_to: list[str]) -> None:
    """Each logger of training.report_to known and installed, or one line saying how to install it."""
    for name in set(report_to) - set(get_available_reporting_integrations() if report_to else ()):
        if name not in INTEGRATION_TO_CALLBACK:
            raise RecipeError(f"training.report_to={name}: no such logger (see README.md)")
        extra = ROOT / f"requirements-{name}.txt"
        install = f"pip install -r {extra.name}" if extra.is_file() else f"pip install {name}"
        raise RecipeError(f"training.report_to={name}: {name} is not installed; {install}")


def check_hub_backup(training: dict, resume_from: str | None = None) -> None:
    """push_to_hub and `--resume hub` need a repo id, a token and the Hub; the repo is made now, as the Trainer would."""
    if training.get("hub_token"):
        raise RecipeError("training.hub_token would be uploaded in each checkpoint's config; set HF_TOKEN instead")
    if not (push := training.get("push_to_hub")) and resume_from != "hub":
        return
    repo, need = training.get("hub_model_id"), "training.push_to_hub" if push else "--resume hub"
    if not isinstance(repo, str) or repo.count("/") != 1 or not all(map(HUB_NAME.fullmatch, repo.split("/"))):
        raise RecipeError(
            f"{need} needs training.hub_model_id=user/name, the repo of the run's checkpoints (not {repo!r})"
        )
    if get_token() is None:
        raise RecipeError(f"{need}: no Hugging Face token; run `hf auth login` or set HF_TOKEN")
    if not hub_is_reachable():
        raise RecipeError(f"{need}: the Hub ({constants.ENDPOINT}) cannot be reached (or HF_HUB_OFFLINE is set)")
    try:
        if push:
            HfApi().create_repo(repo, private=training.get("hub_private_repo"), exist_ok=True)
    except Exception as e:
        raise RecipeError(f"{need}: the Hub refused the repo {repo}: {first_line(e)}") from None


def configure_wandb(output_dir: str, say=log) -> None:
    """Never let wandb stop, prompt or fill the console: without an API key, log offline and say where in one
    line. The folder itself is made when training starts (`make_wandb_dir`), so a failed check writes nothing."""
    os.environ.setdefault("WANDB_PROJECT", "smollm2-recipe")
    os.environ.setdefault("WANDB_DIR", str(Path(output_dir).resolve()))
    os.environ.setdefault("WANDB_SILENT", "true")
    if os.environ.get("WANDB_MODE") == "disabled":
        return
    if os.environ.get("WANDB_MODE") == "offline" or not wandb_api_key_available():
        os.environ["WANDB_MODE"] = "offline"
        say(
            f"wandb: offline (no API key), logging to {os.environ['WANDB_DIR']}/wandb; upload later with: "
            f"wandb sync {os.environ['WANDB_DIR']}/wandb/offline-run-*"
        )
    else:
        say(f"wandb: logging to project {os.environ['WANDB_PROJECT']}")


def make_wandb_dir() -> None:
    if os.environ.get("WANDB_DIR"):
        Path(os.environ["WANDB_DIR"]).mkdir(parents=True, exist_ok=True)


def wandb_api_key_available() -> bool:
    if os.environ.get("WANDB_API_KEY"):
        return True
    try:
        return netrc.netrc().authenticators("api.wandb.ai") is not None
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return False


def setting(training: dict, key: str):
    """A `training:` key as TrainingArguments will take it, before they are built: the YAML's value, else the
    default TrainingArguments declares (read from it, never copied)."""
    return training.get(key, TrainingArguments.__dataclass_fields__[key].default)


def sequences_per_step(training: dict) -> int:
    """Sequences per optimizer step of one process, from the `training:` section."""
    return setting(training, "per_device_train_batch_size") * setting(training, "gradient_accumulation_steps")


def samples_per_step(args: TrainingArguments) -> int:
    """Sequences per optimizer step, over all processes."""
    return args.world_size * args.per_device_train_batch_size * args.gradient_accumulation_steps


def describe_batch(args: TrainingArguments, block_size: int, train_blocks: int | None = None) -> str:
    """The batch line; a corpus of fewer training blocks than a step takes repeats each block within the step."""
    n, micro, accum = args.world_size, args.per_device_train_batch_size, args.gradient_accumulation_steps
    sequences = samples_per_step(args)
    line = (
        f"batch: {n} process{'es' if n > 1 else ''} x {micro} sequences x {accum} accumulation = "
        f"{sequences:,} sequences = {sequences * block_size:,} tokens per step"
    )
    if train_blocks is not None and train_blocks < sequences:
        line += f"; the corpus has {train_blocks:,} training blocks, so each repeats within every step"
    return line
