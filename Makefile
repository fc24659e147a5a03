# The README's two commands: `make demo` and `make test`. Both create .venv on first use.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.installed

.PHONY: demo test lint bench gpu-check clean

$(STAMP): setup.cfg pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	touch $(STAMP)

demo: $(STAMP)
	$(PY) -m figures.flat_vs_sharp --preset quick --out demo

test: $(STAMP)
	$(PY) -m pytest -q --durations=15

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
