# One command runs the main job (make demo); one command passes the tests (make test).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
BYPASS := $(VENV)/bin/bypass

.PHONY: venv test test-fast check lint typecheck fmt stack-up stack-down stack-status demo bench chaos clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev]'
	touch $@

venv: $(VENV)/.installed

test: $(VENV)/.installed
	$(PY) -m pytest -q

test-fast: $(VENV)/.installed  # for your own loop: skips the tests marked slow (CI runs them all)
	$(PY) -m pytest -q -m "not slow"

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check .

fmt: $(VENV)/.installed
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

typecheck: $(VENV)/.installed
	$(VENV)/bin/mypy

check: lint typecheck test

stack-up: $(VENV)/.installed
	$(BYPASS) stack up

stack-down: $(VENV)/.installed
	$(BYPASS) stack down

stack-status: $(VENV)/.installed
	$(BYPASS) stack status

demo: $(VENV)/.installed
	$(PY) -m streams.local.demo $(if $(KEEP),--keep,)

# bench_pipeline's Quix Streams baseline runs in its own venv (quixstreams pins older
# confluent-kafka and pydantic than the dev tools); without it the Quix rows are left out
.venv-bench/.installed:
	test -x .venv-bench/bin/python || $(PYTHON) -m venv .venv-bench
	.venv-bench/bin/pip install -q 'quixstreams>=3.28' && touch $@ \
	  || echo "quixstreams could not be installed: bench_pipeline leaves the Quix rows out"

bench: $(VENV)/.installed .venv-bench/.installed
	$(PY) bench/run.py; status=$$?; $(PY) bench/scale_model.py; exit $$status

chaos: $(VENV)/.installed  # >= 5 min: 50k events + bad input + faults, compared with the offline run (bench/chaos.py)
	$(PY) bench/chaos.py $(if $(QUICK),--quick,)

clean:
	rm -rf $(VENV) .venv-bench .bypass .pytest_cache .mypy_cache .ruff_cache
