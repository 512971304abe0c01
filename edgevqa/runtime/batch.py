"""Answer a JSON-lines file of questions, appending each answer as it comes; resumable.

Input, one JSON object per line (blank lines are skipped)::

    {"image": "scans/ct1.dcm", "question": "what modality is this?", "id": "q1"}

``image`` is a path (PNG, JPEG, DICOM, ...), relative paths taken from the questions file's folder;
``id`` is optional (a string or an integer). Output, one JSON object per question, in input order::

    {"line": 1, "id": "q1", "image": "scans/ct1.dcm", "question": "...", "answer": "ct",
     "token_ids": [...], "image_cached": false, "timings_ms": {...}}
    {"line": 2, "error": "line 2: not JSON (Expecting value: line 1 column 1 (char 0))"}

A bad line (not JSON, no image, empty question, an image that cannot be read, a repeated id)
becomes an error record and the rest go on. Each record is one ``write`` of a whole line followed
by a flush, so a killed process loses no answer already written; ``fsync`` runs every
``sync_every`` records and at the end, bounding what a power cut can take.

Re-running with the same output resumes: questions already answered are skipped, keyed by ``id``,
or by line number when a line has none (so keep the questions file unchanged, or give ids). Error
records are retried and a new record appended: the last record for a key is the one that counts.
A torn last line (a kill in the middle of a write) is cut off before appending.

Consecutive questions about the same image reuse its decoded pixels, and the pipeline's cache its
encoding (``image_cached: true``).

Example:
    >>> pipe = VQAPipeline.from_bundle("bundle")                            # doctest: +SKIP
    >>> run_batch("questions.jsonl", "answers.jsonl", pipe.ask)             # doctest: +SKIP
    BatchSummary(total=3, answered=3, skipped=0, errors=0)
"""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from edgevqa.errors import EdgeVQAError, InputError
from edgevqa.runtime.images import load_image
from edgevqa.runtime.tokenizer import is_text

log = logging.getLogger("edgevqa.batch")


@dataclass(frozen=True)
class Question:
    line: int  # 1-based line number in the questions file
    id: str | int | None
    image: str  # as written in the file
    question: str
    error: str | None = None  # set for a line that cannot be asked

    @property
    def key(self) -> str:
        return record_key(self.id, self.line)


@dataclass(frozen=True)
class BatchSummary:
    total: int  # questions in the file (bad lines included)
    answered: int  # answered in this run
    skipped: int  # already answered by an earlier run
    errors: int  # error records written in this run


def record_key(id_: Any, line: int) -> str:
    """What identifies a question across runs: its id, or its line number when it has none."""
    return f"id:{json.dumps(id_)}" if id_ is not None else f"line:{line}"


# ---------------------------------------------------------------------------------------------


def read_questions(path: str | Path) -> list[Question]:
    """Parse the questions file; a bad line becomes a Question with ``error`` set.

    Raises:
        InputError: the file is missing or not UTF-8 text.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"questions file not found: {path}")
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        raise InputError(f"{path} is not UTF-8 text (expected one JSON object per line)") from None
    out: list[Question] = []
    first_line: dict[str, int] = {}
    for n, text in enumerate(lines, start=1):
        if not text.strip():
            continue
        q = parse_line(text, n)
        if q.error is None and q.id is not None:
            if q.key in first_line:
                q = Question(
                    n, None, q.image, q.question, f"line {n}: id {q.id!r} repeats line {first_line[q.key]}"
                )
            else:
                first_line[q.key] = n
        out.append(q)
    return out


def parse_line(text: str, n: int) -> Question:
    """One line of the questions file -> a Question (with ``error`` when it cannot be asked)."""
    try:
        row = json.loads(text)
    except json.JSONDecodeError as e:
        return Question(n, None, "", "", f"line {n}: not JSON ({e.msg} at column {e.colno})")
    if not isinstance(row, dict):
        return Question(n, None, "", "", f"line {n}: expected a JSON object, got {type(row).__name__}")
    id_ = row.get("id")
    if id_ is not None and (isinstance(id_, bool) or not isinstance(id_, str | int)):
        return Question(n, None, "", "", f"line {n}: id must be a string or an integer")
    image, question = row.get("image"), row.get("question")
    error = None
    if not all(is_text(v) for v in (id_, image, question) if isinstance(v, str)):
        return Question(n, None, "", "", f"line {n}: not valid text (an unpaired UTF-16 surrogate)")
    if not isinstance(image, str) or not image.strip():
        error = f'line {n}: no image path ("image": "path/to/image.png")'
    elif not isinstance(question, str) or not question.strip():
        error = f"line {n}: the question is empty"
    return Question(n, id_, image if isinstance(image, str) else "", question or "", error)


def repair_tail(out: str | Path) -> int:
    """Cut a torn last line (no newline: a write that a kill interrupted) off ``out``.

    Returns:
        The number of bytes removed (0 when the file ends cleanly or does not exist).
    """
    out = Path(out)
    if not out.exists():
        return 0
    with open(out, "rb") as f:
        data = f.read()
    if not data or data.endswith(b"\n"):
        return 0
    keep = data.rfind(b"\n") + 1
    os.truncate(out, keep)
    return len(data) - keep


def answered_keys(out: str | Path) -> set[str]:
    """Keys of the questions ``out`` already holds answers for (error records do not count)."""
    out = Path(out)
    done: set[str] = set()
    if not out.exists():
        return done
    with open(out, encoding="utf-8", errors="replace") as f:
        for text in f:
            try:
                rec = json.loads(text)
            except json.JSONDecodeError:
                continue  # a damaged line: its question is asked again
            if isinstance(rec, dict) and "answer" in rec and isinstance(rec.get("line"), int):
                done.add(record_key(rec.get("id"), rec["line"]))
    return done


# ---------------------------------------------------------------------------------------------


def run_batch(
    questions: str | Path,
    out: str | Path,
    answer: Callable[[Image.Image, str], Any],
    load: Callable[[str], Image.Image] = load_image,
    progress: bool = True,
    sync_every: int = 32,
) -> BatchSummary:
    """Answer every question of ``questions`` not yet answered in ``out``, appending to ``out``.

    Args:
        questions: the JSON-lines questions file.
        out: the JSON-lines answers file (created, or resumed when it exists).
        answer: ``(image, question) -> Answer``, e.g. ``VQAPipeline.ask`` or a ``rank`` partial.
        load: ``path -> PIL image`` (default :func:`load_image`; pass DICOM options with a partial).
        progress: show a tqdm progress bar on stderr.
        sync_every: fsync the output after this many records (and always at the end).

    Raises:
        InputError: the questions file is missing or unreadable.
    """
    from tqdm import tqdm

    questions, out = Path(questions), Path(out)
    items = read_questions(questions)
    if (cut := repair_tail(out)) > 0:
        log.warning("%s: removed a torn last line (%d bytes) left by an interrupted run", out, cut)
    done = answered_keys(out)
    todo = [q for q in items if q.key not in done]
    out.parent.mkdir(parents=True, exist_ok=True)
    answered = errors = 0
    images = _LastImage(questions.parent, load)
    with open(out, "a", encoding="utf-8") as f, tqdm(todo, unit="q", disable=not progress or None) as bar:
        for i, q in enumerate(bar, start=1):
            rec = _answer_one(q, images, answer)
            if "error" in rec:
                errors += 1
                log.warning("%s", rec["error"])
            else:
                answered += 1
            f.write(json.dumps(rec, ensure_ascii=False) + "\n")
            f.flush()
            if i % max(sync_every, 1) == 0:
                os.fsync(f.fileno())
        f.flush()
        os.fsync(f.fileno())
    return BatchSummary(len(items), answered, len(items) - len(todo), errors)


def _answer_one(q: Question, images: _LastImage, answer: Callable[[Image.Image, str], Any]) -> dict:
    head: dict[str, Any] = {"line": q.line} | ({"id": q.id} if q.id is not None else {})
    if q.error is not None:
        return head | {"error": q.error}
    head |= {"image": q.image, "question": q.question}
    try:
        ans = answer(images.get(q.image), q.question)
    except EdgeVQAError as e:
        return head | {"error": f"line {q.line}: {e}"}
    return head | ans.to_json()


class _LastImage:
    """The most recently loaded image (or its error), so consecutive questions read it once."""

    def __init__(self, root: Path, load: Callable[[str], Image.Image]):
        self.root, self.load = root, load
        self.path: str | None = None
        self.value: Image.Image | EdgeVQAError | None = None

    def get(self, image: str) -> Image.Image:
        if image != self.path:
            path = Path(image) if Path(image).is_absolute() else self.root / image
            try:
                self.value = self.load(str(path))
            except EdgeVQAError as e:
                self.value = e
            self.path = image
        if isinstance(self.value, EdgeVQAError):
            raise self.value
        assert self.value is not None
        return self.value
