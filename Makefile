# PlantPulse: `make run` runs the pipeline on embedded defaults, `make test` runs the suite.
# Needs only Python 3.11/3.12 and make; everything else is installed into .venv from the lock file.

PYTHON ?= $(shell for p in python3.12 python3.11 python3; do command -v $$p >/dev/null 2>&1 && $$p -c 'import sys; sys.exit(not (3,11) <= sys.version_info[:2] <= (3,12))' && echo $$p && break; done)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed

.PHONY: setup run test lint lock clean bench deploy-test

$(STAMP): requirements.lock pyproject.toml
	@test -n "$(PYTHON)" || { echo "error: need Python 3.11 or 3.12 on PATH (bytewax 0.21 has no wheel for 3.13)"; exit 1; }
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check uv==0.13.9
	$(BIN)/uv pip sync --compile-bytecode --python $(BIN)/python requirements.lock
	$(BIN)/uv pip install --python $(BIN)/python --no-deps -e .
	touch $(STAMP)

setup: $(STAMP)

run: setup
	$(BIN)/plantpulse up $(if $(MQTT),--mqtt $(MQTT))

# Lint, format and types first (seconds), then the suite.  mypy checks the packages listed in
# pyproject's [tool.mypy] `files`: the leaves, the engine-agnostic core, both shells and the
# benches.
test: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy
	$(BIN)/python -m pytest

lint: setup
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/mypy

lock:
	$(BIN)/uv pip compile pyproject.toml --extra dev --python-version 3.11 -o requirements.lock

clean:
	rm -rf $(VENV) .plantpulse .pytest_cache

# The container deployment end to end (slow; not part of `make test`): engine, images, compose up,
# readings in the object-store lake, UI answers, teardown.  See docs/operations.md.
deploy-test: setup
	nice -n 15 scripts/deploy-test.sh
