# mmtok — the two commands a new machine needs:  make test   and   make run
# Both create the virtual environment (.venv) first if it is missing.

SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mmtok-installed
# A CPU torch first: an unpinned torch from PyPI pulls a multi-GB CUDA build. On a GPU machine,
# install the CUDA build of the same version into .venv yourself (the stamp keeps it).
TORCH  ?= torch==2.13.0
ARGS   ?=

.PHONY: help venv test run table1 bench clean distclean

help:
	@echo "make test    create .venv if missing, run the whole test suite"
	@echo "make run     create .venv if missing, run the embedded default (tiny LLaVA, MMTok, local POPE, CPU, offline)"
	@echo "make table1  the paper's Table-1 sweep on LLaVA-1.5-7B (GPU + pre-downloaded weights); ARGS='hydra/launcher=slurm ...'"
	@echo "make bench   selection latency and time-to-first-token per pruner, side by side (scripts/bench_*.py)"
	@echo "make clean   remove caches, Hydra outputs and the tiny checkpoints / testbeds (keeps .venv and results/)"

venv: $(STAMP)

# torchvision and timm are removed on purpose: PyPI's torchvision does not import beside the local
# torch 2.13.0 wheel ("operator torchvision::nms does not exist") and then breaks transformers'
# image processors; without it transformers uses its PIL image processors (README: "Environment").
$(STAMP): pyproject.toml
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install "$(TORCH)"
	$(PY) -m pip install -e ".[test]" "$(TORCH)"   # torch repeated: nothing may swap it for a CUDA build
	$(PY) -m pip uninstall -y torchvision timm
	@touch $(STAMP)

test: venv
	$(PY) -m pytest -q $(ARGS)

run: venv
	$(PY) run.py $(ARGS)

table1: venv
	$(PY) run.py experiment=table1 $(ARGS)
	$(PY) run.py experiment=table1_baseline $(ARGS)

bench: venv
	$(PY) scripts/bench_selection.py
	$(PY) scripts/bench_prefill.py

clean:
	rm -rf .cache outputs multirun .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
