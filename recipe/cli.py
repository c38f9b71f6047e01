"""The bottom of the recipe: the one way in for every command, one-line errors, the console line, one argument
parser, Hub ids and reachability.

Every other module builds on this one, and it imports nothing of the recipe's own, so that app.py and
generate.py can run alone on a Hugging Face Space with it beside them.
"""

from __future__ import annotations

import argparse
import ctypes
import functools
import os
import re
import signal
import socket
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

from accelerate import PartialState
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
    if PartialState().is_main_process:
        tqdm.write(message)


EXIT_MISTAKE, EXIT_INTERRUPTED = 2, 130
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised wherever the main thread is: the command unwinds as from Ctrl-C, so that `finally` blocks
    and context managers clean up (scratch folders, the tokenizer pool, dataloader workers)."""


GRACEFUL_STOPS: list = []  # while training: callbacks.GracefulInterruptCallback's handler
IN_FORK_HOOKS: list[bool] = [False]  # the main thread is running the fork hooks (see guard_forks)


def on_stop_signal(signum, frame):
    """Ctrl-C and SIGTERM under `command`: while training, its graceful stop (save a checkpoint, then stop);
    at any other moment the command unwinds from where it is, its `finally` blocks cleaning up."""
    if GRACEFUL_STOPS:
        return GRACEFUL_STOPS[-1](signum, frame)
    if IN_FORK_HOOKS[0]:  # a stop cannot be raised there (see guard_forks)
        return send_again_soon(signum)
    raise Terminated if signum == signal.SIGTERM else KeyboardInterrupt


def resend_a_swallowed_stop(other_errors, unraisable) -> None:
    """A stop raised where Python cannot raise (in a `__del__`, a weakref callback) is swallowed as
    "unraisable", and the command would go on: it is sent again. Other errors go to the hook it replaced."""
    if not isinstance(unraisable.exc_value, KeyboardInterrupt):
        return other_errors(unraisable)
    send_again_soon(signal.SIGTERM if isinstance(unraisable.exc_value, Terminated) else signal.SIGINT)


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
                handle_stop_signals(handlers)
                sys.unraisablehook = hook

        return run

    return wrap


def handle_stop_signals(handler) -> dict:
    """Set `handler` (one for all, or a dict by signal) for Ctrl-C and SIGTERM; the handlers it replaced."""
    if threading.current_thread() is not threading.main_thread():
        return {}  # only the main thread may set handlers; a command run in a thread leaves them alone
    handlers = handler if isinstance(handler, dict) else dict.fromkeys(STOP_SIGNALS, handler)
    return {sig: signal.signal(sig, h) for sig, h in handlers.items()}


@functools.cache
def guard_forks() -> None:
    """Processes forked from now on (datasets' tokenizer pool, dataloader workers) leave Ctrl-C to this process,
    which ends them as it unwinds, die of the SIGTERM by which a pool ends its workers, and, on Linux, die with
    this process however it ends (even killed): no worker is left behind holding a scratch folder.

    A stop raised inside the main thread's fork hooks would be swallowed there, and inside logging's it would
    leave logging's lock held, so that the next fork (a pool's thread replacing a worker) waits forever: while
    they run, a stop is sent again for later instead. The thread that forks holds stops back until the child has
    its own handlers. Hooks run in reverse order of registration before a fork and in order after it, so these,
    registered as the command starts, enclose the libraries' own."""
    main_thread = threading.main_thread().ident
    prctl = ctypes.CDLL(None).prctl if sys.platform == "linux" else None
    PR_SET_PDEATHSIG = 1

    def before():
        IN_FORK_HOOKS[0] = IN_FORK_HOOKS[0] or threading.get_ident() == main_thread
        signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)

    def in_the_parent():
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)
        if threading.get_ident() == main_thread:
            IN_FORK_HOOKS[0] = False

    def in_the_child():
        IN_FORK_HOOKS[0] = False
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        # The kernel sends the signal when the thread that forked ends: a child of another thread (a pool's
        # replacement worker) watches for its parent's end itself.
        if prctl is not None and threading.get_ident() == main_thread:
            prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        else:
            threading.Thread(target=exit_when_orphaned, args=(os.getppid(),), daemon=True).start()
        signal.pthread_sigmask(signal.SIG_UNBLOCK, STOP_SIGNALS)

    os.register_at_fork(before=before, after_in_parent=in_the_parent, after_in_child=in_the_child)
    # A child that finds no scratch folder of its parent's makes its own, left behind when a stop ends the child;
    # made here, the parent's is the children's too, and it is removed when the parent exits.
    for name in MULTIPROCESSING:
        if util := sys.modules.get(f"{name}.util"):
            util.get_temp_dir()


def exit_when_orphaned(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(0.5)
    os._exit(1)


MULTIPROCESSING = ("multiprocessing", "multiprocess")  # the standard library's and datasets' own copy of it


def end_children_still_starting() -> None:
    """A child whose start the stop cut short (datasets' pool manager, before it was registered for shutdown)
    is ended by no one, and the interpreter's exit would wait for it forever: end every child now."""
    for name in MULTIPROCESSING:
        module = sys.modules.get(name)
        for child in module.active_children() if module else ():
            child.terminate()


class OneLineParser(argparse.ArgumentParser):
    """argparse with the recipe's manners: a bad flag is one `error:` line (no usage block), and `key=value`
    overrides may come before, between or after the flags."""

    def error(self, message: str):
        raise RecipeError(f"{message}; see python {self.prog} --help")

    def parse(self, argv: list[str] | None = None) -> argparse.Namespace:
        return self.parse_intermixed_args(argv)


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
