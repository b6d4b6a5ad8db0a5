#!/usr/bin/env python
"""Evaluate a vision-token pruner on a LLaVA model with lmms-eval; log accuracy and latency.

    python run.py                                                  # tiny LLaVA, MMTok, local POPE, CPU
    python run.py model=llava15_7b pruner=mmtok budget=64 benchmark=pope
    python run.py -m pruner=mmtok,divprune budget=64,128 benchmark=pope,gqa   # a sweep
    python run.py experiment=table1                                # the paper's Table-1 grid

Every key is in configs/ (README.md, "Configuration"). Bad input fails with one line before any
model loads: `mmtok.config.preflight` checks the command line before Hydra composes it.
"""

from __future__ import annotations

import os
import sys

# numexpr (imported by pandas) otherwise logs its thread count at INFO through Hydra's logger,
# which would put a second line in front of a run's one-line errors.
os.environ.setdefault("NUMEXPR_MAX_THREADS", str(os.cpu_count() or 1))

import hydra
from omegaconf import DictConfig

from mmtok.config import CONFIG_DIR, ConfigError, preflight


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="config")
def main(cfg: DictConfig) -> None:
    from mmtok.runner import main_job

    main_job(cfg)


if __name__ == "__main__":
    try:
        preflight(sys.argv[1:])
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
    main()
