# tailguard: `make demo` and `make test` work on a fresh machine (they build .venv themselves).
SHELL := /bin/bash
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
# Debian packages the integration tests run for real: a broker, Prometheus and promtool, systemd-analyze.
DEBS := mosquitto prometheus systemd

.PHONY: suite robustness heldout demo test lint typecheck unit bench debs clean

$(PY):
	$(PYTHON) -m venv $(VENV)

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[dev,plot,bench,fleet]'
	touch $@

# Install the Debian packages when we are root and they are missing (CI machines start bare).
debs:
	@missing=""; \
	command -v mosquitto >/dev/null || [ -x /usr/sbin/mosquitto ] || missing="$$missing mosquitto"; \
	{ command -v promtool && command -v prometheus; } >/dev/null || missing="$$missing prometheus"; \
	command -v systemd-analyze >/dev/null || missing="$$missing systemd"; \
	if [ -n "$$missing" ]; then \
	  if [ "$$(id -u)" = 0 ]; then \
	    echo "installing Debian packages:$$missing"; \
	    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $$missing >/dev/null; \
	  else \
	    echo "not root: the tests that need$$missing will be skipped"; \
	  fi; \
	fi

demo: $(STAMP)
	@echo "== the policy replay: paper-p4d, 1 simulated hour (the 24-hour table is in README.md and docs/results.md) =="
	$(VENV)/bin/tailguard demo
	@echo; echo "== the daemon itself on the simulated host (p4d-demo: 10 simulated minutes at 200x) =="
	$(VENV)/bin/tailguard run --simulate --speed 200 --duration 600 --log-level WARNING

# The scenario suite: every suite scenario under the five policies and the hindsight oracle
# (docs/scenarios.md); the matrix of docs/results.md comes from this JSON.
suite: $(STAMP)
	$(VENV)/bin/tailguard replay --suite --json suite.json

# Never worse than doing nothing off the suite: each suite scenario under seeded perturbations,
# static against full, judged by the regression gate (bench/robustness.py; exit 1 if any is worse).
robustness: $(STAMP)
	$(VENV)/bin/python -m bench.robustness --per 3 --json robustness.json

# The same on a real trace held out of development (the Azure code trace, replay/data/SOURCES.md),
# with each case's tenants alone beside it: how much of the tail is their own (exit 1 if any is worse).
heldout: $(STAMP)
	$(VENV)/bin/python -m bench.robustness --per 3 --alone --trace replay/data/AzureLLMInferenceTrace_code.csv --json heldout.json

lint: $(STAMP)
	$(VENV)/bin/ruff check controller fsm actuators replay schema tests bench
	$(VENV)/bin/ruff format --check controller fsm actuators replay schema tests bench

typecheck: $(STAMP)
	$(VENV)/bin/mypy

unit: $(STAMP)
	$(VENV)/bin/pytest -q -x -m 'not slow'

test: $(STAMP) debs lint typecheck
	$(VENV)/bin/pytest -q

bench: $(STAMP)
	$(PY) -m bench.run_all

clean:
	rm -rf $(VENV) out .pytest_cache .mypy_cache .ruff_cache .hypothesis
