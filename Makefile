# wapool — see README.md. Every target creates the virtualenv first when needed.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp

.PHONY: venv run test test-fast test-slow lint format bench lock devdb-start devdb-stop clean

LOCK   := deploy/requirements.lock

# Development takes pyproject.toml's ranges, held to the lock's versions (hashes left out: an
# editable install cannot be hashed), so the suite runs against what deploy/install.sh installs.
$(STAMP): pyproject.toml $(LOCK)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check --upgrade pip
	sed -e '/^ *--hash=/d' -e 's/ *\\$$//' $(LOCK) > $(VENV)/constraints.txt
	$(BIN)/pip install --quiet --disable-pip-version-check -c $(VENV)/constraints.txt -e '.[dev]'
	touch $(STAMP)

venv: $(STAMP)

## Run the daemon in the foreground; starts a local PostgreSQL when WAPOOL_DATABASE_URL is unset.
run: venv
	$(BIN)/python -m wapool.devdb run -- sh -c '"$(BIN)/wapool" migrate && exec "$(BIN)/wapool" run'

## The whole suite, lint included; starts its own throwaway PostgreSQL cluster.
test: venv lint
	$(BIN)/pytest

## Unit tests only (no PostgreSQL, no child processes; markers in tests/markers.py): seconds.
test-fast: venv
	$(BIN)/pytest -m unit

## The slow profile: 2,000 generated convergence histories instead of 200; issue 11's bring-up
## scenario at full size (200 companies, 30 s leases, a second daemon 40 s later, 100 ± 10 each);
## three daemons sharing 300 companies (kill, return, rolling restart); issue 13's restart
## during an outage at full size (20 companies, killed 10 s into the outage); the messaging
## drills at full size; a real install from deploy/requirements.lock (downloads every package).
test-slow: venv
	WAPOOL_CONVERGENCE_CASES=2000 $(BIN)/pytest tests/test_convergence.py
	WAPOOL_SLOW=1 $(BIN)/pytest tests/test_lease_bringup.py tests/test_sharing.py tests/test_offline_start.py tests/test_install.py
	WAPOOL_SLOW=1 $(BIN)/pytest tests/test_inbound_drill.py tests/test_outbound_drill.py

lint: venv
	$(BIN)/ruff check src tests bench examples
	$(BIN)/ruff format --check src tests bench examples
	$(BIN)/mypy src

format: venv
	$(BIN)/ruff check --fix src tests bench examples
	$(BIN)/ruff format src tests bench examples

## Benchmarks: figures printed, recorded in docs/ (see docs/development.md).
bench: venv
	$(BIN)/python bench/store.py --matrix --seconds 60
	$(BIN)/python bench/pool_recovery.py
	$(BIN)/python bench/cleanup.py --rows 10000000 --companies 100
	$(BIN)/python bench/cleanup.py --rows 10000000 --companies 1
	$(BIN)/python bench/takeover.py --companies 200
	$(BIN)/python bench/outbound.py
	$(BIN)/python bench/handoff.py --companies 100
	$(BIN)/python bench/coldstart.py --companies 500 2000
	$(BIN)/python bench/sidebyside.py
	$(BIN)/python bench/inbound.py handler
	$(BIN)/python bench/inbound.py webhook --companies 100 --rate 10

## Re-resolve deploy/requirements.lock (exact versions and hashes, all platforms) after changing
## dependencies in pyproject.toml; pins still allowed are kept. `make lock ARGS=--upgrade` moves
## everything to the newest versions the ranges allow.
# Not through `venv`: that installs under the old lock, which a changed range may contradict.
lock: $(BIN)/uv
	$(BIN)/uv pip compile pyproject.toml deploy/build.in --generate-hashes --universal \
		--python-version 3.11 --quiet $(ARGS) -o $(LOCK)

$(BIN)/uv:
	test -d $(VENV) || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --disable-pip-version-check 'uv>=0.5,<1'

devdb-start: venv
	$(BIN)/python -m wapool.devdb start

devdb-stop: venv
	$(BIN)/python -m wapool.devdb stop

clean:
	rm -rf $(VENV) .mypy_cache .ruff_cache .pytest_cache
