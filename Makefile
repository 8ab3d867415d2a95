# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

.PHONY: demo test lint bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,router,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/racer-online demo

lint: $(STAMP)
	$(BIN)/ruff check racer_online worker tests benchmarks
	$(BIN)/ruff format --check racer_online worker tests benchmarks
	$(BIN)/mypy racer_online worker

test: lint
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python -m benchmarks.calibration

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache artifacts
