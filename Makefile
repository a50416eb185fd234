# cosmos_jax: `make test` and `make demo` create .venv when missing and install what they need.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# Tests and CI use a CPU build of torch (only for checkpoint conversion and test references). Elsewhere, e.g.:
#   make test TORCH_SPEC="torch --index-url https://download.pytorch.org/whl/cpu"
TORCH_SPEC ?= torch==2.13.0
PYTEST_ARGS ?=
# pytest-xdist workers: the suite is mostly XLA compiles, one core each (2-core machine, 2026-12-07: tests/test_offload.py
# 175 s with 2 workers, 240 s with one; the whole suite 1074 s with 2)
PYTEST_WORKERS ?= 2

.PHONY: test demo install clean-venv

$(VENV)/.installed: pyproject.toml Makefile
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q $(TORCH_SPEC)
	$(PY) -m pip install -q -e ".[convert,dev]"
	touch $@

install: $(VENV)/.installed

test: $(VENV)/.installed
	$(VENV)/bin/ruff check .
	$(PY) -m pytest -q -n $(PYTEST_WORKERS) $(PYTEST_ARGS)

demo: $(VENV)/.installed
	$(PY) scripts/demo.py

clean-venv:
	rm -rf $(VENV)
