# The two entry points the README promises; each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: run serve test test-postgres wire-demo venv clean

# Where `make run` keeps the gateway's database, signing key and media.
DATA ?= run/data
HTTP ?= 127.0.0.1:8008

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on embedded defaults: the gateway on SQLite with one emulated
# board (the real firmware on the MicroPython unix port, 100 bps line).
run: $(STAMP)
	$(VENV)/bin/lowband demo --data-dir $(DATA) --http $(HTTP)

# Only the gateway, registration open on loopback.
serve: $(STAMP)
	$(VENV)/bin/lowband serve --data-dir $(DATA) --server-name localhost --http $(HTTP) --enable-registration

# One reading through every wire step, byte by byte.
wire-demo: $(STAMP)
	$(VENV)/bin/lowband wire demo

# The pinned npm packages of the real-client tests (matrix-js-sdk, Hydrogen,
# playwright-core), installed again only when the lock file changed. No
# install scripts run: none of them needs one, and Chromium is Debian's.
JS := tests/e2e_clients/js
JS_STAMP := $(JS)/node_modules/.installed

$(JS_STAMP): $(JS)/package-lock.json
	cd $(JS) && npm ci --no-audit --no-fund --ignore-scripts
	touch $(JS_STAMP)

# The whole test suite, in three processes (pytest-xdist), each taking whole test files: most tests wait on the
# processes, sockets and links they start, so on 2 cores three at a time finish in well under half the serial time.
# `make test XDIST=` runs it in one process.
XDIST ?= -n 3 --dist loadfile
test: $(STAMP) $(JS_STAMP)
	$(VENV)/bin/python -m pytest $(XDIST) $(PYTEST_ARGS)

# The same suite on the PostgreSQL store (docs/storage.md): every store a test opens is a schema of this database.
# tests/codecs, tests/matrix and tests/hardware never open a store (pure functions and frames): run once, by `test`.
PGTEST ?= postgresql://postgres@127.0.0.1:5432/test
test-postgres: $(STAMP) $(JS_STAMP)
	LOWBAND_TEST_DATABASE_URL=$(PGTEST) $(VENV)/bin/python -m pytest $(XDIST) \
	  --ignore=tests/codecs --ignore=tests/matrix --ignore=tests/hardware $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info $(JS)/node_modules
