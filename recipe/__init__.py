"""The recipe's machinery, one module a concept, under the scripts a user runs (train.py, data.py, push.py, ...).

Imports run one way: the scripts import this package, and inside it each module imports only modules below it,
down to `cli` (how a command starts and ends), which imports nothing of the recipe's own (tests/test_layout.py).
"""

from recipe import cli

# The scripts import this package before torch and transformers (pyproject.toml's import order), so that a stop in
# the seconds of their imports, before the command's scaffold starts, is one line too.
if cli.runs_as_a_command():
    cli.handle_stop_signals(cli.stop_at_once("while starting"))
