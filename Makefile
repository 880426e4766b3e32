# The two commands of the quick start: `make demo` and `make test`.
# Each builds .venv from nothing (core + every backends/* distribution, editable, plus test
# tools) when it is missing or a pyproject changed, then does its job.

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BACKENDS := $(sort $(wildcard backends/*/pyproject.toml))
STAMP := $(VENV)/.installed
DEV_TOOLS := pytest pytest-asyncio pytest-timeout blockbuster hypothesis ruff mypy \
	grpcio opentelemetry-exporter-otlp-proto-grpc opentelemetry-exporter-otlp-proto-http \
	types-psutil \
	opentelemetry-propagator-b3 opentelemetry-instrumentation-requests requests

.PHONY: demo test lint format bench venv clean

venv: $(STAMP)

$(STAMP): pyproject.toml $(BACKENDS) Makefile
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check --upgrade pip
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e . \
		$(foreach b,$(BACKENDS),-e $(dir $(b))) $(DEV_TOOLS)
	touch $(STAMP)

demo: $(STAMP)
	$(BIN)/python examples/demo.py

test: $(STAMP)
	$(BIN)/python -m pytest -q

lint: $(STAMP)
	$(BIN)/ruff format --check .
	$(BIN)/ruff check .
	$(BIN)/mypy aiorunner $(foreach b,$(BACKENDS),$(dir $(b))src)

format: $(STAMP)
	$(BIN)/ruff format .
	$(BIN)/ruff check --fix .

bench: $(STAMP)
	$(BIN)/python -m benchmarks

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
