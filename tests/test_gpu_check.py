"""scripts/gpu_check.sh (`make gpu-check`): its CPU dry run passes, and without a GPU it refuses in one line."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "scripts" / "gpu_check.sh"


def _run(tmp_path: Path, **env) -> subprocess.CompletedProcess:
    full = {
        **os.environ,
        "PY": sys.executable,
        "GPU_CHECK_VENV": "0",  # the environment running the tests is the one to check
        "OUT": str(tmp_path / "out"),
        "LOGS": str(tmp_path / "logs"),
        **env,
    }
    return subprocess.run(["bash", str(SCRIPT)], cwd=ROOT, env=full, capture_output=True, text=True, timeout=1800)


@pytest.mark.skipif(shutil.which("nvidia-smi") is not None, reason="this machine has nvidia-smi")
def test_without_cuda_it_stops_with_one_line(tmp_path):
    res = _run(tmp_path, DEVICE="cuda")
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "gpu-check: no CUDA GPU here (nvidia-smi not found); use DEVICE=cpu for the dry run"
    ]
    assert not (tmp_path / "out").exists()


def test_unknown_device_is_refused(tmp_path):
    res = _run(tmp_path, DEVICE="tpu")
    assert res.returncode == 1
    assert res.stderr.strip() == "gpu-check: DEVICE must be cuda or cpu, got 'tpu'"


def test_cpu_dry_run_passes_and_writes_every_figure(tmp_path):
    """Every step of the CUDA run at reduced sizes on the CPU: the device tests, both selection
    benchmarks (7B / 13B tags) and both prefill benchmarks (the direct-on-device model build)."""
    res = _run(tmp_path, DEVICE="cpu")
    assert res.returncode == 0, res.stdout + res.stderr
    assert res.stdout.strip().splitlines()[-1].startswith("gpu-check: passed on cpu")
    out = tmp_path / "out"
    for name in ("selection_7b_cpu", "selection_13b_cpu", "prefill_llava_7b_cpu", "prefill_llava_next_13b_cpu"):
        assert (out / f"{name}.csv").stat().st_size > 0 and (out / f"{name}.md").stat().st_size > 0
    md = (out / "selection_7b_cpu.md").read_text()
    assert "authors / mmtok (speed-up)" in md and "clustered" in md
    for step in ("probe", "tests", "selection-7b", "selection-13b", "prefill-7b", "prefill-13b"):
        assert f"gpu-check: {step} ok in" in res.stdout
