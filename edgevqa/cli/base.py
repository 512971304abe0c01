"""The typer apps every command module registers on, and what the commands share."""

from __future__ import annotations

import logging
import sys

import typer

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Adapt a small VLM to radiology VQA and ship it as a verified, torch-free ONNX bundle.",
)


@app.callback()
def _options(
    debug: bool = typer.Option(
        False, "--debug", help="On an error, show the full traceback instead of one line (any command)."
    ),
) -> None:
    """(main() reads --debug wherever it stands and removes it before the app parses the rest; this
    declares it for --help.)"""


data_app = typer.Typer(
    no_args_is_help=True,
    help="Datasets: the synthetic default, public radiology sets, QA from captions, mixtures.",
)
app.add_typer(data_app, name="data")


def setup_logging(verbose: bool = True) -> None:
    """edgevqa's own progress at INFO on stderr; other libraries only from WARNING up."""
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    ours = logging.getLogger("edgevqa")
    ours.handlers[:] = [handler]
    ours.setLevel(logging.INFO if verbose else logging.WARNING)
    ours.propagate = False
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s", stream=sys.stderr)
    for noisy in ("torch", "transformers", "peft", "onnxscript", "onnx_ir", "httpx", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.ERROR)


def need(*modules: str) -> None:
    """Fail with the pip command to run when a torch-side extra is missing (torch-free installs)."""
    from edgevqa._deps import require

    for m in modules:
        require(m)


def precisions(values: list[str]) -> list[str]:
    return [p.strip() for v in values for p in v.split(",") if p.strip()]
