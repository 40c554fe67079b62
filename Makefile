# The two commands a new user runs: `make demo` and `make test`. Everything they need is set up here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := .make

.PHONY: test lint typecheck unit bench clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

$(STAMP)/python-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	@mkdir -p $(STAMP) && touch $@

test: lint typecheck unit

lint: $(STAMP)/python-deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)/python-deps
	$(BIN)/mypy src

unit: $(STAMP)/python-deps
	$(BIN)/pytest

bench: $(STAMP)/python-deps
	$(BIN)/python -m bench

clean:
	rm -rf $(VENV) $(STAMP) .mypy_cache .ruff_cache .pytest_cache .hypothesis
