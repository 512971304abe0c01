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
FAMILY ?= blip-vqa
# one folder per family: a demo continues what its folder holds
WORKDIR ?= work/demo$(if $(filter-out blip-vqa,$(FAMILY)),-$(FAMILY))

.PHONY: setup demo test lint clean chromium

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --disable-pip-version-check "$(TORCH)" $(PIP_TORCH_ARGS)
	$(BIN)/python -m pip install -q --disable-pip-version-check -e ".[train,export,bench,dev]"
	$(BIN)/python -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v} != 2.13.0')"
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/edgevqa demo --workdir $(WORKDIR) --family $(FAMILY)

# The page test drives Debian's chromium through playwright (a dev extra; no `playwright install`).
# When it is missing and apt-get is there (as root, or with passwordless sudo), install it quietly;
# otherwise that one test skips and says why.
chromium:
	@test -x /usr/bin/chromium || ! command -v apt-get >/dev/null 2>&1 || { \
	  S=$$([ "$$(id -u)" = 0 ] || echo "sudo -n"); \
	  $$S env DEBIAN_FRONTEND=noninteractive apt-get update -qq >/dev/null && \
	  $$S env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends chromium >/dev/null; \
	} || echo "chromium could not be installed: the browser test will be skipped"

# Test files spread over worker processes (pytest-xdist; a file stays in one worker, so its
# fixtures are built once there): on 2 cores the suite took 437 s instead of 626-792 s in one
# process (AMD EPYC Zen 3). `pytest` alone still runs everything in one process.
test: $(STAMP) chromium
	$(BIN)/python -m pytest -q -n auto --maxprocesses 4 --dist loadfile

lint: $(STAMP)
	$(BIN)/ruff check edgevqa tests benchmarks

clean:
	rm -rf $(VENV) work
