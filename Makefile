# The two entry points the README promises; each creates .venv when missing.
PYTHON ?= python3
VENV ?= .venv
STAMP := $(VENV)/.installed

.PHONY: run test demo venv clean

# Where `make run` keeps the gateway's database, signing key and media.
DATA ?= run/data
HTTP ?= 127.0.0.1:8008

venv: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(VENV)/bin/python || $(PYTHON) -m venv $(VENV)
	$(VENV)/bin/python -m pip install --quiet --upgrade pip
	$(VENV)/bin/python -m pip install --quiet -e '.[dev]'
	touch $(STAMP)

# The main job on embedded defaults: the gateway on SQLite, registration open on loopback.
run: $(STAMP)
	@echo "Lowband gateway on http://$(HTTP) (server name localhost, data in $(DATA))."
	@echo "Point any Matrix client at that URL and register an account; Ctrl-C stops it."
	$(VENV)/bin/lowband serve --data-dir $(DATA) --server-name localhost --http $(HTTP) --enable-registration

# One reading through every wire step, byte by byte.
demo: $(STAMP)
	$(VENV)/bin/lowband wire demo

# The whole test suite.
test: $(STAMP)
	$(VENV)/bin/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
