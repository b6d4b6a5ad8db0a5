"""Shared fixtures: tiny checkpoints and local testbeds built once per test session, and a helper
to run `run.py` as a user would (a subprocess, offline, in a scratch folder).

    def test_x(tiny_llava_path, mmtok_cache): ...
    def test_y(run_cli, tmp_path): proc = run_cli(["budget=8", "limit=2"], cwd=tmp_path)

`mmtok_cache` is the folder the tiny models and testbeds are built into (what `cache_dir` /
`MMTOK_CACHE` point at); pass `cache_dir=<it>` to configs so runs reuse what earlier tests built.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="session")
def mmtok_cache(tmp_path_factory) -> Path:
    """A session-wide cache folder (tiny checkpoints under tiny/<family>, testbeds under testbed/)."""
    return tmp_path_factory.mktemp("mmtok-cache")


@pytest.fixture(scope="session")
def tiny_llava_path(mmtok_cache) -> Path:
    from mmtok.models.loading import ensure_tiny

    return ensure_tiny(mmtok_cache / "tiny" / "llava", "llava")


@pytest.fixture(scope="session")
def tiny_llavanext_path(mmtok_cache) -> Path:
    from mmtok.models.loading import ensure_tiny

    return ensure_tiny(mmtok_cache / "tiny" / "llava_next", "llava_next")


def offline_env(**extra: str) -> dict[str, str]:
    """The environment of an offline user: no hub, no wandb cloud, the repo importable."""
    env = dict(os.environ)
    env.update(
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_DATASETS_OFFLINE="1",
        WANDB_MODE="offline",
        WANDB_SILENT="true",
        PYTHONPATH=str(ROOT) + os.pathsep + env.get("PYTHONPATH", ""),
        HYDRA_FULL_ERROR="0",
    )
    env.update(extra)
    return env


@dataclass
class CliResult:
    returncode: int
    stdout: str
    stderr: str
    seconds: float


@pytest.fixture(scope="session")
def run_cli(mmtok_cache):
    """run_cli(args, cwd=..., env=None, timeout=...) -> CliResult: `python run.py <args>`."""

    def _run(args, *, cwd, env=None, timeout=300, cache=True) -> CliResult:
        env = offline_env(**(env or {}))
        if cache:
            env.setdefault("MMTOK_CACHE", str(mmtok_cache))
        start = time.perf_counter()
        proc = subprocess.run(
            [sys.executable, str(ROOT / "run.py"), *args],
            cwd=str(cwd),
            env=env,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        return CliResult(proc.returncode, proc.stdout, proc.stderr, time.perf_counter() - start)

    return _run


@pytest.fixture(scope="session")
def tiny_models(tiny_llava_path, tiny_llavanext_path):
    """{"llava": (model, processor), "llava_next": (model, processor)} loaded once per session.

    Shared on purpose: every pruner must leave the model as loaded, so a test that leaked a hook
    or changed a weight would break the tests that follow it."""
    from tests._tiny import load

    return {"llava": load(tiny_llava_path, "llava"), "llava_next": load(tiny_llavanext_path, "llava_next")}


@pytest.fixture(scope="session")
def family_models(tiny_models, mmtok_cache):
    """family_models(tester) -> (model, processor) of that family's tiny checkpoint (`tests._families`),
    built by the family's own tiny builder and loaded once per session (the LLaVA ones are
    `tiny_models`'), shared like `tiny_models`."""
    from mmtok.models.loading import ensure_tiny

    cache = dict(tiny_models)

    def get(tester):
        if tester.model_type not in cache:
            path = ensure_tiny(mmtok_cache / "tiny" / tester.model_type, tester.model_type)
            cache[tester.model_type] = tester.load(path)
        return cache[tester.model_type]

    return get


@pytest.fixture(scope="session")
def tiny_llava_eager(tiny_llava_path):
    """The same tiny LLaVA-1.5 under eager attention: a test-only reference for attention weights
    (`output_attentions`), which the pruners themselves never use."""
    from transformers import LlavaForConditionalGeneration

    return LlavaForConditionalGeneration.from_pretrained(tiny_llava_path, attn_implementation="eager").eval()


@pytest.fixture
def pruner_registry():
    """The global pruner registry, restored to its state before the test on exit (every test that registers uses it)."""
    from tests._registry import registry_snapshot

    with registry_snapshot() as registry:
        yield registry
