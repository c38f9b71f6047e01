"""Derive the offline evaluation data from the shipped corpus: the last 4,000 lines of tiny Shakespeare.

    python assets/eval/make_tinyshakespeare_data.py      # rewrites the two .jsonl files beside it

Deterministic (seeded), so the shipped files are exactly what this prints; tests/test_eval.py checks it.

- tinyshakespeare_passages.jsonl: the slice as passages of whole speeches (about 1,000 characters each),
  for rolling log-likelihood: word and byte perplexity, bits per byte.
- tinyshakespeare_nextline.jsonl: 500 next-line questions: four lines of the play, then the true next
  line and three lines of about its length drawn from elsewhere in the slice; the model should give
  the true line the highest likelihood.

The slice is NOT held out from the default run's training data: the recipe's validation split holds
out random blocks of the whole corpus, so a model trained on tiny Shakespeare has seen most of these
lines. The tasks are a sanity check of the evaluation pipeline and of what the model learned of this
text, not a measure of generalization (see docs/evaluation.md).
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from pathlib import Path

HERE = Path(__file__).resolve().parent
CORPUS = HERE.parent / "tinyshakespeare.txt"
SLICE_LINES = 4_000  # the corpus has 40,000 lines: the slice is its last tenth
PASSAGE_CHARS = 1_000  # speeches are joined until a passage has at least this many characters
QUESTIONS = 500
CONTEXT_LINES = 4
MIN_LINE_CHARS = 20  # shorter lines ("Ay, my lord.") are too generic to tell apart
MIN_DISTANCE = 20  # distractors come from at least this many lines away
SEED = 1234
SPEAKER = re.compile(r"^[A-Z][A-Za-z' ,.-]*:$")  # "ROMEO:", "First Citizen:", "KING RICHARD II:"


def corpus_slice(text: str) -> tuple[int, list[str]]:
    """The last SLICE_LINES lines, from the first speech that begins inside them, and the corpus line
    number (1-based) of the first."""
    all_lines = text.splitlines()
    lines = all_lines[-SLICE_LINES:]
    start = lines.index("") + 1  # after the blank line that ends the speech cut in two
    return len(all_lines) - len(lines) + start + 1, lines[start:]


def passages(lines: list[str]) -> list[dict]:
    groups = [[]]
    for speech in "\n".join(lines).strip().split("\n\n"):
        if sum(map(len, groups[-1])) >= PASSAGE_CHARS:
            groups.append([])
        groups[-1].append(speech)
    return [{"text": "\n\n".join(group)} for group in groups]


def is_verse(line: str) -> bool:
    return len(line) >= MIN_LINE_CHARS and not SPEAKER.match(line)


def nextline_questions(lines: list[str], first_line: int) -> list[dict]:
    counts = Counter(lines)
    verse = [i for i, line in enumerate(lines) if is_verse(line) and counts[line] == 1]
    targets = [i for i in verse if i >= CONTEXT_LINES and lines[i - 1]]  # a line that continues the text
    rng = random.Random(SEED)
    questions = []
    for i in sorted(rng.sample(targets, QUESTIONS)):
        target = lines[i]
        far = [j for j in verse if abs(j - i) >= MIN_DISTANCE]
        alike = [j for j in far if 0.7 <= len(lines[j]) / len(target) <= 1.3]  # similar length: less length bias
        distractors = [lines[j] for j in rng.sample(alike if len(alike) >= 3 else far, 3)]
        choices = [target, *distractors]
        rng.shuffle(choices)
        questions.append(
            {
                "context": "\n".join(lines[i - CONTEXT_LINES : i]).lstrip("\n") + "\n",
                "choices": choices,
                "label": choices.index(target),
                "line": first_line + i,  # of the true next line in assets/tinyshakespeare.txt, 1-based
            }
        )
    return questions


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows))


def build() -> dict[str, list[dict]]:
    first_line, lines = corpus_slice(CORPUS.read_text())
    return {
        "tinyshakespeare_passages.jsonl": passages(lines),
        "tinyshakespeare_nextline.jsonl": nextline_questions(lines, first_line),
    }


if __name__ == "__main__":
    for name, rows in build().items():
        write_jsonl(HERE / name, rows)
        print(f"wrote {HERE / name}: {len(rows)} rows, {(HERE / name).stat().st_size:,} bytes")
