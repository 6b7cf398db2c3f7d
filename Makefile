# Sekisho — the handful of verbs. `make run` and `make test` are the two set-up commands.
PYTHON ?= python3
VENV   ?= .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: run test bench lint fmt clean compile

$(STAMP): pyproject.toml assets/package-lock.json
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	scripts/assets  # the admin console's JS/CSS from npm (lockfile), served by Sekisho
	touch $(STAMP)

# The hot modules compiled to C (mypyc; the list is in src/sekisho/_build.py), rebuilt when one
# of their sources changed; without a C compiler they run as Python (scripts/compile says so).
compile: $(STAMP)
	$(BIN)/python scripts/compile

run: compile  ## start the gateway on the embedded demo (SQLite, demo routes and users)
	scripts/assets
	$(BIN)/sekisho serve --demo

test: $(STAMP)  ## run the whole test suite
	VENV=$(VENV) scripts/test-deps
	scripts/assets
	$(BIN)/python scripts/compile
	$(BIN)/python -m pytest

bench: compile  ## benchmarks: proxy vs nginx/Caddy (wrk), PDP vs cedarpy, mTLS, audit append
	VENV=$(VENV) scripts/bench-deps
	$(BIN)/python bench/run.py

lint: $(STAMP)
	$(BIN)/ruff check src tests bench
	$(BIN)/mypy

fmt: $(STAMP)
	$(BIN)/ruff format src tests bench

clean:
	-$(PYTHON) scripts/compile --clean
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
