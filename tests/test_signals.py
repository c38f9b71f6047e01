"""Ctrl-C and SIGTERM at any moment of any command: one line, exit code 130 (training's graceful stop saves a
checkpoint first and says so in its own line), no traceback, no process of the command's left alive 5 s later,
no scratch file left. Ctrl-C goes to the whole process group, as a terminal sends it; SIGTERM to the command
alone, as `kill` sends it, so that its children must end with it, and, where children are at work, to the whole
group as well, as systemd and Slurm send it, so that the children get it at the same moment as their parent."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path

import psutil
import pytest
from conftest import CORPUS, ROOT, tiny_overrides
from test_app_browser import free_port

pytestmark = pytest.mark.slow

SIGNALS = [signal.SIGINT, signal.SIGTERM]
STOPS = [(signal.SIGINT, True), (signal.SIGTERM, False), (signal.SIGTERM, True)]  # (signal, to the whole group)
STOP_IDS = ["SIGINT", "SIGTERM", "SIGTERM-to-the-group"]
SCRATCH = (".tmp-", ".packing-", ".old-", ".damaged-")  # run_folder.atomic_folder's, data.py's


class Running:
    """A command in a session of its own, its stdout and stderr read together as they come."""

    def __init__(self, argv: list[str], tmp_path: Path):
        # tempfile's folders (push.py's) land here; a short path, as multiprocessing's sockets under it must
        # name fewer than 108 bytes (a pytest-xdist tmp_path is too long for them)
        self.scratch = Path(tempfile.mkdtemp(prefix="signals-"))
        weakref.finalize(self, shutil.rmtree, self.scratch, ignore_errors=True)
        env = {
            **os.environ,
            "TMPDIR": str(self.scratch),
            "HF_DATASETS_CACHE": str(tmp_path / "datasets"),
            "GRADIO_ANALYTICS_ENABLED": "False",
        }
        self.proc = subprocess.Popen(
            [sys.executable, "-u", *argv],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        self.output = b""
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self):
        while chunk := os.read(self.proc.stdout.fileno(), 65536):
            self.output += chunk

    @property
    def text(self) -> str:
        return self.output.decode(errors="replace")

    def wait_for(self, marker: str, timeout: float = 300) -> None:
        """Until `marker` is in the output (a line that marks the phase), failing if the command ends first."""
        deadline = time.monotonic() + timeout
        while marker not in self.text:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"never saw {marker!r}:\n{self.text[-4000:]}")
            time.sleep(0.05)

    def wait_for_children(self, count: int, timeout: float = 120) -> None:
        deadline = time.monotonic() + timeout
        while len(psutil.Process(self.proc.pid).children(recursive=True)) < count:
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.proc.kill()
                pytest.fail(f"never saw {count} processes of its own:\n{self.text[-4000:]}")
            time.sleep(0.05)

    def stop(self, sig: int, to_the_group: bool | None = None) -> list[psutil.Process]:
        """Send the signal (Ctrl-C to the group, SIGTERM to the command, unless told); the command's processes as
        they were just before it."""
        children = psutil.Process(self.proc.pid).children(recursive=True)
        if to_the_group or (to_the_group is None and sig == signal.SIGINT):
            os.killpg(self.proc.pid, sig)
        else:
            self.proc.send_signal(sig)
        try:
            self.proc.wait(timeout=120)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            pytest.fail(f"still running 120 s after {signal.Signals(sig).name}:\n{self.text[-4000:]}")
        self.reader.join(timeout=10)
        return children


def assert_ended_cleanly(run: Running, children: list[psutil.Process], *folders: Path) -> list[str]:
    """Exit code 130, no traceback, none of its processes alive 5 s later, no scratch file; its output lines."""
    text = run.text
    assert run.proc.returncode == 130, text[-4000:]
    assert "Traceback" not in text, text[-4000:]
    # with its children, any process of its session: their children, orphans of children cut short
    _, alive = psutil.wait_procs({*children, *in_session(run.proc.pid)}, timeout=5)
    assert not alive, f"left alive: {[p.cmdline() for p in alive]}\n{text[-2000:]}"
    left = [p for folder in folders for p in folder.rglob("*") if any(s in p.name for s in SCRATCH)]
    left += [p for p in run.scratch.iterdir() if not p.name.startswith(("torchinductor_", "gradio"))]  # caches
    assert not left, left
    return [line for line in text.splitlines() if line.strip()]


def in_session(sid: int) -> list[psutil.Process]:
    """The live processes of a session (a command started with start_new_session, and all it started)."""
    found = []
    for process in psutil.process_iter():
        with contextlib.suppress(OSError, psutil.Error):
            if os.getsid(process.pid) == sid and process.status() != psutil.STATUS_ZOMBIE:
                found.append(process)
    return found


def assert_one_line(lines: list[str], sig: int, says: str) -> None:
    """The command's last line, but for a progress bar's last refresh as it closes."""
    messages = [line for line in lines if "%|" not in line]
    assert messages[-1] == f"{signal.Signals(sig).name}: {says}", lines[-5:]


# --- train.py -----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def big_corpus(tmp_path_factory) -> Path:
    """About 50 MB of text in paragraphs: the tiny Shakespeare, repeated."""
    path = tmp_path_factory.mktemp("corpus") / "big.txt"
    text = Path(CORPUS).read_text()
    path.write_text("\n\n".join([text] * 45))
    return path


@pytest.mark.parametrize(("sig", "to_the_group"), STOPS, ids=STOP_IDS)
def test_train_while_tokenizing_with_two_processes(sig, to_the_group, big_corpus, tmp_path):
    out, cache = tmp_path / "run", tmp_path / "cache"
    overrides = tiny_overrides(out, cache) + [f"data.path={big_corpus}", "data.sample_by=paragraph", "data.num_proc=2"]
    run = Running([str(ROOT / "train.py"), "--no-prompt", *overrides], tmp_path)
    run.wait_for("tokenizing")
    run.wait_for_children(2)  # the pool's workers at work (a loaded machine may take seconds to start them)
    children = run.stop(sig, to_the_group)
    lines = assert_ended_cleanly(run, children, out.parent, cache)
    assert_one_line(lines, sig, "stopped before training; no checkpoint was saved")
    assert not list(cache.glob("blocks-*"))


# A test's own moment of a run: the `python -c` script patches it, then runs train.py's main as the script does.
PHASES = {
    "training": ("", " | loss "),
    "evaluating": (
        """
from transformers import TrainerCallback
class SlowEvaluation(TrainerCallback):
    def on_prediction_step(self, args, state, control, **kwargs):
        print("evaluating", flush=True)
        time.sleep(1)
callbacks = [SlowEvaluation()]
""",
        "evaluating",
    ),
    "saving": (
        """
import torch
real_save = torch.save
def slow_save(obj, f, *args, **kwargs):
    if "checkpoint-" in str(f) and str(f).endswith("optimizer.pt"):
        print("saving", flush=True)
        time.sleep(2)
    return real_save(obj, f, *args, **kwargs)
torch.save = slow_save
""",
        "saving\n",
    ),
}


@pytest.mark.parametrize(("sig", "to_the_group"), STOPS, ids=STOP_IDS)
@pytest.mark.parametrize("phase", list(PHASES))
def test_train_stops_gracefully_with_a_checkpoint(phase, sig, to_the_group, tmp_path, cache_dir):
    out = tmp_path / "run"
    overrides = tiny_overrides(out, cache_dir, max_steps=1000, save_steps=2, eval_steps=2, dataloader_num_workers=2)
    patch, marker = PHASES[phase]
    script = f"import sys, time\nsys.path.insert(0, {str(ROOT)!r})\nimport train\ncallbacks = []\n{patch}\n"
    script += "sys.exit(train.main(sys.argv[1:], callbacks))"
    run = Running(["-c", script, "--no-prompt", *overrides, "samples.every_n_steps=0"], tmp_path)
    run.wait_for(marker)
    children = run.stop(sig, to_the_group)
    assert children  # the dataloader's workers
    lines = assert_ended_cleanly(run, children, out.parent, cache_dir)
    stopped = next(line for line in lines if line.startswith("interrupted at step "))
    step = int(stopped.split()[3].rstrip(":"))
    assert f"saved checkpoint-{step}" in stopped and (out / f"checkpoint-{step}" / "checksums.json").is_file()
    assert any(line.startswith(f"{sig.name}: stopping") for line in lines), lines[-5:]


# --- the other commands, on the tiny run's model ------------------------------------------------------


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_eval_while_evaluating(sig, tiny_run, tmp_path):
    pytest.importorskip("lm_eval")
    final = tiny_run / "final"
    results = tmp_path / "results.json"
    run = Running([str(ROOT / "eval.py"), str(final), "--batch-size", "1", "--output", str(results)], tmp_path)
    run.wait_for("max_length")
    time.sleep(2)  # lm-eval at work
    children = run.stop(sig)
    lines = assert_ended_cleanly(run, children, tmp_path)
    assert_one_line(lines, sig, "stopped; no results written")
    assert not results.exists()


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_generate_while_generating(sig, tiny_run, tmp_path):
    argv = [str(ROOT / "generate.py"), str(tiny_run / "final"), "--prompt", "ROMEO:", "--max-new-tokens", "4000"]
    run = Running(argv, tmp_path)
    run.wait_for("ROMEO:")
    time.sleep(1)  # tokens coming
    lines = assert_ended_cleanly(run, run.stop(sig), tmp_path)
    assert_one_line(lines, sig, "stopped generating")


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_app_while_serving(sig, tiny_run, tmp_path):
    run = Running([str(ROOT / "app.py"), str(tiny_run / "final"), "--port", str(free_port())], tmp_path)
    run.wait_for("Ctrl-C to stop")
    lines = assert_ended_cleanly(run, run.stop(sig), tmp_path)
    assert_one_line(lines, sig, "stopped serving")


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_push_while_uploading(sig, hub, tiny_run, tmp_path):
    uploading, release = threading.Event(), threading.Event()
    handle_post = hub.handle_post

    def hold_the_commit(path, body):  # the upload is under way until the test has stopped push.py
        if "/commit/" in path:
            uploading.set()
            release.wait(60)
        return handle_post(path, body)

    hub.handle_post = hold_the_commit
    run = Running([str(ROOT / "push.py"), "--checkpoint", str(tiny_run / "final"), "--repo-id", "me/tiny"], tmp_path)
    try:
        assert uploading.wait(300), run.text[-4000:]
        children = run.stop(sig)
    finally:
        release.set()
    lines = assert_ended_cleanly(run, children, tmp_path)
    assert_one_line(lines, sig, "stopped before the upload finished")
    assert not hub.commits


# --- the scaffold itself ------------------------------------------------------------------------------

FORKING = f"""
import multiprocessing, sys
sys.path.insert(0, {str(ROOT)!r})
from recipe import cli

@cli.command("stopped while forking")
def main():
    print("forking", flush=True)
    while True:  # most of its time in forks and their hooks, and in pools half started or half ended
        with multiprocessing.Pool(2) as pool:
            pool.map(abs, range(4))

sys.exit(main())
"""


@pytest.mark.parametrize(("sig", "to_the_group"), STOPS, ids=STOP_IDS)
def test_a_stop_during_a_fork_is_neither_lost_nor_stuck(sig, to_the_group, tmp_path):
    """A stop that landed inside a fork's hooks was swallowed (the command went on) or left logging's lock held
    (the next fork waited forever), and one that cut a pool's start short left its workers behind; a SIGTERM to
    the whole group killed a worker holding its pool's queue lock, and the pool's end waited for it forever.
    About one moment in two of this loop was such a moment, so a dozen of them find it."""
    for delay in [i / 24 for i in range(12)]:
        run = Running(["-c", FORKING], tmp_path)
        run.wait_for("forking")
        time.sleep(delay)
        lines = assert_ended_cleanly(run, run.stop(sig, to_the_group), tmp_path)
        assert_one_line(lines, sig, "stopped while forking")


EXITING = f"""
import atexit, multiprocessing.util, sys, time
sys.path.insert(0, {str(ROOT)!r})
from recipe import cli

@cli.command("stopped while working")
def main():
    atexit.register(time.sleep, 60)  # the interpreter's exit at work: a logger finishing its upload, say
    print("done", flush=True)
    return 0

sys.exit(main())
"""


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_stop_while_the_interpreter_exits(sig, tmp_path):
    """After the command's end, a stop ends the interpreter's exit too: one line, exit code 130, and the
    multiprocessing scratch folder that the exit would have removed is removed."""
    run = Running(["-c", EXITING], tmp_path)
    run.wait_for("done")
    time.sleep(0.5)
    lines = assert_ended_cleanly(run, run.stop(sig), tmp_path)
    assert_one_line(lines, sig, "stopped while exiting")


@pytest.mark.parametrize("sig", SIGNALS, ids=lambda s: s.name)
def test_a_stop_while_python_imports_torch(sig, tmp_path):
    """In the seconds Python takes to import torch and transformers, before the command's scaffold starts: the
    recipe's package, imported first, has set the handler (it catches SIGTERM from then on)."""
    run = Running([str(ROOT / "train.py"), "--help"], tmp_path)
    deadline = time.monotonic() + 60
    while not catches(run.proc.pid, signal.SIGTERM) and time.monotonic() < deadline:
        time.sleep(0.01)
    lines = assert_ended_cleanly(run, run.stop(sig), tmp_path)
    assert_one_line(lines, sig, "stopped while starting")


def catches(pid: int, sig: int) -> bool:
    with contextlib.suppress(OSError):
        caught = re.search(r"^SigCgt:\s*(\w+)", Path(f"/proc/{pid}/status").read_text(), re.MULTILINE)
        return bool(caught and int(caught[1], 16) >> (sig - 1) & 1)
    return False
