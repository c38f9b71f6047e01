"""The recipe's machinery, one module a concept, under the scripts a user runs (train.py, data.py, push.py, ...).

Imports run one way: the scripts import this package, and inside it each module imports only modules below it,
down to `cli` (how a command starts and ends), which imports nothing of the recipe's own (tests/test_layout.py).
"""
