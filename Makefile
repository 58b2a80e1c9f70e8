# Two set-up commands: `make run` (demo end to end through the real Airflow DAG) and `make test`.
SHELL := /bin/bash
PY ?= python3.11
VENV := .venv
BIN := $(VENV)/bin
export AIRFLOW_HOME := $(CURDIR)
export AIRFLOW__CORE__LOAD_EXAMPLES := False
export PYTHONPATH := $(CURDIR)
DEMO_ENTITIES ?= 20000
DEMO_SEED ?= 7
SOURCES ?= $(CURDIR)/data/sources
LAKE ?= $(CURDIR)/data/lake

.PHONY: venv run run-celery test test-quick lint airflow-ui bench clean

# the pipeline with its dev extra, and next to it the synthetic source systems (synthetic/: `credit
# generate`, the demo), which tests and benchmarks use and the pipeline's wheel does not carry
$(BIN)/.installed: pyproject.toml synthetic/pyproject.toml constraints.txt
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -c constraints.txt -e '.[dev]' -e ./synthetic
	touch $@

venv: $(BIN)/.installed

run: venv
	$(BIN)/python -m credit_synthetic.demo --sources $(SOURCES) --lake $(LAKE) --entities $(DEMO_ENTITIES) --seed $(DEMO_SEED)

# The suite runs on TEST_WORKERS pytest-xdist workers, each module on one worker (--dist loadfile:
# its module fixtures built once), modules that mostly wait (servers, heartbeat timeouts) first, then
# the slow ones; three workers on two cores, so that a waiting module does not hold a core idle.
# The lakes of tests/conftest.py's published_lakes are built once and shared by the workers.
# test-quick leaves out the tests marked slow (real DAG runs, servers, browsers, the wheel, many
# pipeline runs): the inner loop.
TEST_WORKERS ?= 3
PYTEST := $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile --durations=20

# lint-imports checks the import contracts in pyproject.toml ([tool.importlinter]: the layers).
test: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(PYTEST)

test-quick: venv
	$(BIN)/ruff check .
	$(BIN)/lint-imports
	$(PYTEST) -m "not slow"

lint: venv
	$(BIN)/ruff check . && $(BIN)/ruff format --check . && $(BIN)/lint-imports

# standalone starts its components as `airflow ...` subprocesses: the venv must be on PATH.
# The DAG starts paused (airflow.cfg); UNPAUSED=1 creates it unpaused, so the scheduler starts the
# latest night at once and every night after.
airflow-ui: venv
	PATH="$(CURDIR)/$(BIN):$$PATH" CREDIT_SOURCES=$(SOURCES) CREDIT_LAKE=$(LAKE) \
	  $(if $(UNPAUSED),AIRFLOW__CORE__DAGS_ARE_PAUSED_AT_CREATION=False) $(BIN)/airflow standalone

# The production-shaped deployment: scheduler, DAG processor, API server, triggerer and WORKERS
# Celery workers, with Airflow's metadata on PostgreSQL and Redis as broker, as deploy/celery.env
# sets them (environment variables win over it). `make run` keeps SQLite and one machine.
WORKERS ?= 2
run-celery: venv
	deploy/run-celery.sh $(WORKERS)

bench: venv
	$(BIN)/python bench/bench_pipeline.py --entities $${ENTITIES:-100000}

clean:
	rm -rf $(LAKE) logs airflow.db
