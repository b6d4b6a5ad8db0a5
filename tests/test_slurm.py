"""A sweep through hydra-submitit-launcher against a REAL one-node SLURM (slurmctld + slurmd +
munged on this host, `tests/_slurm.py`). Runs under `make test-slurm` (which installs Debian's
slurmctld, slurmd, slurm-client and munge); the default suite skips it, and so does a non-root user.

Two array jobs (pope_local, gqa_local: one job per model x benchmark), two cells each: every row
lands, each job loads the weights once, and a rerun submits nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from mmtok import store

from ._slurm import local_slurm, missing_binaries, submissions
from .conftest import offline_env

ROOT = Path(__file__).resolve().parent.parent

pytestmark = [
    pytest.mark.skipif(os.environ.get("MMTOK_SLURM_TEST") != "1", reason="a real SLURM cluster: run `make test-slurm`"),
    pytest.mark.skipif(
        hasattr(os, "geteuid") and os.geteuid() != 0,
        reason="needs root to start munged, slurmctld and slurmd (CI runs as root)",
    ),
]

SWEEP = [
    "experiment=tiny",
    "benchmark=pope_local,gqa_local",
    "cells=[none,mmtok@4]",
    "limit=2",
    "max_new_tokens=2",
    "wandb.mode=disabled",
    "progress=false",
    "results_dir=res",
    "hydra/launcher=slurm",
    "hydra.launcher.partition=debug",
    "hydra.launcher.gpus_per_node=null",  # no GPU GRES on this node
    "hydra.launcher.cpus_per_task=1",
    "hydra.launcher.mem_gb=1",
    "hydra.launcher.timeout_min=10",
    "hydra.launcher.array_parallelism=2",
]


def test_a_sweep_runs_on_a_real_slurm_and_a_rerun_submits_nothing(tmp_path, mmtok_cache, tiny_llava_path):
    assert not missing_binaries(), f"missing {missing_binaries()}: `make test-slurm` installs them"
    env = offline_env(MMTOK_CACHE=str(mmtok_cache))
    with local_slurm(tmp_path / "slurm") as slurm_env:
        env = {**env, "SLURM_CONF": slurm_env["SLURM_CONF"]}
        cmd = [sys.executable, str(ROOT / "run.py"), *SWEEP]
        first = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert first.returncode == 0, first.stdout[-3000:] + first.stderr[-3000:]
        assert "Submitit 'slurm' sweep" in first.stdout + first.stderr
        assert submissions(tmp_path / "slurm") == 1  # one array of two jobs

        rows = [json.loads(p.read_text()) for p in (tmp_path / "res").glob("runs/*/row.json")]
        assert sorted((r["benchmark"], r["pruner"], r["status"]) for r in rows) == [
            ("gqa_local", "mmtok", "completed"),
            ("gqa_local", "none", "completed"),
            ("pope_local", "mmtok", "completed"),
            ("pope_local", "none", "completed"),
        ]
        assert len(store.read_rows(tmp_path / "res" / "runs.csv")) == 4
        # each array task ran one (model, benchmark) job: the model loaded once for its two cells,
        # by the shared venv's python (the submitter's interpreter)
        logs = sorted(tmp_path.glob("multirun/*/*/.submitit/*_*/*_0_log.out"))
        assert len(logs) == 2, logs
        for log in logs:
            text = log.read_text()
            assert text.count("[mmtok] loaded tiny_llava") == 1 and text.count("[mmtok] done: ") == 2, text[-2000:]
        scripts = list(tmp_path.glob("multirun/*/*/.submitit/*/*_submission.sh"))
        assert scripts and f"{sys.executable} -u -m submitit.core._submit" in scripts[0].read_text()

        again = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=600)
        assert again.returncode == 0, again.stderr[-3000:]
        assert "nothing to run: every cell of the 2 job(s) has a completed run" in again.stdout
        assert submissions(tmp_path / "slurm") == 1  # the rerun submitted nothing
