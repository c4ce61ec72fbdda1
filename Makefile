# Quick start: `make run` (set up, then run Jamono) and `make test` (set up, then test).
# The virtualenv is (re)installed only when pyproject.toml changed since the last install.

PYTHON ?= python3
# Test workers (pytest-xdist); the suite waits on subprocesses and sockets more than on the CPU.
TEST_WORKERS ?= 2
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test lint bench clean

run: $(STAMP)
	$(BIN)/jamono run

test: $(STAMP)
	$(BIN)/pytest -n $(TEST_WORKERS) $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .

bench: $(STAMP)
	$(BIN)/python bench/turn_overhead.py
	$(BIN)/python bench/turn_storage.py
	$(BIN)/python bench/cross_session.py
	$(BIN)/python bench/briefings.py
	$(BIN)/python bench/isolation.py

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

clean:
	rm -rf $(VENV) jamono.db jamono.db-wal jamono.db-shm .pytest_cache
