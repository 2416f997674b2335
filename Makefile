# Developer entry points. VENV can be overridden: `make test VENV=.ci-venv`.
VENV ?= .venv
PYTHON ?= python3
STAMP := $(VENV)/.installed
LINT_PATHS := kerasish tests examples benchmarks notebooks

.PHONY: venv demo demo-ddp test lint bench clean

venv: $(STAMP)

# Reinstall only when the dependency declarations change; otherwise re-runs are instant.
$(STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -c constraints.txt -e ".[dev]"
	touch $@

demo: $(STAMP)
	$(VENV)/bin/python examples/digits_mlp.py

# The same demo data-parallel, on 2 processes of this machine (resumes from runs/digits_ddp/ when run again).
demo-ddp: $(STAMP)
	$(VENV)/bin/torchrun --standalone --nproc_per_node=2 examples/digits_ddp.py

test: $(STAMP)
	$(VENV)/bin/python -m pytest

# The speed benchmark against a hand-written loop (about 10 minutes; see benchmarks/README.md).
bench: $(STAMP)
	$(VENV)/bin/python benchmarks/run.py

lint: $(STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

# Build byproducts and caches only; the venvs stay (delete them by hand to force a reinstall).
clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . \( -path ./$(VENV) -o -path ./.venv -o -path ./.ci-venv -o -path ./.git \) -prune \
		-o -name __pycache__ -type d -exec rm -rf {} +
