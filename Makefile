# mmtok — the two commands a new machine needs:  make test   and   make run
# Both create the virtual environment (.venv) first if it is missing.

SHELL  := /bin/bash
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
STAMP  := $(VENV)/.mmtok-installed
# The environment is installed from a lock alone (requirements/README.md). LOCK=cpu takes the CPU
# torch wheel (2.13.0+cpu); on a CUDA machine `make venv LOCK=cuda` takes PyPI's CUDA build.
LOCK   ?= cpu
LOCKFILE := requirements/$(if $(filter cuda,$(LOCK)),lock-cuda.txt,lock.txt)
ARGS   ?=

.PHONY: help venv lock lock-check lint format test run table1 bench testbed testbed-table clean distclean

help:
	@echo "make test    create .venv from the lock if missing, run the whole test suite"
	@echo "make run     create .venv from the lock if missing, run the embedded default (tiny LLaVA, MMTok, local POPE, CPU, offline)"
	@echo "make lock    recompile requirements/lock.txt and lock-cuda.txt from pyproject.toml (needs the registry)"
	@echo "make lint    ruff check + ruff format --check"
	@echo "make table1  the paper's Table-1 sweep on LLaVA-1.5-7B (GPU + pre-downloaded weights); ARGS='hydra/launcher=slurm ...'"
	@echo "make testbed        train the testbed LLaVA on synthetic scenes from scratch on CPU (-> results/testbed/model)"
	@echo "make testbed-table  every pruner x budget on scenes_pope / scenes_gqa (-> results/testbed/table.{md,csv,png})"
	@echo "make bench   selection latency and time-to-first-token per pruner, side by side (scripts/bench_*.py)"
	@echo "make clean   remove caches, Hydra outputs and the tiny checkpoints / testbeds (keeps .venv and results/)"

venv: $(STAMP)

# Every package from the lock, hashes checked, no resolver (--no-deps): the same environment every
# day. mmtok itself is installed editable without build isolation, so its build backend is the
# locked setuptools too. The lock leaves out torchvision and timm on purpose (scripts/lock.py).
$(STAMP): $(LOCKFILE) pyproject.toml
	@$(PYTHON) scripts/lock.py --check
	@test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --require-hashes --no-deps -r $(LOCKFILE)
	$(PY) -m pip install --no-deps --no-build-isolation -e .
	@cp $(LOCKFILE) $(VENV)/mmtok-lock.txt
	@touch $(STAMP)

lock:
	@test -x $(PY) || $(MAKE) venv
	$(PY) scripts/lock.py
	$(PY) scripts/lock.py --cuda

lock-check:
	@$(PYTHON) scripts/lock.py --check && echo "locks are current"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: venv
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

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

# Both stages run at once, one thread each (python -m mmtok.testbed.train --help for the step counts).
testbed: venv
	$(PY) -m mmtok.testbed.train --out results/testbed/model $(ARGS)

testbed-table: venv
	$(PY) -m mmtok.testbed.table --out results/testbed $(ARGS)

clean:
	rm -rf .cache outputs multirun .pytest_cache
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -exec rm -rf {} +

distclean: clean
	rm -rf $(VENV) *.egg-info
