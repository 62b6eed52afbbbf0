# The two commands: `make run` (API + dispatcher on an embedded PostgreSQL) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check lint unit integration bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

## Start the whole service: API and one dispatcher in one process. This is local use, so
## webhooks to this machine are allowed unless TIMERHOOK_ALLOW_PRIVATE_TARGETS=0 is given;
## `timerhook serve` itself (and the Docker image) refuses them by default.
run: export TIMERHOOK_ALLOW_PRIVATE_TARGETS ?= 1
run: $(STAMP)
	$(BIN)/timerhook serve

## Every check: lint, types, import contracts, then the whole test suite.
test: lint
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/lint-imports

unit: $(STAMP)
	$(BIN)/python -m pytest -q tests/unit

bench: $(STAMP)
	$(BIN)/python -m bench.all

clean:
	rm -rf $(VENV) .timerhook .pytest_cache .mypy_cache .ruff_cache
