# Set-up and everyday commands.  `make run` and `make test` work on a fresh
# machine: each builds .venv on first use and reinstalls when sources change.

PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
SOURCES := setup.cfg pyproject.toml $(shell find pywebhooks twisted -name '*.py' -o -name '*.json' 2>/dev/null)
TWIST_ARGS ?=
PYTEST_ARGS ?=

.PHONY: run test venv initdb clean

venv: $(BIN)/.installed

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip

# A plain (non-editable) install, so that `twist` finds the plugin exactly as
# it will for users.
$(BIN)/.installed: $(BIN)/python $(SOURCES)
	$(BIN)/python -m pip install --quiet '.[test]'
	touch $@

run: venv
	$(BIN)/twist pywebhooks $(TWIST_ARGS)

initdb: venv
	$(BIN)/twist pywebhooks --initdb $(TWIST_ARGS)

test: venv
	$(BIN)/python -m pytest $(PYTEST_ARGS)

clean:
	rm -rf $(VENV) build *.egg-info
