# Two commands for a newcomer: `make run` and `make test`.
PYTHON ?= python3.11
VENV ?= .venv
PORT ?= 8000
PY := $(VENV)/bin/python

.PHONY: run setup test install lint bench clean

$(VENV)/.installed: requirements.txt
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip
	$(PY) -m pip install --quiet -r requirements.txt
	touch $@

install: $(VENV)/.installed

## A development .env (git-ignored, so never committed): DEBUG=1, a fresh random SECRET_KEY, and the
## demo mode that prints verification codes in the terminal. Written once; an existing .env is left alone.
## With it, every `python manage.py ...` in the README works as printed in this checkout.
.env: | install
	@key="$$($(PY) -c 'import secrets; print(secrets.token_urlsafe(50))')" && test -n "$$key" && umask 077 && { \
	  echo "# Written by 'make run' for a development checkout; never use it in production (see .env.example)."; \
	  echo "DEBUG=1"; \
	  echo "SECRET_KEY=$$key"; \
	  echo "# The demo mode: verification codes are printed in the terminal instead of mailed to approvers."; \
	  echo "# Only allowed with DEBUG=1 (opsapp.E008); set EMAIL_URL to a mail server to send them."; \
	  echo "EMAIL_URL=consolemail://"; \
	} > $@.tmp && mv $@.tmp $@
	@echo "Wrote .env for development (DEBUG=1, a random SECRET_KEY, codes printed in this terminal)."

## Everything `make run` does before serving: .env, migrate, seed the demo target `shop`, create the accounts.
setup: install .env
	mkdir -p var
	$(PY) manage.py migrate --noinput
	$(PY) manage.py seed_demo
	$(PY) manage.py sync_revisions
	$(PY) manage.py bootstrap_console

## Run the console on its embedded default (SQLite console DB, demo target `shop`): the web server and one
## worker (snapshots, downgrades and syncs started from the admin run there). Ctrl-C ends both.
run: setup
	@CONN_MAX_AGE=600 $(PY) manage.py db_worker --no-reload --no-startup-delay & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker 2>/dev/null' EXIT INT TERM; \
	$(PY) manage.py runserver --noreload 127.0.0.1:$(PORT)

## Run the whole test suite (needs PostgreSQL at 127.0.0.1:5432 and /usr/bin/chromium).
## Two processes (pytest-xdist): each worker gets its own test database (test_<name>_gw0, _gw1) and its
## throwaway target databases have random names, so the workers never share a database.
test: install
	$(PY) -m pytest -n 2

lint: install
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

bench: install
	$(PY) bench/run.py

clean:
	rm -rf var $(VENV)
