# Two entry points that set everything up on a fresh machine: `make serve`, `make test`.
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: serve test test-lowest lint bench clean

$(STAMP): pyproject.toml
	$(PY) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	touch $(STAMP)

serve: $(STAMP)
	$(BIN)/taskhub serve

lint: $(STAMP)
	$(BIN)/ruff check src tests benchmarks examples
	$(BIN)/ruff format --check src tests benchmarks examples
	$(BIN)/mypy
	$(BIN)/lint-imports

# src/ compiled once first: with PYTHONDONTWRITEBYTECODE set, every hub and CLI process the
# tests start would compile the package afresh. pytest on two workers, a file each at a time:
# much of the suite waits (leases, timers, processes starting) with a core idle
# (docs/decisions.md, "The suite's time").
test: lint
	bash scripts/ensure-redis.sh
	bash scripts/ensure-netlab.sh
	bash scripts/ensure-chromium.sh
	bash scripts/ensure-haproxy.sh
	$(BIN)/python -m compileall -q src
	$(BIN)/pytest -q -n 2 --dist loadfile --cov --cov-report=term
	bash scripts/ensure-node.sh
	cd clients/js && npm ci --no-audit --no-fund && npm test
	bash scripts/test-lowest.sh

# The dependency floors of pyproject.toml, checked: a part of the suite at the lowest versions.
test-lowest: $(STAMP)
	bash scripts/ensure-redis.sh
	bash scripts/test-lowest.sh

bench: $(STAMP)
	$(BIN)/python benchmarks/run.py

clean:
	rm -rf $(VENV) .venv-lowest .pytest_cache .mypy_cache .ruff_cache .coverage .coverage.*
