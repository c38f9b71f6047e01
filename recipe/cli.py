"""The bottom of the recipe: one-line errors, the console line, one argument parser, Hub ids and reachability.

Every other module builds on this one, and it imports nothing of the recipe's own, so that app.py and
generate.py can run alone on a Hugging Face Space with it beside them.
"""

from __future__ import annotations

import argparse
import re
import socket
import sys
import threading
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


def exit_code(main, argv=None) -> int:
    """Run an entry script's `main(argv)`: a RecipeError is its one `error:` line and exit code 2."""
    try:
        return main(argv)
    except RecipeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2


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
    """Whether the Hub's host answers a name lookup within a few seconds. Offline, huggingface_hub would retry
    for about a minute before failing; callers then ask for local files only instead."""
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
