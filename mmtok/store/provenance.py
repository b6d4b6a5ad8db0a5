"""Provenance recorded in every row: the git commit (and whether the tree was dirty), library versions."""

from __future__ import annotations

import subprocess
from pathlib import Path


def git_info(root: str | Path) -> tuple[str, bool | None]:
    """(HEAD commit or 'unknown', whether tracked files differ from it or None if unknown)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return commit, bool(status.strip())
    except Exception:
        return "unknown", None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for col, dist in (
        ("torch_version", "torch"),
        ("transformers_version", "transformers"),
        ("lmms_eval_version", "lmms_eval"),
    ):
        try:
            out[col] = version(dist)
        except PackageNotFoundError:
            out[col] = "not installed"
    return out
