"""The bottom of the recipe: the one way in for every command, one-line errors, the console line, one argument
parser, Hub ids and reachability.

Every other module builds on this one, and it imports nothing of the recipe's own, so that app.py and
generate.py can run alone on a Hugging Face Space with it beside them.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import shutil
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from typing import NoReturn
from urllib.parse import urlparse

import psutil
from huggingface_hub import constants
from tqdm.auto import tqdm


class RecipeError(Exception):
    """A mistake the user can fix: printed as one `error:` line, then the program exits with code 2."""


def first_line(error: BaseException) -> str:
    """The first line of a library's error message (or its type), to quote inside a one-line error."""
    lines = str(error).strip().splitlines()
    return lines[0].rstrip(":. ") if lines else type(error).__name__


def log(message: str) -> None:
    """One line on the console of the main process, written through tqdm so that it never lands inside a
    progress bar."""
    from accelerate import PartialState  # here, not above: this module is imported before torch (recipe/__init__.py)

    if PartialState().is_main_process:
        tqdm.write(message)


ROOT = Path(__file__).resolve().parents[1]  # the clone (or the Space): its scripts, YAML configs, assets/
EXIT_MISTAKE, EXIT_INTERRUPTED = 2, 130
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the main thread is: the command unwinds as from Ctrl-C, so that `finally` blocks
    and context managers clean up (scratch folders, the tokenizer pool, dataloader workers)."""


GRACEFUL_STOPS: list = []  # while training: callbacks.GracefulInterruptCallback's handler
IN_FORK_HOOKS: list[bool] = [False]  # the main thread is running the fork hooks (see guard_forks)
STOPPING: list[bool] = [False]  # a stop was raised: the command is unwinding


def on_stop_signal(signum, frame):
    """Ctrl-C and SIGTERM under `command`: while training, its graceful stop (save a checkpoint, then stop);
    at any other moment the command unwinds from where it is, its `finally` blocks cleaning up."""
    if GRACEFUL_STOPS:
        return GRACEFUL_STOPS[-1](signum, frame)
    if IN_FORK_HOOKS[0]:  # a stop cannot be raised there (see guard_forks)
        return send_again_soon(signum)
    STOPPING[0] = True
    if signum == signal.SIGTERM:
        let_the_children_take_it()
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def let_the_children_take_it(seconds: float = 2.0) -> None:
    """A SIGTERM sent to every process at once is still pending in a child whose watcher has not taken it yet
    (see guard_forks), and a second one, by which this process's unwinding ends that child, would merge into
    it unseen: the unwinding starts once no child has it pending."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline and any(map(sigterm_pending, psutil.Process().children())):
        time.sleep(0.01)


def sigterm_pending(process: psutil.Process) -> bool:
    with contextlib.suppress(OSError):  # gone, or not Linux
        pending = re.search(r"^ShdPnd:\s*(\w+)", Path(f"/proc/{process.pid}/status").read_text(), re.MULTILINE)
        return bool(pending and int(pending[1], 16) >> (signal.SIGTERM - 1) & 1)
    return False


def resend_a_swallowed_stop(other_errors, unraisable) -> None:
    """A stop raised where Python cannot raise (in a `__del__`, a weakref callback) is swallowed as
    "unraisable", and the command would go on: it is sent again. Other errors go to the hook it replaced, but
    for those of a command that is unwinding from a stop: a finalizer that the stop cut short fails then
    (multiprocessing's, half made), and its traceback is not news."""
    if isinstance(unraisable.exc_value, KeyboardInterrupt):
        send_again_soon(signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT)
    elif not STOPPING[0]:
        other_errors(unraisable)


def send_again_soon(signum: int) -> None:
    """The stop again 50 ms from now, from another thread: the main thread has left where it could not land."""
    threading.Timer(0.05, os.kill, (os.getpid(), signum)).start()


def command(interrupted: str):
    """The one way in: `@cli.command("what a stop leaves behind")` on an entry script's `main(argv)`, which then
    returns the exit code. A RecipeError is one `error:` line and exit code 2, and so is an OSError on a path
    (it names the path); Ctrl-C or SIGTERM, at any moment, is one line and exit code 130. The handlers are this
    scaffold's alone: training's graceful stop registers itself in GRACEFUL_STOPS for them to call."""

    def wrap(main):
        @functools.wraps(main)
        def run(*args, **kwargs) -> int:
            guard_forks()
            STOPPING[0] = False
            handlers, hook = handle_stop_signals(on_stop_signal), sys.unraisablehook
            sys.unraisablehook = functools.partial(resend_a_swallowed_stop, hook)
            try:
                return main(*args, **kwargs)
            except RecipeError as e:
                print(f"error: {e}", file=sys.stderr)
                return EXIT_MISTAKE
            except OSError as e:
                if e.filename is None:  # not a path the user gave: a bug, with its traceback
                    raise
                print(f"error: {e.filename}: {e.strerror or first_line(e)}", file=sys.stderr)
                return EXIT_MISTAKE
            except KeyboardInterrupt as e:
                end_children_still_starting()
                name = "SIGTERM" if isinstance(e, Terminated) else "SIGINT"
                print(f"\n{name}: {interrupted}", file=sys.stderr, flush=True)
                return EXIT_INTERRUPTED
            finally:
                sys.unraisablehook = hook
                # run as the program, the command's end leaves only the interpreter's exit, which a stop ends
                handle_stop_signals(stop_at_once("while exiting") if main.__module__ == "__main__" else handlers)

        return run

    return wrap


def stop_at_once(when: str):
    """The handler of a stop before the command starts (Python importing torch) or after its end (the interpreter
    exiting: joining threads, closing loggers): one line, and the exit at once."""

    def stop(signum, frame):
        print(f"\n{signal.Signals(signum).name}: stopped {when}", file=sys.stderr, flush=True)
        exit_at_once(EXIT_INTERRUPTED)

    return stop


def runs_as_a_command() -> bool:
    """The program is one of the recipe's scripts (beside recipe/, or in benchmarks/), not a test or a notebook."""
    script = getattr(sys.modules.get("__main__"), "__file__", None)
    return script is not None and Path(script).resolve().parent in (ROOT, ROOT / "benchmarks")


def exit_at_once(code: int) -> NoReturn:
    """os._exit(code), but for the output still buffered and the multiprocessing scratch folders, which the
    interpreter's exit would have flushed and removed."""
    with contextlib.suppress(OSError, ValueError):  # a closed pipe
        sys.stdout.flush()
    for folder in multiprocessing_scratch_folders():
        shutil.rmtree(folder, ignore_errors=True)
    os._exit(code)


def handle_stop_signals(handler) -> dict:
    """Set `handler` (one for all, or a dict by signal) for Ctrl-C and SIGTERM; the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers; a command run in a thread leaves them alone
    handlers = handler if isinstance(handler, dict) else dict.fromkeys(STOP_SIGNALS, handler)
    return {sig: signal.signal(sig, h) for sig, h in handlers.items()}


@functools.cache
def guard_forks() -> None:
    """Processes forked from now on (datasets' tokenizer pool, dataloader workers) are this process's to end: they
    leave Ctrl-C to it, and obey a SIGTERM only from it (the one by which a pool ends its workers) or when it is
    gone, however it ended (even killed). A SIGTERM that systemd or Slurm sends to every process at once reached
    this process too, which ends its children in order as it unwinds: a worker killed by it at once could die
    holding its pool's queue lock, and the pool's end would then wait for that lock forever.

    A stop raised inside the main thread's fork hooks would be swallowed there, and inside logging's it would
    leave logging's lock held, so that the next fork (a pool's thread replacing a worker) waits forever: while
    they run, a stop is sent again for later instead. The thread that forks holds stops back until the child has
    its own handlers. Hooks run in reverse order of registration before a fork and in order after it, so these,
    registered as the command starts, enclose the libraries' own."""
    main_thread, mask = threading.main_thread().ident, threading.local()

    def before():
        IN_FORK_HOOKS[0] = IN_FORK_HOOKS[0] or threading.get_ident() == main_thread
        mask.before_fork = signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def in_the_parent():
        signal.pthread_sigmask(signal.SIG_SETMASK, mask.before_fork)
        if threading.get_ident() == main_thread:
            IN_FORK_HOOKS[0] = False

    def in_the_child():
        IN_FORK_HOOKS[0] = False
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        if not hasattr(signal, "sigtimedwait"):  # macOS: SIGTERM ends the child as it comes, from whomever
            signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        # else SIGTERM stays blocked in every thread of the child, and the watcher's wait alone takes it
        threading.Thread(target=end_with_the_parent, args=(os.getppid(),), daemon=True).start()

    os.register_at_fork(before=before, after_in_parent=in_the_parent, after_in_child=in_the_child)
    # A child that finds no scratch folder of its parent's makes its own, left behind when a stop ends the child;
    # made here, the parent's is the children's too, and it is removed when the parent exits.
    multiprocessing_scratch_folders()


def end_with_the_parent(parent: int) -> None:
    """A forked child's watcher: the child ends at its parent's SIGTERM or when the parent is gone."""
    while True:
        sent = signal.sigtimedwait([signal.SIGTERM], 0.5) if hasattr(signal, "sigtimedwait") else time.sleep(0.5)
        if (sent and sent.si_pid == parent) or os.getppid() != parent:
            os._exit(128 + signal.SIGTERM)


MULTIPROCESSING = ("multiprocessing", "multiprocess")  # the standard library's and datasets' own copy of it


def multiprocessing_scratch_folders() -> list[str]:
    """The scratch folder of each multiprocessing module loaded, made now if it is not there yet."""
    return [util.get_temp_dir() for name in MULTIPROCESSING if (util := sys.modules.get(f"{name}.util"))]


def end_children_still_starting() -> None:
    """A child whose start the stop cut short (datasets' pool manager, before it was registered for shutdown)
    is ended by no one, and the interpreter's exit would wait for it forever: end it now. Daemonic children (a
    pool's workers) are left to multiprocessing's exit, which ends them after their pool's own shutdown: ended
    before it, a worker could die holding the queue lock that the shutdown waits for."""
    for name in MULTIPROCESSING:
        module = sys.modules.get(name)
        for child in module.active_children() if module else ():
            if not child.daemon:
                child.terminate()


class OneLineParser(argparse.ArgumentParser):
    """argparse with the recipe's manners: a bad flag is one `error:` line (no usage block), and `key=value`
    overrides may come before, between or after the flags."""

    def error(self, message: str):
        raise RecipeError(f"{message}; see python {self.prog} --help")

    def parse(self, argv: list[str] | None = None) -> argparse.Namespace:
        args, unknown = self.parse_known_intermixed_args(argv)
        if unknown:  # argparse takes the words after an unknown flag for its values: the flags alone are named
            self.error(f"unrecognized arguments: {' '.join([w for w in unknown if w.startswith('-')] or unknown)}")
        return args


def parser(prog: str, doc: str | None) -> OneLineParser:
    return OneLineParser(prog=prog, description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)


# --- the Hub -------------------------------------------------------------------------------------

FILE_SUFFIXES = (".txt", ".text", ".md", ".json", ".jsonl", ".gz", ".parquet", ".csv", ".tsv", ".yaml", ".safetensors")
HUB_NAME = re.compile(r"[A-Za-z0-9][\w.-]*")


def looks_like_hub_id(text: str) -> bool:
    """`name` or `user/name`, naming no local file or folder and no file by its suffix (`input.txt` is a file
    that is missing, not a Hub dataset): a model or dataset id as the Hub writes them."""
    parts = text.split("/")
    if not 1 <= len(parts) <= 2 or not all(HUB_NAME.fullmatch(p) for p in parts):
        return False
    return not text.lower().endswith(FILE_SUFFIXES) and not Path(text).exists() and not Path(parts[0]).is_dir()


def hub_is_reachable(timeout: float = 3.0) -> bool:
    """False when the Hub is known to be out of reach: HF_HUB_OFFLINE, or a name lookup of its host that fails.
    Offline, huggingface_hub would retry for about a minute before failing; callers then ask for local files
    only instead. A lookup still unanswered after `timeout` (a slow resolver, a loaded machine) says nothing
    either way, so it counts as reachable and the Hub's client tries with its own timeouts: a busy machine
    must not refuse a run that would have worked."""
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
    return answer[0] if answer else True
