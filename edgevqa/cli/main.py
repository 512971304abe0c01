"""edgevqa command line. Each command: flags -> config dataclass -> lazy import -> call.

Heavy modules (torch, transformers, onnxruntime) are imported inside the commands, so
``edgevqa --help`` answers at once. A user error (EdgeVQAError) ends as one line on stderr and
a non-zero exit; ``--debug`` shows the traceback. Commands live one group per module beside this
one; importing them registers them on the app.
"""

from __future__ import annotations

import errno
import importlib
import os
import sys
import warnings

import typer

from edgevqa.cli.base import app, setup_logging
from edgevqa.errors import EdgeVQAError

USER_ERRNOS = {errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM}

# importing a command module registers its commands; `edgevqa --help` lists them in this order
for _group in ("train", "compose", "export", "ask", "serve", "bench", "evaluate", "demo", "sign", "data"):
    importlib.import_module(f"edgevqa.cli.{_group}")


def main(argv: list[str] | None = None) -> None:
    """Entry point: runs the app and turns EdgeVQAError into one line and an exit code."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    argv = [a for a in argv if a != "--debug"]
    setup_logging()
    if not debug:  # libraries' Python warnings are not the user's to act on (--debug shows them)
        warnings.simplefilter("ignore")
    if not sys.stderr.isatty():  # edgevqa's own bars follow stderr too (tqdm's disable=None)
        os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")  # and transformers' with it
    try:
        app(args=argv, prog_name="edgevqa", standalone_mode=False)
    except EdgeVQAError as e:
        if debug:
            raise
        typer.echo(f"error: {e}", err=True)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        typer.echo("interrupted", err=True)
        sys.exit(130)
    except OSError as e:
        # what the machine refuses (full disk, read-only or forbidden folder) is the user's to fix
        if debug or e.errno not in USER_ERRNOS:
            raise
        where = f": {e.filename}" if e.filename else ""
        typer.echo(f"error: {e.strerror or e}{where}", err=True)
        sys.exit(2)
    except MemoryError:
        if debug:
            raise
        typer.echo("error: out of memory (try a smaller model, batch or --limit)", err=True)
        sys.exit(2)
    except Exception as e:
        # typer vendors click (typer._click): recognise its usage errors by shape, not by import
        if hasattr(e, "format_message") and hasattr(e, "exit_code"):
            typer.echo(f"error: {e.format_message()}", err=True)
            sys.exit(e.exit_code)
        if type(e).__name__ == "Exit":
            sys.exit(getattr(e, "exit_code", 0))
        if type(e).__name__ == "Abort":
            sys.exit(1)
        raise
