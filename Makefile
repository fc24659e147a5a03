# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test test-fast lint bench gpu-check clean

# compat mode: the clone's folder goes on sys.path, so a folder named `landscape` (a clone, from its parent) is not
# taken for the package; 0.6 and earlier were installed as the distribution `landscape`, removed here
$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip uninstall --quiet --yes landscape 2>/dev/null || true
	rm -rf landscape.egg-info
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]' --config-settings editable_mode=compat
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m figures.flat_vs_sharp --preset quick --out demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

# the unit tests alone (no multi-process or end-to-end CLI runs): about a minute, for the edit-test loop
test-fast: $(STAMP)
	$(PY) -m pytest -q -m "not slow"

lint: $(STAMP)
	$(PY) -m ruff check landscape trainers figures benchmarks tests

bench: $(STAMP)
	$(PY) benchmarks/surface.py
	$(PY) benchmarks/train.py

# On a machine with CUDA: the GPU tests and measurements (benchmarks/gpu.py); without CUDA it says so and exits 0.
# It runs on the bare GPU image too (torch, torchvision, h5py, scipy, matplotlib, tqdm, pytest; no mnist1d needed).
gpu-check:
	$(if $(wildcard $(STAMP)),$(PY),$(PYTHON)) benchmarks/gpu.py

clean:
	rm -rf $(VENV) demo
