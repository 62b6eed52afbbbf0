# The two commands: `make run` (API + dispatcher on an embedded PostgreSQL) and `make test`.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test check lint browser unit integration bench clean

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

## Every check: lint, types, import contracts, then the whole test suite, spread over
## TEST_WORKERS pytest-xdist workers, each on its own PostgreSQL (a template database per
## worker, copied for each test). Most tests mostly wait (ticks, sinks, real processes), so
## three workers fit 2 cores; the tests marked long (a host slower than a lease, a frozen
## database, the fault checker) are handed out first, side by side.
TEST_WORKERS ?= 3
test: lint browser
	@$(BIN)/python -m pytest -q --durations=15 -n $(TEST_WORKERS) --dist load --maxschedchunk 1

## The dashboard test drives Debian's chromium (headless, through Playwright): installed here
## when missing and this is root on Debian or Ubuntu; elsewhere, this says what to install.
browser:
	@if command -v chromium >/dev/null 2>&1 || command -v chromium-browser >/dev/null 2>&1 \
	    || [ -n "$$TIMERHOOK_TEST_CHROMIUM" ]; then exit 0; fi; \
	if [ "$$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then \
	    echo "installing Debian's chromium for the dashboard test (apt-get, about a minute)"; \
	    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
	        || echo "could not install chromium with apt-get: the dashboard test needs it"; \
	else \
	    echo "chromium is missing: install Debian's chromium package (apt-get install chromium)"; \
	    echo "or set TIMERHOOK_TEST_CHROMIUM to a Chromium binary; the dashboard test needs it."; \
	fi

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
