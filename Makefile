# The two commands of the quick start: `make demo` and `make test`.
# Each builds .venv from nothing (core + every backends/* distribution, editable, plus test
# tools) when it is missing or a pyproject changed, then does its job. `make test` also
# installs a headless Chromium when /usr/bin/chromium is missing (see below).

PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
BACKENDS := $(sort $(wildcard backends/*/pyproject.toml))
STAMP := $(VENV)/.installed
CHROMIUM := /usr/bin/chromium
DEV_TOOLS := pytest pytest-asyncio pytest-timeout blockbuster hypothesis ruff mypy \
	grpcio opentelemetry-exporter-otlp-proto-grpc opentelemetry-exporter-otlp-proto-http \
	types-psutil \
	opentelemetry-propagator-b3 opentelemetry-instrumentation-requests requests \
	opentelemetry-instrumentation-httpx opentelemetry-instrumentation-urllib3 \
	opentelemetry-instrumentation-urllib opentelemetry-instrumentation-aiohttp-client \
	httpx aiohttp \
	distributed

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

test: $(STAMP) $(CHROMIUM)
	$(BIN)/python -m pytest -q

# The HTML waterfall is tested in a real browser (tests/test_html.py: tick and bar
# positions as Chromium lays them out), never skipped: Debian's chromium package, installed
# only when missing, as root and without questions (CI runs `make test` as root, no stdin).
$(CHROMIUM):
	@if [ "$$(id -u)" != 0 ]; then \
		echo "make test needs a headless Chromium for tests/test_html.py:" \
			"run 'sudo apt-get install chromium' once, or make test as root" >&2; \
		exit 1; \
	fi
	DEBIAN_FRONTEND=noninteractive apt-get update -qq < /dev/null
	DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
		chromium < /dev/null

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
