# The two commands a new user runs: `make demo` and `make test`. Everything they need is set up here.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := .make

.PHONY: demo test lint typecheck unit contracts contracts-check bench chaos clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# The tests also prove our Sign-In with Ethereum messages byte-identical to the reference `siwe`
# library's. siwe 4.4.0 declares web3 < 8 and eth-account < 0.14 and would pull the product back to
# them; it works with the versions the product uses, so it is installed without its dependencies
# (its others, pydantic and eth-utils, come with web3). abnf 2.2.0: siwe fails to import with later ones.
$(STAMP)/python-deps: pyproject.toml | $(BIN)/python
	$(BIN)/python -m pip install --quiet -e '.[test]'
	$(BIN)/python -m pip install --quiet --no-deps siwe==4.4.0 abnf==2.2.0
	@mkdir -p $(STAMP) && touch $@

# The browser tests (tests/browser) drive Debian's Chromium, headless, through Playwright, which
# downloads no browser of its own. As root it is installed here; otherwise the command is printed.
CHROMIUM ?= /usr/bin/chromium
$(CHROMIUM):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; \
	else \
		echo "the browser tests need Chromium: sudo apt-get update && sudo apt-get install -y chromium"; \
		exit 1; \
	fi

# Several orchestrators share their state through Redis (docs/operations.md): the demo with
# --instances N and the tests start their own redis-server. As root it is installed here.
REDIS_SERVER ?= /usr/bin/redis-server
$(REDIS_SERVER):
	@if [ "$$(id -u)" = 0 ]; then \
		apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq redis-server; \
	else \
		echo "krewe needs redis-server: sudo apt-get update && sudo apt-get install -y redis-server"; \
		exit 1; \
	fi

$(STAMP)/node-deps: package.json package-lock.json
	npm ci --no-audit --no-fund --loglevel=error
	@mkdir -p $(STAMP) && touch $@

# A whole local network: chain, contracts, orchestrator, miners, requests, a payout. ARGS=--once exits
# after the first settlement.
demo: $(STAMP)/python-deps $(STAMP)/node-deps $(REDIS_SERVER)
	$(BIN)/krewe demo $(ARGS)

test: lint typecheck contracts-check unit

# Rebuild the committed contract artifacts from contracts/*.sol.
contracts: $(STAMP)/node-deps
	node contracts/build.js

# Fail if the committed artifacts differ from a fresh build.
contracts-check: $(STAMP)/node-deps
	@rm -rf $(STAMP)/artifacts && node contracts/build.js $(STAMP)/artifacts
	@diff -r $(STAMP)/artifacts src/krewe/contracts/artifacts || \
		{ echo "contract artifacts are stale: run 'make contracts' and commit them"; exit 1; }

lint: $(STAMP)/python-deps
	$(BIN)/ruff check src tests bench
	$(BIN)/ruff format --check src tests bench

typecheck: $(STAMP)/python-deps
	$(BIN)/mypy src

unit: $(STAMP)/python-deps $(STAMP)/node-deps $(CHROMIUM) $(REDIS_SERVER)
	$(BIN)/pytest

bench: $(STAMP)/python-deps $(STAMP)/node-deps $(REDIS_SERVER)
	$(BIN)/python -m bench $(ARGS)

# The orchestrator SIGKILLed at every settlement stage under load, then every wei checked
# (docs/settlement.md). ARGS=--kills N --seconds S --json PATH --seed N.
chaos: $(STAMP)/python-deps $(STAMP)/node-deps
	$(BIN)/python -m bench.chaos $(ARGS)

clean:
	rm -rf $(VENV) $(STAMP) node_modules .mypy_cache .ruff_cache .pytest_cache .hypothesis
