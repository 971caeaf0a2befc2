# The README's two commands: `make demo` (set up, then run the main job) and `make test` (set up, then test).
VENV ?= .venv
PY := $(VENV)/bin/python
PYTHON ?= python3
DEMO_DIR ?= build/demo
PYTEST_ARGS ?= -n 2

.PHONY: setup test test-fast demo clean

setup: $(VENV)/.installed

# torch==2.13.0 first: it is a local CPU wheel; any other torch request would pull a multi-GB CUDA build.
$(VENV)/.installed: setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q torch==2.13.0
	$(PY) -m pip install -q -e '.[test]'
	touch $@

test: setup
	$(PY) -m pytest -q $(PYTEST_ARGS)

test-fast: setup
	$(PY) -m pytest -q $(PYTEST_ARGS) -m "not slow"

demo: setup
	$(VENV)/bin/mobilevlm-agent demo --seed 3 --out $(DEMO_DIR)

clean:
	rm -rf $(VENV) build *.egg-info
