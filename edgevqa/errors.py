"""Errors a user can cause. The CLI turns each into one line on stderr and a non-zero exit.

Everything else (a bug) keeps its traceback, shown with ``--debug``.
"""

from __future__ import annotations


class EdgeVQAError(Exception):
    """Base class: a problem the user can fix. ``exit_code`` is what the CLI exits with."""

    exit_code = 2


class InputError(EdgeVQAError):
    """A bad image, question, path or flag."""


class BundleError(EdgeVQAError):
    """A bundle that is missing, incomplete, tampered with or of another schema/family."""


class MissingDependencyError(EdgeVQAError):
    """An optional dependency (an extra) is not installed."""


class ValidationError(EdgeVQAError):
    """An export whose graphs do not reproduce PyTorch closely enough (the fidelity gate)."""

    exit_code = 3


def first_line(e: BaseException) -> str:
    """A library exception as the tail of one user-facing line: its first line, or its type."""
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__
