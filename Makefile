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
	$(VENV)/bin/mobilevlm-agent init-random tiny-vlm $(DEMO_DIR)/model
	$(PY) -c "import cv2, numpy as np; im = np.full((240, 320, 3), 90, np.uint8); cv2.rectangle(im, (40, 80), (130, 200), (0, 0, 230), -1); cv2.circle(im, (230, 140), 45, (0, 200, 0), -1); cv2.imwrite('$(DEMO_DIR)/scene.png', im)"
	$(VENV)/bin/mobilevlm-agent info $(DEMO_DIR)/model
	$(VENV)/bin/mobilevlm-agent ask --model $(DEMO_DIR)/model --image $(DEMO_DIR)/scene.png --prompt "What is in the image?" --max-new-tokens 32

clean:
	rm -rf $(VENV) build *.egg-info
