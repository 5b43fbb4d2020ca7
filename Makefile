# `make demo` and `make test` do all the set-up on a fresh machine.
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed

.PHONY: demo test test-slow test-gpu lint bench config-docs clean-venv gpu-wheels gpu-check bench-memory

$(STAMP): pyproject.toml constraints.txt
	test -x $(PY) || python3 -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -c constraints.txt torch==2.13.0
	$(PY) -m pip install -q -c constraints.txt -e '.[test,bench]'
	$(PY) -c "import torch, sys; v = torch.__version__; sys.exit(0 if v.startswith('2.13.0') else f'torch {v}: expected the 2.13.0 CPU build')"
	$(PY) -c "import importlib.util as u, sys; bad = [m for m in ('torchvision', 'vllm') if u.find_spec(m)]; sys.exit(f'{bad} installed on the CPU stack' if bad else 0)"
	touch $(STAMP)

# two runs at a time where there are two cores (rlsd-compare workers=N)
WORKERS ?= $(shell [ "$$(nproc)" -ge 2 ] && echo 2 || echo 1)

demo: $(STAMP)
	$(VENV)/bin/rlsd-compare experiment=embedded workers=$(WORKERS)

test: $(STAMP)
	$(PY) -m pytest -q

test-slow: $(STAMP)
	$(PY) -m pytest -q -m slow

test-gpu: $(STAMP)
	$(PY) -m pytest -q -m gpu

config-docs: $(STAMP)
	$(PY) -m rlsd_harness.training.preflight > docs/config.md
	$(PY) -m rlsd_harness.config.schema > rlsd_harness/config/typed.py

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(PY) -m bench.perf

# The GPU check (bench/gpu_check.py). `make gpu-wheels` here, with PyPI reachable; then, on the GPU machine,
# `make gpu-check` (or the same as one command: python3 bench/gpu_check.py --wheels .gpu-wheels), which needs
# no registry. `make gpu-check DRY=1` runs every step's plumbing on CPU, CUDA parts skipped.
GPU_WHEELS ?= .gpu-wheels
GPU_PY ?= python3

gpu-wheels: $(STAMP)
	$(PY) bench/gpu_wheels.py --dest $(GPU_WHEELS)

ifeq ($(DRY),1)
gpu-check: $(STAMP)
	$(PY) bench/gpu_check.py --dry --wheels $(GPU_WHEELS)
else
gpu-check:
	$(GPU_PY) bench/gpu_check.py --wheels $(GPU_WHEELS)
endif

# peak memory of one RLSD step by vocabulary, response length and output-head mode (a few minutes)
bench-memory: $(STAMP)
	$(PY) -m bench.memory
