# The two commands a fresh machine needs: `make sample` and `make test`.
PYTHON ?= python3
PIP := $(PYTHON) -m pip install --quiet --disable-pip-version-check

.PHONY: sample test install install-dev servers lint bench

install:
	$(PIP) -e .

install-dev:
	$(PIP) -e ".[dev,redis,nats]"

# Runs the orders sample on the in-memory backend: no servers needed.
sample: install
	$(PYTHON) -m samples.orders

# Broker binaries for the tests' own servers (fixtures start them on free ports).
servers:
	@command -v redis-server >/dev/null && command -v nats-server >/dev/null || \
	  { apt-get update -qq && apt-get install -y -qq redis-server nats-server; }

lint: install-dev
	$(PYTHON) -m ruff check .
	$(PYTHON) -m ruff format --check catga
	$(PYTHON) -m mypy

# Lint, types, then the whole suite under coverage (fails below 90% of catga/).
test: install-dev servers lint
	$(PYTHON) -m coverage erase
	$(PYTHON) -m coverage run -m pytest
	$(PYTHON) -m coverage report

bench: install-dev
	$(PYTHON) -m pip install --quiet -e ".[bench]"
	$(PYTHON) -m bench
