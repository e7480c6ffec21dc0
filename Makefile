# The two commands a newcomer needs: `make demo` and `make test`. Both set themselves up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_STAMP := $(VENV)/.installed-demo

.PHONY: install install-demo demo test lint typecheck pytest bench clean schemas

# The full toolchain (linters, type checker, test tools): what `make test` needs.
install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP) $(DEMO_STAMP)

# Only what the demo runs: the package and the embedded emulator (moto). A venv set up for `make test` has both.
install-demo: $(DEMO_STAMP)

$(DEMO_STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet -e '.[demo]'
	touch $(DEMO_STAMP)

demo: install-demo
	$(BIN)/fleetwarden demo --output-dir demo-output

# The published JSON schemas of the commands' --json outputs (docs/schemas), from fleetwarden.outputs.
schemas: install
	$(BIN)/python -m fleetwarden.outputs docs/schemas

lint: install
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: install
	$(BIN)/mypy

pytest: install
	$(BIN)/pytest -n 2 -q

test: lint typecheck pytest

# Cloud Custodian pins exact boto3/botocore versions, so it gets its own venv instead of changing .venv's.
C7N_VENV := bench/.venv-c7n

$(C7N_VENV)/.installed:
	test -x $(C7N_VENV)/bin/python || $(PYTHON) -m venv $(C7N_VENV)
	$(C7N_VENV)/bin/python -m pip install --quiet 'c7n>=0.9.40,<1' 'c7n-org>=0.6.39,<1'
	touch $@

bench: install $(C7N_VENV)/.installed
	$(BIN)/python bench/bench_audit.py
	$(BIN)/python bench/bench_guard.py
	$(BIN)/python bench/bench_guard_org.py

clean:
	rm -rf $(VENV) $(C7N_VENV) demo-output .pytest_cache .mypy_cache .ruff_cache
