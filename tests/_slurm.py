"""A real one-node SLURM cluster on this host for tests: munged + slurmctld + slurmd from Debian's
packages (`make test-slurm` installs them), configured from files written under a temp folder.

    with local_slurm(tmp_path / "slurm") as env:   # env: os.environ + SLURM_CONF
        subprocess.run(["sbatch", ...], env=env)

Needs root (slurmd launches jobs as their user; munged and slurmd run as root here). Ports are picked
free; state, spool, logs, the munge key and socket all live in the folder; the daemons started here
are stopped by their pid files on exit.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

DAEMONS = ("munged", "slurmctld", "slurmd")
SBIN = ("/usr/sbin", "/usr/bin", "/sbin")


def binary(name: str) -> str | None:
    return shutil.which(name) or next((f"{d}/{name}" for d in SBIN if os.access(f"{d}/{name}", os.X_OK)), None)


def missing_binaries() -> list[str]:
    return [b for b in (*DAEMONS, "sbatch", "sinfo") if binary(b) is None]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _mem_mb() -> int:
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemAvailable:"):
            return max(1024, min(16000, int(line.split()[1]) // 1024 * 3 // 4))
    return 2048


def write_config(folder: Path) -> Path:
    host = socket.gethostname().split(".")[0]
    for sub in ("state", "spool"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    key = folder / "munge.key"
    key.write_bytes(os.urandom(1024))
    key.chmod(0o400)
    conf = folder / "slurm.conf"
    conf.write_text(
        "\n".join(
            [
                "ClusterName=mmtoktest",
                f"SlurmctldHost={host}",
                "SlurmUser=root",
                "SlurmdUser=root",
                "AuthType=auth/munge",
                "CredType=cred/munge",
                f"AuthInfo=socket={folder}/munge.sock",
                f"StateSaveLocation={folder}/state",
                f"SlurmdSpoolDir={folder}/spool",
                f"SlurmctldPidFile={folder}/slurmctld.pid",
                f"SlurmdPidFile={folder}/slurmd.pid",
                f"SlurmctldLogFile={folder}/slurmctld.log",
                f"SlurmdLogFile={folder}/slurmd.log",
                f"SlurmctldPort={_free_port()}",
                f"SlurmdPort={_free_port()}",
                "ProctrackType=proctrack/linuxproc",
                "TaskPlugin=task/none",
                "SchedulerType=sched/backfill",
                "SelectType=select/cons_tres",
                "SelectTypeParameters=CR_Core_Memory",
                "ReturnToService=2",
                "MpiDefault=none",
                "JobAcctGatherType=jobacct_gather/none",
                "AccountingStorageType=accounting_storage/none",
                f"NodeName={host} CPUs={os.cpu_count() or 1} RealMemory={_mem_mb()} State=UNKNOWN",
                f"PartitionName=debug Nodes={host} Default=YES MaxTime=INFINITE State=UP",
                "",
            ]
        )
    )
    return conf


def _stop(folder: Path) -> None:
    for name in reversed(DAEMONS):
        pid_file = folder / f"{name}.pid"
        with contextlib.suppress(OSError, ValueError):
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGTERM)
    for name in DAEMONS:  # wait for them to go (a second run would otherwise find the ports busy)
        pid_file = folder / f"{name}.pid"
        for _ in range(100):
            try:
                os.kill(int(pid_file.read_text().split()[0]), 0)
            except (OSError, ValueError):
                break
            time.sleep(0.1)


@contextlib.contextmanager
def local_slurm(folder: Path, timeout_s: float = 60) -> Iterator[dict[str, str]]:
    folder.mkdir(parents=True, exist_ok=True)
    conf = write_config(folder)
    env = {**os.environ, "SLURM_CONF": str(conf)}
    try:
        subprocess.run(
            [
                binary("munged"),
                f"--key-file={folder}/munge.key",
                f"--socket={folder}/munge.sock",
                f"--pid-file={folder}/munged.pid",
                f"--log-file={folder}/munged.log",
                f"--seed-file={folder}/munge.seed",
                "--force",
            ],  # fmt: skip
            check=True,
            env=env,
        )
        subprocess.run([binary("slurmctld"), "-f", str(conf)], check=True, env=env)
        subprocess.run([binary("slurmd"), "-f", str(conf)], check=True, env=env)
        deadline = time.monotonic() + timeout_s
        state = ""
        while time.monotonic() < deadline:
            out = subprocess.run([binary("sinfo"), "-h", "-o", "%t"], capture_output=True, text=True, env=env)
            state = out.stdout.strip()
            if state == "idle":
                break
            time.sleep(0.5)
        else:
            logs = "".join(
                (folder / f).read_text()[-2000:] for f in ("slurmctld.log", "slurmd.log") if (folder / f).exists()
            )
            raise RuntimeError(f"the one-node cluster did not become idle (sinfo: {state!r}); logs:\n{logs}")
        yield env
    finally:
        _stop(folder)


def submissions(folder: Path) -> int:
    """How many batch jobs slurmctld accepted (from its log)."""
    log = folder / "slurmctld.log"
    return log.read_text().count("_slurm_rpc_submit_batch_job") if log.exists() else 0
