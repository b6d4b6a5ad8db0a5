#!/usr/bin/env python
"""Evaluate a vision-token pruner on a LLaVA model with lmms-eval; log accuracy and latency.

    python run.py                                                  # tiny LLaVA, MMTok, local POPE, CPU
    python run.py model=llava15_7b pruner=mmtok budget=64 benchmark=pope
    python run.py -m pruner=mmtok,divprune budget=64,128 benchmark=pope,gqa   # a sweep
    python run.py experiment=table1                                # the paper's Table-1 grid

Every key is in configs/ (README.md, "Configuration"). Bad input fails with one line before any
model loads: `mmtok.run.preflight` checks the command line before Hydra composes it.
"""

from __future__ import annotations

import os
import sys

# numexpr (imported by pandas) otherwise logs its thread count at INFO through Hydra's logger,
# which would put a second line in front of a run's one-line errors.
os.environ.setdefault("NUMEXPR_MAX_THREADS", str(os.cpu_count() or 1))

import hydra
from omegaconf import DictConfig

from mmtok.run.preflight import preflight
from mmtok.run.schema import CONFIG_DIR, ConfigError


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    from mmtok.run.execute import main_job

    main_job(cfg)


def is_sweep(argv: list[str]) -> bool:
    """`-m`, or an experiment file (they set hydra.mode: MULTIRUN)."""
    if "-m" in argv or "--multirun" in argv:
        return True
    return any(a.startswith("experiment=") and a != "experiment=null" for a in argv)


def plan_sweep(argv: list[str]) -> list[str] | None:
    """The command line narrowed to the jobs that still have a missing cell (each cell's own result
    files decide, not the launcher's report); None when every cell is done."""
    from mmtok.run.sweep import pending_sweep

    flags = [a for a in argv if a.startswith("-")]
    narrowed, jobs, pending, missing = pending_sweep([a for a in argv if not a.startswith("-")])
    if jobs < 0:
        return argv
    if not pending:
        print(f"[mmtok] nothing to run: every cell of the {jobs} job(s) has a completed run", flush=True)
        return None
    print(f"[mmtok] {missing} missing cell(s) in {pending} of {jobs} job(s); launching those jobs", flush=True)
    return flags + narrowed


def report_sweep(argv: list[str]) -> int:
    from mmtok.run.sweep import pending_sweep

    _, jobs, pending, missing = pending_sweep([a for a in argv if not a.startswith("-")])
    if jobs < 0:
        return 0
    if missing:
        print(f"[mmtok] sweep ended with {missing} cell(s) missing in {pending} job(s) (from the run folders)")
        return 1
    print(f"[mmtok] sweep complete: every cell of the {jobs} job(s) has a completed run (from the run folders)")
    return 0


if __name__ == "__main__":
    argv = original = sys.argv[1:]
    try:
        preflight(argv)
        sweep = is_sweep(argv) and not any(a.startswith("-") and a not in ("-m", "--multirun") for a in argv)
        if sweep:
            argv = plan_sweep(argv)
            if argv is None:
                sys.exit(0)
            sys.argv[1:] = argv
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    if not sweep:
        main()
    else:
        try:
            main()
        except SystemExit as exc:  # hydra exits after a multirun; the cells' files say how it went
            if exc.code not in (0, None):
                report_sweep(original)
                raise
        sys.exit(report_sweep(original))
