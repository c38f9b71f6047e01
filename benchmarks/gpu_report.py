"""The Python half of benchmarks/gpu_check.sh: reads what each phase printed and wrote, and says it in Markdown.

Each subcommand prints the phase's section of summary.md on stdout (the script appends it), may write
key=value lines for the script (`--env-out`) and the files of the output folder (loss_curve.png, samples.txt),
and checks that the phase did what it should: a check that fails prints `check failed: ...` on stderr and
exits 1, so that a phase that exits 0 without doing its work is a failed phase. `--partial` (a phase cut by its
timeout, or that failed) reports what is there and checks nothing.

It reads only the recipe's command-line output (the console lines, time-stamped by the script as
`[  12.3s] line`) and its run folder (`checkpoint-N/trainer_state.json`, `trainer_state.json`,
`samples.jsonl`, `recipe_config.yaml`, `final/`), never the recipe's modules, except `env`, which checks that
they import. Only `env` imports torch; only the loss curve imports matplotlib.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from pathlib import Path

STAMP = re.compile(r"^\[\s*(\d+(?:\.\d+)?)s\] ?(.*)$")
STEP = re.compile(r"^step (\d+)/(\d+) \| (.*)$")
RESUMED = re.compile(r"resuming from checkpoint-(\d+) \(step (\d+)\) for (\d+) steps at lr ([0-9.e+-]+)")
MIN_RATIO = 0.95  # the recipe's goal: the Trainer within 5% of a hand-written loop


class CheckFailed(Exception):
    pass


def check(condition: bool, message: str) -> None:
    if not condition:
        raise CheckFailed(message)


# --- reading the console -------------------------------------------------------------------------


def read_log(path: str | Path) -> list[tuple[float | None, str]]:
    """(seconds since the script started, line) for each line of a phase's log; None where not stamped."""
    lines = []
    for raw in Path(path).read_text(errors="replace").splitlines():
        m = STAMP.match(raw)
        lines.append((float(m.group(1)), m.group(2)) if m else (None, raw))
    return lines


def parse_step_line(text: str) -> dict | None:
    """`step 20/70 | loss 7.38 | lr 1.2e-05 | grad norm 1.9 | 187,000 tok/s | MFU 23.4% | 16.5 GB | eta 2:08`
    -> {"step": 20, "max_steps": 70, "loss": 7.38, "tokens_per_second": 187000.0, "mfu": 0.234, ...};
    eval lines give "eval_loss", the end line "train_runtime"."""
    m = STEP.match(text)
    if not m:
        return None
    out: dict = {"step": int(m.group(1)), "max_steps": int(m.group(2))}
    for part in m.group(3).split(" | "):
        part = part.strip()
        for pattern, key, scale in (
            (r"^loss (\S+)$", "loss", 1),
            (r"^lr (\S+)$", "learning_rate", 1),
            (r"^grad norm (\S+)$", "grad_norm", 1),
            (r"^([\d,.]+) tok/s$", "tokens_per_second", 1),
            (r"^MFU ([\d.]+)%$", "mfu", 0.01),
            (r"^([\d.]+) GB$", "peak_memory_gb", 1),
            (r"^eval loss (\S+)$", "eval_loss", 1),
        ):
            pm = re.match(pattern, part)
            if pm:
                try:
                    out[key] = float(pm.group(1).replace(",", "")) * scale
                except ValueError:
                    pass
        if part.startswith("done in "):
            out["done_in"] = part[len("done in ") :]
    return out


def first_line_starting(lines, prefix: str) -> str | None:
    return next((text for _, text in lines if text.startswith(prefix)), None)


def fmt_int(x: float | None) -> str:
    return "n/a" if x is None else f"{x:,.0f}"


def fmt_pct(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1%}"


def fmt_s(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} s"


def gb(x: float | None) -> str:
    return "n/a" if x is None else f"{x:.1f} GB"


def median(values):
    values = [v for v in values if v is not None]
    return statistics.median(values) if values else None


def training_figures(lines, after: int) -> dict:
    """Throughput of the logging windows that end after step `after` (the first ones hold the compile),
    the time to the first step, and where the run got to."""
    steps = [(t, parse_step_line(text)) for t, text in lines]
    steps = [(t, s) for t, s in steps if s is not None]
    train = [(t, s) for t, s in steps if "loss" in s]
    steady = [s for _, s in train if s["step"] > after]
    batch_t = next((t for t, text in lines if text.startswith("batch: ")), None)
    first_t = train[0][0] if train else None
    return {
        "train": [s for _, s in train],
        "evals": [s for _, s in steps if "eval_loss" in s],
        "done": next((s for _, s in steps if "done_in" in s), None),
        "steady_windows": len(steady),
        "steady_first": steady[0]["step"] if steady else None,
        "tokens_per_second": median(s.get("tokens_per_second") for s in steady),
        "mfu": median(s.get("mfu") for s in steady),
        "peak_memory_gb": max((s["peak_memory_gb"] for s in steady if "peak_memory_gb" in s), default=None),
        "first_step_s": (first_t - batch_t) if first_t is not None and batch_t is not None else None,
        "first_step_line": train[0][1] if train else None,
        "last_step": train[-1][1]["step"] if train else None,
        "max_steps": train[-1][1]["max_steps"] if train else None,
    }


def choice_lines(lines) -> list[str]:
    """What the recipe chose for this machine: precision, speed, attention (and the batch and model lines)."""
    wanted = ("precision: ", "speed: ", "attention: ", "batch: ", "model: ", "data: ")
    return [text for _, text in lines if text.startswith(wanted)]


def write_env(path: str | None, values: dict) -> None:
    if path:
        Path(path).write_text("".join(f"{k}={v}\n" for k, v in values.items()))


# --- env -----------------------------------------------------------------------------------------

PACKAGES = (
    "torch",
    "transformers",
    "datasets",
    "accelerate",
    "huggingface-hub",
    "tokenizers",
    "safetensors",
    "liger-kernel",
    "triton",
    "flash-attn",
    "pyarrow",
    "fsspec",
    "regex",
    "dill",
    "multiprocess",
    "numpy",
    "matplotlib",
    "wandb",
)
MIN_TRANSFORMERS = (5, 23)  # requirements.txt


def device_name(torch) -> str:
    if not torch.cuda.is_available():
        return "no CUDA GPU: CPU only"
    p = torch.cuda.get_device_properties(0)
    return (
        f"{torch.cuda.get_device_name(0)} ({p.total_memory / 2**30:.0f} GiB, compute capability "
        f"{p.major}.{p.minor}, {p.multi_processor_count} SMs), CUDA {torch.version.cuda}"
    )


def import_problems(repo: str) -> list[str]:
    """Whether the recipe's entry points import here: any error stops the check, in one line."""
    sys.path.insert(0, str(Path(repo).resolve()))
    try:
        import train  # noqa: F401

        import bench  # noqa: F401
    except Exception as e:
        return [f"the recipe does not import: {type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"]
    return []


def cmd_env(a) -> int:
    """The machine and the versions, and whether the recipe imports; exit 1 if it cannot run here."""
    import importlib.metadata as md
    import os
    import platform

    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = md.version(name)
        except md.PackageNotFoundError:
            versions[name] = None
    import torch

    print(f"- device: {device_name(torch)}; {os.cpu_count()} CPU cores; Python {platform.python_version()}")
    print(
        "- versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items() if v)
        + "; not installed: "
        + (", ".join(k for k, v in versions.items() if not v) or "none")
    )
    problems = []
    if a.mode == "gpu" and not torch.cuda.is_available():
        print("- **warning: no CUDA GPU here; the figures below are not GPU figures**")
    tv = versions["transformers"]
    if tv is None or tuple(int(x) for x in re.findall(r"\d+", tv)[:2]) < MIN_TRANSFORMERS:
        problems.append(f"transformers {tv} is older than the recipe needs (>= 5.23): carry the wheels (.whl/)")
    if versions["datasets"] is None:
        problems.append("datasets is not installed: carry the wheels (.whl/)")
    if not problems:
        problems += import_problems(a.repo)
    for p in problems:
        print(f"- **{p}**")
    if problems:
        print("check failed: " + "; ".join(problems), file=sys.stderr)
        return 1
    print("- the recipe imports (train.py, benchmarks/bench.py)")
    return 0


# --- a train.py phase ----------------------------------------------------------------------------


def cmd_train(a) -> int:
    """A short train.py run: what it chose, the time to the first step, the steady tokens/s and MFU."""
    lines = read_log(a.log)
    f = training_figures(lines, a.after)
    for text in choice_lines(lines):
        print(f"    {text}")
    print()
    print(f"- time to the first step (the compile included): {fmt_s(f['first_step_s'])}")
    if f["steady_windows"]:
        print(
            f"- steady state, the {f['steady_windows']} logging windows after step {a.after} (steps "
            f"{f['steady_first']}-{f['last_step']}): median **{fmt_int(f['tokens_per_second'])} tokens/s, MFU "
            f"{fmt_pct(f['mfu'])}**, peak memory {gb(f['peak_memory_gb'])}"
        )
    print(f"- reached step {f['last_step']} of {f['max_steps']}" if f["last_step"] else "- no training step logged")
    shown = [s for s in f["train"]]
    if shown:
        print("\n```")
        for _, text in lines:
            if STEP.match(text) and (" tok/s" in text or "done in" in text):
                print(text)
        print("```")
    write_env(
        a.env_out,
        {
            "tokps": int(f["tokens_per_second"] or 0),
            "mfu": f["mfu"] if f["mfu"] is not None else "",
            "first_step_s": f"{f['first_step_s']:.1f}" if f["first_step_s"] is not None else "",
            "last_step": f["last_step"] or 0,
        },
    )
    if a.partial:
        return 0
    for prefix in ("precision: ", "speed: "):
        check(first_line_starting(lines, prefix) is not None, f"no `{prefix.strip()}` line")
    check(f["steady_windows"] > 0, f"no logged training step after step {a.after}")
    check(f["tokens_per_second"] and f["tokens_per_second"] > 0, "no tokens/s in the step lines")
    if a.max_steps:
        check(f["last_step"] == a.max_steps, f"the run stopped at step {f['last_step']}, not {a.max_steps}")
    check(first_line_starting(lines, "saved the final model") is not None, "no `saved the final model` line")
    return 0


# --- benchmarks/bench.py ------------------------------------------------------------------------------------


def bench_rows(lines) -> dict:
    texts = [text for _, text in lines]
    rows = [t for t in texts if t.startswith(("| recipe", "| baseline"))]
    out = {"rows": rows, "recipe": None, "baseline": None, "ratio": None}
    for row in rows:
        cells = [c.strip() for c in row.strip("|").split("|")]
        key = "recipe" if cells[0].startswith("recipe") else "baseline"
        try:
            tokps = float(cells[1].replace(",", ""))
        except (ValueError, IndexError):
            continue
        mfu = cells[3] if len(cells) > 3 else "n/a"
        out[key] = {
            "name": cells[0],
            "tokens_per_second": tokps,
            "step_s": cells[2],
            "mfu": mfu,
            "memory": cells[4] if len(cells) > 4 else "n/a",
        }
    for t in texts:
        m = re.match(r"ratio recipe/baseline \(tokens/s\): ([\d.]+)", t)
        if m:
            out["ratio"] = float(m.group(1))
    out["header"] = [t for t in texts if "training FLOPs per token" in t or re.match(r"^(NVIDIA|CPU;|.*; torch )", t)]
    out["step_times"] = [t for t in texts if t.startswith("step times (s)")]
    return out


def cmd_bench(a) -> int:
    lines = read_log(a.log)
    b = bench_rows(lines)
    for t in b["header"]:
        print(f"    {t}")
    if b["rows"]:
        print("\n| run | tokens/s | step time (s) | MFU | peak memory (GB) |\n| --- | ---: | ---: | ---: | ---: |")
        for row in b["rows"]:
            print(row)
        print()
    for t in b["step_times"]:
        print(f"    {t}")
    if b["ratio"] is not None:
        verdict = "met" if b["ratio"] >= MIN_RATIO else "**not met**"
        print(f"\n- **ratio recipe/hand-written loop: {b['ratio']:.3f}** (goal >= {MIN_RATIO}: {verdict})")
    write_env(
        a.env_out,
        {
            "tokps": int(b["recipe"]["tokens_per_second"]) if b["recipe"] else 0,
            "ratio": b["ratio"] if b["ratio"] is not None else "",
        },
    )
    if a.partial:
        return 0
    check(b["recipe"] is not None, "no `| recipe` row in benchmarks/bench.py's table")
    if a.vs_baseline:
        check(b["baseline"] is not None, "no `| baseline` row in benchmarks/bench.py's table")
        check(b["ratio"] is not None, "no `ratio recipe/baseline` line")
    return 0


def cmd_switch(a) -> int:
    """One row of switches.md."""
    b = bench_rows(read_log(a.log)) if Path(a.log).is_file() else {"recipe": None}
    r = b["recipe"]
    if r is None:
        print(f"| {a.label} | {a.switch} | | | | | {a.wall} | {a.status} |")
        return 0 if a.partial else 1
    vs = f"{r['tokens_per_second'] / a.default_tokps:.2f}x" if a.default_tokps else "n/a"
    settings = r["name"].split(":", 1)[-1].strip()
    print(
        f"| {a.label} | `{a.switch}` ({settings}) | {r['tokens_per_second']:,.0f} | {r['mfu']} | {r['memory']} | "
        f"{vs} | {a.wall} | {a.status} |"
    )
    return 0


# --- the seeds' run and its resume ---------------------------------------------------------------


def newest_state(run_dir: Path) -> tuple[dict | None, Path | None]:
    """The trainer_state.json with the most steps: the run folder's (written at the end) or a checkpoint's."""
    best, best_path = None, None
    for path in [run_dir / "trainer_state.json", *run_dir.glob("checkpoint-*/trainer_state.json")]:
        try:
            state = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if best is None or state.get("global_step", 0) > best.get("global_step", 0):
            best, best_path = state, path
    return best, best_path


def run_config(run_dir: Path) -> dict:
    try:
        import yaml

        return yaml.safe_load((run_dir / "recipe_config.yaml").read_text()) or {}
    except Exception:
        return {}


def history_of(run_dir: Path, logs: list[str]) -> tuple[list[dict], str]:
    """log_history from trainer_state.json; without one (a run cut before its first checkpoint), the console lines."""
    state, path = newest_state(run_dir)
    if state is not None and state.get("log_history"):
        return state["log_history"], f"{path.relative_to(run_dir)}'s log_history"
    history = []
    for log in logs:
        if Path(log).is_file():
            for _, text in read_log(log):
                s = parse_step_line(text)
                if s and ("loss" in s or "eval_loss" in s):
                    history.append({k: v for k, v in s.items() if k != "max_steps"})
    return history, "the console lines (no trainer_state.json)"


def plot_curve(history: list[dict], png: Path, title: str, resume_at: int | None) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in history if "loss" in h and math.isfinite(h["loss"])]
    evals = [(h["step"], h["eval_loss"]) for h in history if "eval_loss" in h]
    lrs = [(h["step"], h["learning_rate"]) for h in history if "learning_rate" in h]
    fig, ax = plt.subplots(figsize=(9, 5), dpi=110)
    if train:
        ax.plot(*zip(*train, strict=True), label="train loss", color="tab:blue", linewidth=1)
    if evals:
        ax.plot(*zip(*evals, strict=True), "o-", label="validation loss", color="tab:orange", markersize=4)
    if resume_at is not None:
        ax.axvline(resume_at, color="grey", linestyle="--", linewidth=1, label=f"--resume (step {resume_at})")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    if lrs:
        ax2 = ax.twinx()
        ax2.plot(*zip(*lrs, strict=True), color="tab:green", linewidth=0.8, alpha=0.6, label="learning rate")
        ax2.set_ylabel("learning rate")
        ax2.ticklabel_format(axis="y", style="sci", scilimits=(0, 0))
        handles = ax.get_legend_handles_labels()[0] + ax2.get_legend_handles_labels()[0]
        ax.legend(handles=handles, loc="upper right")
    else:
        ax.legend(loc="upper right")
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(png)
    plt.close(fig)


def read_samples(run_dir: Path) -> list[dict]:
    path = run_dir / "samples.jsonl"
    if not path.is_file():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            pass
    return rows


def write_samples(rows: list[dict], path: Path, resume_at: int | None) -> None:
    out, last = [], None
    for r in rows:
        if r["step"] != last:
            last = r["step"]
            note = " (after --resume)" if resume_at is not None and last > resume_at else ""
            out.append(f"\n=== step {last}{note} ===\n")
        out.append(f"--- {r['prompt']!r}\n{r['prompt']}{r['completion']}\n")
    path.write_text("".join(out).lstrip("\n"))


def losses_near(history: list[dict], key: str) -> dict[int, float]:
    return {h["step"]: h[key] for h in history if key in h}


def cmd_seeds(a) -> int:
    run_dir, out = Path(a.run_dir), Path(a.out)
    lines = read_log(a.log)
    f = training_figures(lines, a.after)
    cfg = run_config(run_dir)
    training, samples_cfg = cfg.get("training", {}), cfg.get("samples", {})
    max_steps = training.get("max_steps") or f["max_steps"]
    history, source = history_of(run_dir, [a.log])
    title = (
        f"{cfg.get('name', 'the model')} on {Path(str(cfg.get('data', {}).get('path', '?'))).name}: "
        f"{max_steps} steps of {training.get('per_device_train_batch_size')} x "
        f"{cfg.get('data', {}).get('block_size')} tokens"
    )
    png = out / "loss_curve.png"
    try:
        plot_curve(history, png, title, None)
    except Exception as e:
        print(f"- loss curve: not drawn ({type(e).__name__}: {e})")
    rows = read_samples(run_dir)
    write_samples(rows, out / "samples.txt", None)
    state, _ = newest_state(run_dir)  # a stopped run saves the step it was in, after the last logged one
    write_env(a.env_out, {"last_step": max(f["last_step"] or 0, (state or {}).get("global_step", 0))})
    for text in choice_lines(lines):
        print(f"    {text}")
    print()
    print(
        f"- reached step {f['last_step']} of {max_steps}; time to the first step (compile included): "
        f"{fmt_s(f['first_step_s'])}; training time as the Trainer counts it: "
        f"{f['done']['done_in'] if f['done'] else 'n/a'}"
    )
    print(
        f"- steady state (windows after step {a.after}): median **{fmt_int(f['tokens_per_second'])} tokens/s, "
        f"MFU {fmt_pct(f['mfu'])}**, peak memory {gb(f['peak_memory_gb'])}"
    )
    train = losses_near(history, "loss")
    evals = losses_near(history, "eval_loss")
    if train:
        first, last = min(train), max(train)
        print(f"- train loss {train[first]:.3f} at step {first} -> {train[last]:.3f} at step {last}")
    if evals:
        print("- validation loss: " + ", ".join(f"{evals[s]:.3f} (step {s})" for s in sorted(evals)))
    steps_with_samples = sorted({r["step"] for r in rows})
    print(
        f"- samples at steps {', '.join(map(str, steps_with_samples)) or 'none'} -> samples.txt; loss curve "
        f"({source}) -> loss_curve.png"
    )
    if rows:
        newest = [r for r in rows if r["step"] == steps_with_samples[-1]]
        print(
            f"\n    sample at step {steps_with_samples[-1]}: {one_line(newest[0]['prompt'] + newest[0]['completion'])}"
        )
    if a.partial:
        return 0
    eval_every = training.get("eval_steps") if training.get("eval_strategy", "steps") == "steps" else None
    samples_every = samples_cfg.get("every_n_steps")
    check(f["last_step"] == max_steps, f"the run stopped at step {f['last_step']}, not {max_steps}")
    state, _ = newest_state(run_dir)
    reached = (state or {}).get("global_step")
    check(reached == max_steps, f"trainer_state.json ends at step {reached}, not {max_steps}")
    if eval_every:
        want = list(range(eval_every, max_steps + 1, eval_every))
        check(all(s in evals for s in want), f"validation losses at {sorted(evals)}, expected {want}")
    if samples_every:
        want = list(range(samples_every, max_steps + 1, samples_every))
        check(steps_with_samples == want, f"samples at steps {steps_with_samples}, expected {want}")
        n_prompts = len(samples_cfg.get("prompts") or [])
        check(all(sum(r["step"] == s for r in rows) == n_prompts for s in want), "not every prompt has a sample")
    check(png.is_file() and png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n", "loss_curve.png was not written")
    check((run_dir / "final" / "model.safetensors").is_file(), "no final/model.safetensors")
    return 0


def one_line(text: str, limit: int = 160) -> str:
    text = re.sub(r"\s*\n\s*", " / ", text.strip())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def cmd_resume_plan(a) -> int:
    """`STEP EXTRA CUT LOGGING`: the newest complete checkpoint of the seeds' run, the extra steps, 1 if that
    checkpoint is short of max_steps (the run was cut: resume then as if it had ended there), and a logging
    interval that logs the last step (the run's own, or a divisor of it when a cut run ends off its grid)."""
    run_dir = Path(a.run_dir)
    cfg = run_config(run_dir)
    steps = []
    for ckpt in run_dir.glob("checkpoint-*"):
        m = re.fullmatch(r"checkpoint-(\d+)", ckpt.name)
        if m and (ckpt / "trainer_state.json").is_file():
            steps.append(int(m.group(1)))
    if not steps:
        print("0 0 0 0")
        return 0
    step = max(steps)
    extra = (cfg.get("resume") or {}).get("extra_steps", 50)
    training = cfg.get("training") or {}
    max_steps = training.get("max_steps", step)
    logging = math.gcd(int(training.get("logging_steps") or 1), step + extra)
    print(f"{step} {extra} {int(step < max_steps)} {logging}")
    return 0


def cmd_resume(a) -> int:
    run_dir, out = Path(a.run_dir), Path(a.out)
    lines = read_log(a.log)
    resumed = next((RESUMED.search(text) for _, text in lines if RESUMED.search(text)), None)
    history, source = history_of(run_dir, [a.seeds_log, a.log])
    cfg = run_config(run_dir)
    try:
        plot_curve(
            history,
            out / "loss_curve.png",
            f"{cfg.get('name', 'the model')}: the seeds' run, then --resume for {a.extra} steps at lr/10",
            a.start,
        )
    except Exception as e:
        print(f"- loss curve: not redrawn ({type(e).__name__}: {e})")
    rows = read_samples(run_dir)
    write_samples(rows, out / "samples.txt", a.start)
    end = a.start + a.extra
    train = losses_near(history, "loss")
    evals = losses_near(history, "eval_loss")
    lrs = {h["step"]: h["learning_rate"] for h in history if "learning_rate" in h and h["step"] > a.start}
    if resumed:
        print(f"    {resumed.group(0)}")
    before_eval = max((s for s in evals if s <= a.start), default=None)
    after_train = max((s for s in train if s > a.start), default=None)
    if after_train is not None:
        print(
            f"- **train loss after the extra steps: {train[after_train]:.3f} at step {after_train}** "
            f"(at step {a.start}: {train[a.start]:.3f})"
            if a.start in train
            else f"- **train loss after the extra steps: {train[after_train]:.3f} at step {after_train}**"
        )
    if end in evals:
        before = f" (at step {before_eval}: {evals[before_eval]:.3f})" if before_eval is not None else ""
        print(f"- **validation loss after the extra steps: {evals[end]:.3f} at step {end}**{before}")
    if lrs:
        print(f"- learning rate logged in the extra steps: {', '.join(sorted({f'{v:.1e}' for v in lrs.values()}))}")
    print(
        f"- samples after --resume: {', '.join(str(s) for s in sorted({r['step'] for r in rows if r['step'] > a.start})) or 'none'}"
        f"; curve from {source}"
    )
    if a.partial:
        return 0
    check(resumed is not None, "no `resuming from checkpoint-N (step N) for K steps at lr X` line")
    check(
        int(resumed.group(1)) == a.start and int(resumed.group(3)) == a.extra,
        f"resumed from {resumed.group(1)} for {resumed.group(3)} steps, expected {a.start} for {a.extra}",
    )
    state, _ = newest_state(run_dir)
    reached = (state or {}).get("global_step")
    check(reached == end, f"trainer_state.json ends at step {reached}, not {end}")
    lr = float(resumed.group(4))
    check(
        lrs and all(math.isclose(v, lr, rel_tol=1e-3) for v in lrs.values()),
        f"the extra steps logged lr {lrs}, not {lr}",
    )
    check(end in evals, f"no validation loss at step {end}")
    check(any(r["step"] == end for r in rows), f"no samples at step {end}")
    return 0


def cmd_estimate(a) -> int:
    """Seconds the seeds' run should take at the measured tokens/s, with its fixed costs (compile, evaluations,
    samples, checkpoints); the default where nothing was measured."""
    if a.tokps <= 0:
        print(a.default)
    else:
        print(int(a.tokens / a.tokps * 1.15 + a.overhead))
    return 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("env")
    s.add_argument("--mode", default="gpu")
    s.add_argument("--repo", default=".")
    s = sub.add_parser("train")
    s.add_argument("log")
    s.add_argument("--after", type=int, default=10)
    s.add_argument("--max-steps", type=int)
    s.add_argument("--env-out")
    s.add_argument("--partial", action="store_true")
    s = sub.add_parser("bench")
    s.add_argument("log")
    s.add_argument("--vs-baseline", action="store_true")
    s.add_argument("--env-out")
    s.add_argument("--partial", action="store_true")
    s = sub.add_parser("switch")
    s.add_argument("label")
    s.add_argument("switch")
    s.add_argument("log")
    s.add_argument("--default-tokps", type=float, default=0)
    s.add_argument("--wall", default="")
    s.add_argument("--status", default="ok")
    s.add_argument("--partial", action="store_true")
    s = sub.add_parser("seeds")
    s.add_argument("run_dir")
    s.add_argument("log")
    s.add_argument("--out", required=True)
    s.add_argument("--after", type=int, default=10)
    s.add_argument("--env-out")
    s.add_argument("--partial", action="store_true")
    s = sub.add_parser("resume-plan")
    s.add_argument("run_dir")
    s = sub.add_parser("resume")
    s.add_argument("run_dir")
    s.add_argument("log")
    s.add_argument("--seeds-log", required=True)
    s.add_argument("--out", required=True)
    s.add_argument("--start", type=int, required=True)
    s.add_argument("--extra", type=int, required=True)
    s.add_argument("--partial", action="store_true")
    s = sub.add_parser("estimate")
    s.add_argument("--tokens", type=float, required=True)
    s.add_argument("--tokps", type=float, default=0)
    s.add_argument("--overhead", type=float, default=0)
    s.add_argument("--default", type=int, required=True)
    a = p.parse_args(argv)
    commands = {
        "env": cmd_env,
        "train": cmd_train,
        "bench": cmd_bench,
        "switch": cmd_switch,
        "seeds": cmd_seeds,
        "resume-plan": cmd_resume_plan,
        "resume": cmd_resume,
        "estimate": cmd_estimate,
    }
    try:
        return commands[a.cmd](a)
    except CheckFailed as e:
        print(f"check failed: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
