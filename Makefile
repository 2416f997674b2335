# Developer entry points. VENV can be overridden: `make test VENV=.ci-venv`.
VENV ?= .venv
PYTHON ?= python3
# What the venv holds: the dev tools (tests, linters, notebooks, the plot, tensorboard and stateful extras), or only
# what the demos need (kerasish and scikit-learn: a third of the packages, though torch, the bulk of the time, is in
# both). The dev set includes the demo's, so in a dev venv the dev stamp stands for both, and `make demo` installs
# nothing more.
DEV_STAMP := $(VENV)/.installed
DEMO_STAMP := $(if $(wildcard $(DEV_STAMP)),$(DEV_STAMP),$(VENV)/.installed-demo)
LINT_PATHS := kerasish tests examples benchmarks notebooks

.PHONY: venv demo demo-ddp test lint bench clean

venv: $(DEV_STAMP)

# Reinstall only when the dependency declarations change; otherwise re-runs are instant.
$(DEV_STAMP): setup.cfg pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -c constraints.txt -e ".[dev]"
	touch $@ $(VENV)/.installed-demo

$(VENV)/.installed-demo: setup.cfg pyproject.toml constraints.txt
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install -c constraints.txt -e ".[demo]"
	touch $@

demo: $(DEMO_STAMP)
	$(VENV)/bin/python examples/digits_mlp.py

# The same demo data-parallel, on 2 processes of this machine (resumes from runs/digits_ddp/ when run again).
demo-ddp: $(DEMO_STAMP)
	$(VENV)/bin/torchrun --standalone --nproc_per_node=2 examples/digits_ddp.py

test: $(DEV_STAMP)
	$(VENV)/bin/python -m pytest

# The speed benchmark against a hand-written loop (about 10 minutes; see benchmarks/README.md).
bench: $(DEV_STAMP)
	$(VENV)/bin/python benchmarks/run.py

lint: $(DEV_STAMP)
	$(VENV)/bin/ruff check $(LINT_PATHS)
	$(VENV)/bin/ruff format --check $(LINT_PATHS)

# Build byproducts and caches only; the venvs stay (delete them by hand to force a reinstall).
clean:
	rm -rf build dist *.egg-info .pytest_cache .ruff_cache
	find . \( -path ./$(VENV) -o -path ./.venv -o -path ./.ci-venv -o -path ./.git \) -prune \
		-o -name __pycache__ -type d -exec rm -rf {} +
