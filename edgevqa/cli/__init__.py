"""The command line, one module per command group (see main.py)."""

from edgevqa.cli.main import app, main  # noqa: F401 (the entry point: edgevqa = "edgevqa.cli:main")
