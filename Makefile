# `make test` builds .venv from nothing (once), type-checks the package (mypy, settings in pyproject.toml), then
# runs every test and executes the cookbook notebooks on tiny random checkpoints. `make demo` runs the
# command-line search on the sample folder.
PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-stamp
MODEL ?= real
# test-lowest sets this: pins of every dependency at the lowest version pyproject.toml allows
LOWEST_PINS ?=
export TOKENIZERS_PARALLELISM ?= false

.PHONY: install test test-lowest demo bench clean

install: $(STAMP)

# torch and torchvision go in first, together, pinned (never let pip pick a torchvision on its own).
$(STAMP): pyproject.toml constraints.txt $(LOWEST_PINS)
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt torch torchvision
	$(PY) -m pip install -q --disable-pip-version-check -c constraints.txt $(LOWEST_PINS:%=-c %) -e ".[test]"
	touch $(STAMP)

# Tests never reach a model hub: they build tiny random checkpoints.
test: export HF_HUB_OFFLINE = 1
test: export TRANSFORMERS_OFFLINE = 1
test: $(STAMP)
	$(PY) -m mypy
	$(PY) -m pytest tests cookbook --nbmake --nbmake-timeout=600 -q

# The same, in .venv-lowest, with every dependency at the lowest version that pyproject.toml allows.
test-lowest:
	$(MAKE) test VENV=.venv-lowest LOWEST_PINS=constraints-lowest.txt

demo: $(STAMP)
	$(PY) -m qwen3vl_integrations.demo --model $(MODEL)

bench: $(STAMP)
	$(PY) -m benchmarks.throughput --model small --device cpu

clean:
	rm -rf $(VENV) .venv-lowest .pytest_cache .mypy_cache
