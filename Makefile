# Two entry points for a fresh machine: `make demo` and `make test`. Each creates .venv in the
# checkout when missing. torch is installed first and pinned (2.13.0): an unpinned torch, or
# one pulled in by another package, would bring several GB of CUDA wheels. Where the CPU build is
# not found by plain pip, pass its index: make demo PIP_TORCH_ARGS="--index-url <cpu wheel index>".
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
TORCH ?= torch==2.13.0
PIP_TORCH_ARGS ?=
STAMP := $(VENV)/.edgevqa-installed
WORKDIR ?= work/demo

.PHONY: setup demo test lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)" $(PIP_TORCH_ARGS)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[train,export,bench,dev]"
	$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v} != 2.13.0')"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgevqa demo --workdir $(WORKDIR)

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check edgevqa tests benchmarks

clean:
	rm -rf $(VENV) work
