# Two commands for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: install lint test test-fast demo bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install reconcile with its test tools

lint: install  ## ruff and mypy --strict
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/mypy

test: lint  ## lint, then the whole test suite
	$(BIN)/pytest -q

test-fast: install  ## the suite without lint
	$(BIN)/pytest -q -x

demo: install  ## reconcile the example catalog against a local sandbox
	@$(BIN)/python bench/demo.py

bench: install  ## benchmarks; appends to bench/RESULTS.md
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache
