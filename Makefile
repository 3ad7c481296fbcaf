# Two commands do everything on a fresh machine (no database, no Docker needed):
#   make demo   - the food-order demo on the embedded PostgreSQL
#   make test   - the whole test suite on the embedded PostgreSQL
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
PG15_DSN ?= postgresql://postgres@127.0.0.1:5432/test

.PHONY: demo test test-pg lint install clean faults

$(BIN)/orchestrator: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

install: $(BIN)/orchestrator

demo: install
	$(BIN)/orchestrator demo

test: install
	$(BIN)/pytest

# The integration tests against another server (CI: the machine's PostgreSQL 15).
test-pg: install
	ORCHESTRATOR_TEST_DSN=$(PG15_DSN) $(BIN)/pytest tests/integration

lint: install
	$(BIN)/ruff check orchestrator handlers migrations tests bench
	$(BIN)/mypy

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache *.egg-info

# Fault injection under load (issue figures in the README's reliability section).
faults: install
	$(BIN)/python -m bench.faults
