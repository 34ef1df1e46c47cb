# Two commands do all set-up on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: run test lint typecheck demo openapi docs bench bench-quick clean

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

run: $(STAMP)
	$(BIN)/harmony up

lint: $(STAMP)
	$(BIN)/ruff check src tests migrations bench
	$(BIN)/ruff format --check src tests migrations bench

typecheck: $(STAMP)
	$(BIN)/mypy

test: lint typecheck
	$(BIN)/pytest

demo: $(STAMP)
	$(BIN)/harmony demo --count 200

# The benchmark needs PostgreSQL (BENCH_ARGS='--database DSN' to point elsewhere); it installs
# wrk from Debian itself when it is missing and it runs as root, else says how.
$(VENV)/.installed-bench: $(STAMP)
	$(BIN)/python -m pip install --quiet -e '.[dev,bench]'
	touch $@

bench: $(VENV)/.installed-bench
	$(BIN)/harmony bench $(BENCH_ARGS)

bench-quick: $(VENV)/.installed-bench
	$(BIN)/harmony bench --quick $(BENCH_ARGS)

openapi: $(STAMP)
	$(BIN)/harmony openapi -o openapi/openapi.json

docs: $(STAMP)
	$(BIN)/harmony lifecycle -o docs/lifecycle.md

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache
