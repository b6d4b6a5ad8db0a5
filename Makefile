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

TABLES := table1 table17 table18 table19 table5 table8
# The experiments that fill each table (table5 has a LLaVA-1.5 and a LLaVA-NeXT half).
EXPERIMENTS_table5 := table5 table5_next

.PHONY: help venv lock lock-check lint format test test-slurm run bench gpu-check testbed testbed-table clean distclean tables index plots status $(TABLES) tiny

help:
	@echo "make test    create .venv from the lock if missing, run the whole test suite"
	@echo "make run     create .venv from the lock if missing, run the embedded default (trained testbed LLaVA, MMTok, scenes_pope, CPU, offline)"
	@echo "make lock    recompile requirements/lock.txt and lock-cuda.txt from pyproject.toml (needs the registry)"
	@echo "make lint    ruff check + ruff format --check"
	@echo "make table1  run the Table-1 sweep (resumes; GPU + pre-downloaded weights), then write results/tables/table1.md/.csv"
	@echo "             likewise table17 table18 table19 table5 table8; ARGS='hydra/launcher=slurm hydra.launcher.partition=...'"
	@echo "make tiny    the tiny stand-in sweep on CPU (about a minute), then results/tables/tiny.md"
	@echo "make tables  write every table from the runs that exist (starts nothing); make plots: PNGs beside them"
	@echo "make index   rebuild results/runs.csv from the run folders; make status: which cells are missing"
	@echo "make test-slurm  install Debian's slurm + munge (root), start a one-node cluster, submit a tiny sweep"
	@echo "make testbed        train the testbed LLaVA on synthetic scenes from scratch on CPU (-> results/testbed/model)"
	@echo "make testbed-table  every pruner x budget on scenes_pope / scenes_gqa (-> results/testbed/table.{md,csv,png})"
	@echo "make bench   selection latency and time-to-first-token per pruner, side by side (scripts/bench_*.py)"
	@echo "make gpu-check  on a CUDA machine: venv (LOCK=cuda), selection tests on CUDA, both benchmarks at 7B/13B shapes"
	@echo "             (results/bench/*_cuda.*); DEVICE=cpu: its dry run at reduced sizes"
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

# A real one-node SLURM (tests/test_slurm.py): as root, installs Debian's slurmctld, slurmd,
# slurm-client and munge when missing; without root the test skips with its reason.
SLURM_PACKAGES := slurmctld slurmd slurm-client munge
test-slurm: venv
	@if [ "$$(id -u)" = 0 ] && ! (command -v sbatch && test -x /usr/sbin/slurmctld && test -x /usr/sbin/munged) >/dev/null; then \
	  apt-get update && DEBIAN_FRONTEND=noninteractive apt-get install -y --no-install-recommends $(SLURM_PACKAGES); fi
	MMTOK_SLURM_TEST=1 $(PY) -m pytest -q -rs tests/test_slurm.py $(ARGS)

run: venv
	$(PY) run.py $(ARGS)

# make <table>: the sweep (a completed cell is skipped, so a rerun runs only the missing ones), then the
# table from whatever finished; the sweep's exit status is kept (a failed cell fails the target).
$(TABLES) tiny: venv
	@status=0; for e in $(or $(EXPERIMENTS_$@),$@); do $(PY) run.py experiment=$$e $(ARGS) || status=$$?; done; \
	$(PY) -m mmtok.report tables --only $@ $(ARGS); exit $$status

tables: venv
	$(PY) -m mmtok.report tables $(ARGS)

plots: venv
	$(PY) -m mmtok.report plots $(ARGS)

index: venv
	$(PY) -m mmtok.report index $(ARGS)

status: venv
	$(PY) -m mmtok.report status $(ARGS)

bench: venv
	$(PY) scripts/bench_selection.py
	$(PY) scripts/bench_prefill.py

# The GPU checks in one unattended command (scripts/gpu_check.sh): on a CUDA machine it builds the
# venv from the CUDA lock, runs the selection tests on CUDA and both benchmarks at the 7B / 13B shapes
# (results/bench/*_cuda.*). DEVICE=cpu is its dry run at reduced sizes (figures to a temporary folder).
DEVICE ?= cuda
gpu-check:
	DEVICE=$(DEVICE) PY=$(abspath $(PY)) bash scripts/gpu_check.sh

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
