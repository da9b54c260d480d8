# fedcrm: the two quick-start commands are `make demo` and `make test` (see README).
# Prerequisites: Debian/Ubuntu, Python 3.11, make, root or sudo.

PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
# Never phone home, in every process make starts.
export FLWR_TELEMETRY_ENABLED := 0
export FLWR_DISABLE_UPDATE_CHECK := 1
export FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION := 1
export RAY_USAGE_STATS_ENABLED := 0
export PIP_DISABLE_PIP_VERSION_CHECK := 1

APT_TEST_PACKAGES := postgresql strace util-linux iproute2 chromium

.PHONY: demo test bench lint venv apt-test clean

## Set up the virtual environment and run the end-to-end demo on the bundled data.
demo: $(VENV)/.installed
	$(VENV)/bin/fedcrm demo

## Set up, install the system packages the tests need, and run the whole test suite.
test: $(VENV)/.installed apt-test lint
	bash .ci/pytest.sh

lint: $(VENV)/.installed
	$(VENV)/bin/ruff check core client consent coordinator models benchmarks tests tools

## Run the benchmark harness (accuracy, ledger, CLV, quality, propensity, round time, gate, scoring).
bench: $(VENV)/.installed
	$(PY) -m benchmarks.accuracy
	$(PY) -m benchmarks.ledger
	$(PY) -m benchmarks.clv
	$(PY) -m benchmarks.quality
	$(PY) -m benchmarks.propensity
	$(PY) -m benchmarks.rounds
	$(PY) -m benchmarks.gate
	$(PY) -m benchmarks.scoring
	$(PY) -m benchmarks.privacy
	$(PY) -m benchmarks.scale
	$(PY) -m benchmarks.segments
	$(PY) -m benchmarks.scale_partners --partners 10 50 --rows 100000 --rounds 2
	$(PY) -m benchmarks.dp_statistics
	$(PY) -m benchmarks.psi --sizes 10000x100000 100000x100000

venv: $(VENV)/.installed

# openmined.psi (private set intersection) pins protobuf==6.30.2 exactly, while Flower's
# grpcio-health-checking needs protobuf>=6.33.5; its generated code runs on 6.33.6
# (measured: tests/analytics PSI tests), so it is installed without its pins.
PSI_WHEEL := openmined.psi==2.0.6

# torch 2.13.0 is installed first and alone: it resolves to the local CPU build; any
# other order lets a dependency pull multi-GB CUDA wheels.
$(VENV)/.installed: pyproject.toml constraints.txt
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), "Python 3.11 is required, found " + sys.version' \
	  || { echo "fedcrm needs Python 3.11 (set PYTHON=/path/to/python3.11)"; exit 1; }
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -c constraints.txt -e '.[simulation,dev,bench]'
	$(PIP) install --quiet --no-deps -c constraints.txt $(PSI_WHEEL)
	touch $@

apt-test:
	@missing=""; for p in $(APT_TEST_PACKAGES); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	fi
	bash .ci/install-containers.sh

clean:
	rm -rf $(VENV) build *.egg-info demo-work
