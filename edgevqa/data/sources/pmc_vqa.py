"""PMC-VQA (``xmcmic/PMC-VQA``): multiple-choice questions on PubMed Central figures, as CSV.

Files: ``train_2.csv``/``test_2.csv`` (version 2, preferred when present) or ``train.csv``/``test.csv``,
with the columns ``Figure_path``, ``Question``, ``Choice A`` .. ``Choice D``, ``Answer`` and
``Answer_label`` (older files spell them ``Anwser``/``Anwser_label``). Choices carry their letter
(``" A:CT scan "``), which is stripped. Images are in ``images/`` or ``figures/`` (or still inside
``images.zip``/``images_2.zip``).

The record's answer is the *text* of the correct choice (what the model must generate), so its
answer type is ``open``, its category ``multiple-choice``, and ``meta["choices"]`` holds the choices
(for scoring by ranking them, as ``edgevqa ask --rank`` does). There is no val split: the loader
carves one from train.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from edgevqa.data.records import VQARecord
from edgevqa.data.sources.common import ImageFiles, Item, LoadOptions, column, text
from edgevqa.errors import InputError
from edgevqa.eval.metrics import normalize_answer

CSVS = {
    2: (("train_2.csv", "train"), ("test_2.csv", "test")),
    1: (("train.csv", "train"), ("test.csv", "test")),
}
LETTERS = "ABCD"
_PREFIXED = re.compile(r"([A-D])\s*[:.)]\s*(.*)", re.DOTALL)


def _header(path: Path) -> list[str]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        return [c.strip() for c in next(csv.reader(f), [])]


def detect(root: Path) -> bool:
    files = [root / f for v in CSVS.values() for f, _ in v if (root / f).is_file()]
    return any(column(_header(p), "Figure_path") for p in files)


def read(root: Path, opts: LoadOptions) -> Iterator[Item]:
    version = 2 if any((root / f).is_file() for f, _ in CSVS[2]) else 1
    with ImageFiles(root, ["images", "figures"], ["images.zip", "images_2.zip"]) as images:
        if not images:
            raise InputError(f"PMC-VQA images not found: expected {root / 'images'} or {root / 'figures'}")
        for fname, split in CSVS[version]:
            if (root / fname).is_file():
                yield from _read_csv(root / fname, split, images)


@dataclass(frozen=True)
class _Columns:
    figure: str
    question: str
    answer: str | None
    label: str | None
    choices: tuple[str, ...]  # the "Choice A" .. "Choice D" column names


def _columns(path: Path, cols: list[str]) -> _Columns:
    c = _Columns(
        figure=column(cols, "Figure_path") or "",
        question=column(cols, "Question") or "",
        answer=column(cols, "Answer", "Anwser"),
        label=column(cols, "Answer_label", "Anwser_label"),
        choices=tuple(column(cols, f"Choice {x}") or "" for x in LETTERS),
    )
    if not (c.figure and c.question and (c.answer or c.label) and all(c.choices)):
        raise InputError(
            f"{path}: expected the PMC-VQA columns Figure_path, Question, Choice A-D, Answer "
            f"(or Anwser) and Answer_label; found {cols}"
        )
    return c


def _read_csv(path: Path, split: str, images: ImageFiles) -> Iterator[Item]:
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.DictReader(f)
        reader.fieldnames = [c.strip() for c in reader.fieldnames or []]
        cols = _columns(path, reader.fieldnames)
        try:
            for n, row in enumerate(reader, 1):
                yield _item(row, cols, split, path.name, n, images)
        except csv.Error as e:
            raise InputError(f"{path}:{reader.line_num}: not valid CSV ({e})") from None


def _choice(value: object, letter: str) -> str:
    """``" A:CT scan "`` -> ``"CT scan"`` (only its own letter is stripped)."""
    s = text(value)
    m = _PREFIXED.fullmatch(s)
    return m.group(2).strip() if m and m.group(1) == letter else s


def _answer(answer: str, label: str, choices: dict[str, str]) -> str:
    """The correct choice's text: by Answer_label, else from Answer ("B", "B:Focal uptake" or the text)."""
    if label:
        return choices[label]
    if m := _PREFIXED.fullmatch(answer):
        return m.group(2).strip() or choices.get(m.group(1), "")
    return choices.get(answer, answer)


def _item(row: dict, cols: _Columns, split: str, fname: str, n: int, images: ImageFiles) -> Item:
    choices = {x: _choice(row.get(c), x) for x, c in zip(LETTERS, cols.choices)}
    label = text(row.get(cols.label)).upper() if cols.label else ""
    if label and not choices.get(label):
        return Item(split, fname, n, problem=f"Answer_label {label!r} names no choice")
    answer = normalize_answer(_answer(text(row.get(cols.answer)) if cols.answer else "", label, choices))
    letter = label or next((x for x, t in choices.items() if normalize_answer(t) == answer), "")
    figure = text(row.get(cols.figure))
    rec = VQARecord(
        image="",
        question=text(row.get(cols.question)),
        answer=answer,
        answer_type="open",
        category="multiple-choice",
        id=f"pmc-vqa-{split}-{n}",
        meta={"choices": [t for t in choices.values() if t], "answer_label": letter, "figure_path": figure},
    )
    return Item(split, fname, n, rec, images.read(figure) if figure else None)
