# bagtrack: the project's vocabulary. `make run` and `make test` set everything up.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
FLASK := $(BIN)/flask --app bagtrack
# Two test processes on two cores; each gets a database of its own.
PYTEST_ARGS ?= -n auto

.PHONY: run test lint format bench cluster seed migrate check clean

$(STAMP): requirements.txt requirements-dev.txt
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(STAMP)

migrate: $(STAMP)
	$(FLASK) db upgrade

run: migrate
	$(FLASK) bootstrap
	$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

test: $(STAMP)
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(STAMP)
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

format: $(STAMP)
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

check: $(STAMP)
	$(FLASK) check

seed: migrate
	$(FLASK) seed --parents $(or $(PARENTS),1000)

bench: $(STAMP)
	$(BIN)/python scripts/bench.py $(if $(SCALE),--bags $(SCALE))

cluster: $(STAMP)
	$(BIN)/python scripts/cluster.py

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache instance/bagtrack.sqlite3*
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
