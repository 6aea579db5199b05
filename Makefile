# Two commands for a fresh clone: `make demo` and `make test`.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The program alone, as a user installs it (`pip install .`): what `make demo` needs. STAMP
# makes it editable and adds the test and lint tools (`make install`, `make test`).
RUNTIME := $(VENV)/.runtime-stamp

.PHONY: install lint test test-fast test-glance demo bench clean

$(RUNTIME): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet .
	touch $(RUNTIME)

$(STAMP): $(RUNTIME)
	$(BIN)/python -m pip install --quiet -e '.[test]'
	touch $(STAMP)

install: $(STAMP)  ## create .venv and install reconcile with its test tools

# mypy --strict over the package, then the tests and benchmarks (tests/glance on its own: it
# has a conftest.py of its own); lint-imports checks the layers of docs/architecture.md §2.
lint: install  ## ruff, mypy --strict (package, tests, bench), the layer contract
	$(BIN)/ruff check reconciler tests bench
	$(BIN)/mypy
	$(BIN)/mypy tests/*.py bench
	$(BIN)/mypy tests/glance
	$(BIN)/lint-imports --no-logo

# The suite runs under coverage.py; the apply package's branch coverage is printed and must
# stay at 95 % or more (the protocol's every branch is produced on purpose, tests/test_protocol.py).
test: lint  ## lint, then the whole test suite with the apply package's branch coverage
	$(BIN)/coverage erase
	$(BIN)/coverage run -m pytest -q
	$(BIN)/coverage report --include='reconciler/apply/*'

test-fast: install  ## the suite without lint
	$(BIN)/pytest -q -x

# Integration suite against a real OpenStack Glance from PyPI (tests/glance). Builds or reuses
# .glance-venv/ (about a minute the first time), then starts Glance on loopback per test.
# RECONCILE_SKIP_GLANCE=1 is the only way to skip it.
test-glance: install  ## reconcile against a real OpenStack Glance (slow)
	@if [ "$$RECONCILE_SKIP_GLANCE" = 1 ]; then \
	  echo "RECONCILE_SKIP_GLANCE=1: the Glance integration suite was NOT run"; exit 0; fi; \
	$(BIN)/python tests/glance/glance_server.py --setup && \
	$(BIN)/pytest -m glance tests/glance -q

# The demo: a sandbox on a free loopback port, plan, apply, plan again (no changes left),
# with a temporary state file; the apply report is written to demo-report.html.
demo: $(RUNTIME)  ## reconcile the example catalog against a local sandbox (installs no test tools)
	@set -e; tmp=$$(mktemp -d); \
	$(BIN)/reconcile sandbox --port 0 > $$tmp/sandbox.out 2>&1 & spid=$$!; \
	trap 'kill $$spid 2>/dev/null; rm -rf $$tmp' EXIT; \
	for i in $$(seq 100); do grep -q '^listening on' $$tmp/sandbox.out && break; sleep 0.1; done; \
	url=$$(sed -n 's/^listening on //p' $$tmp/sandbox.out); \
	test -n "$$url" || { cat $$tmp/sandbox.out; echo "sandbox did not start"; exit 1; }; \
	export RECONCILE_ENDPOINT=$$url RECONCILE_STATE=$$tmp/state.db OS_AUTH_TOKEN=demo-token; \
	echo "== sandbox listening on $$url"; \
	echo "== reconcile plan"; $(BIN)/reconcile plan; \
	echo; echo "== reconcile apply --yes"; \
	$(BIN)/reconcile apply --yes --format html --output demo-report.html; \
	$(BIN)/reconcile state list; \
	echo; echo "== reconcile plan (again: nothing left to do)"; \
	$(BIN)/reconcile plan --detailed-exitcode; \
	echo; echo "== reconcile history"; $(BIN)/reconcile history; \
	echo; echo "demo done: open demo-report.html for the apply report"

bench: install  ## benchmarks; appends to bench/RESULTS.md
	$(BIN)/python bench/run.py

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .mypy_cache .ruff_cache \
	  .import_linter_cache
