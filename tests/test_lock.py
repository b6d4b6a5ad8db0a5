"""The environment lock: current with pyproject.toml, and exactly what is installed."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from importlib import metadata
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "scripts"))
import lock  # noqa: E402  (scripts/lock.py: standard library only)


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins(path: Path) -> dict[str, str]:
    return {
        _norm(m.group(1)): m.group(2)
        for m in re.finditer(r"^([A-Za-z0-9][A-Za-z0-9_.\-]*)==(\S+)", path.read_text(), flags=re.M)
    }


@pytest.mark.parametrize("flavour", sorted(lock.LOCKS))
def test_locks_are_current(flavour):
    assert lock.stale_message(lock.LOCKS[flavour]) is None


def _copy_inputs(tmp_path: Path) -> Path:
    for rel in ("pyproject.toml", "requirements/pins.in", "requirements/lock.txt", "requirements/lock-cuda.txt"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(ROOT / rel, tmp_path / rel)
    (tmp_path / "scripts").mkdir()
    shutil.copy(ROOT / "scripts" / "lock.py", tmp_path / "scripts" / "lock.py")
    return tmp_path


def _check(root: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "lock.py"), "--check"], capture_output=True, text=True, cwd=root
    )


def test_guard_passes_on_a_copy_and_fails_when_a_dependency_changes(tmp_path):
    root = _copy_inputs(tmp_path)
    assert _check(root).returncode == 0
    pyproject = root / "pyproject.toml"
    text = pyproject.read_text()
    assert '"pandas>=2,<4",' in text
    pyproject.write_text(text.replace('"pandas>=2,<4",', '"pandas>=2,<3",'))
    res = _check(root)
    assert res.returncode == 1
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 2  # one line per stale lock
    assert lines[0] == (
        "requirements/lock.txt is stale: pyproject.toml or requirements/pins.in changed since it was compiled; "
        "run `make lock` (and commit the lock)"
    )


def test_guard_ignores_what_does_not_reach_the_lock(tmp_path):
    """Prose, tool settings and the version field are not lock inputs: editing them is not stale."""
    root = _copy_inputs(tmp_path)
    pyproject = root / "pyproject.toml"
    pyproject.write_text(pyproject.read_text().replace("line-length = 120", "line-length = 100"))
    assert _check(root).returncode == 0


def test_guard_fails_on_a_changed_pin(tmp_path):
    root = _copy_inputs(tmp_path)
    pins = root / "requirements" / "pins.in"
    pins.write_text(pins.read_text().replace("torch==2.13.0", "torch==2.14.1"))
    assert "run `make lock`" in _check(root).stderr


def test_excluded_packages_are_out_of_both_locks():
    for path in lock.LOCKS.values():
        pins = _pins(path)
        assert not set(lock.EXCLUDED) & set(pins), path
        assert pins["filelock"] < "4.3"  # lmms-eval 0.7.3 imports filelock._api (gone in 4.3.1)


def test_locks_differ_only_in_torch_and_cuda_packages():
    cpu, cuda = _pins(lock.LOCKS["cpu"]), _pins(lock.LOCKS["cuda"])
    assert cpu["torch"] == "2.13.0+cpu" and cuda["torch"] == "2.13.0"
    shared = set(cpu) & set(cuda)
    assert {k for k in shared if cpu[k] != cuda[k]} == {"torch"}
    assert set(cpu) - set(cuda) == set()
    assert all(k.startswith(("nvidia-", "cuda-", "triton")) for k in set(cuda) - set(cpu))


def test_installed_environment_is_exactly_the_lock():
    """`pip freeze` of this venv against the lock it was built from (the Makefile copies it there)."""
    used = Path(sys.prefix) / "mmtok-lock.txt"
    if not used.exists():
        pytest.skip(f"{used} is absent: this environment was not built by `make venv`")
    pins = _pins(used)
    installed = {_norm(d.metadata["Name"]): d.version for d in metadata.distributions()}
    installed.pop("mmtok")
    assert {k: v for k, v in installed.items() if k not in pins} == {}, "installed but not in the lock"
    assert {k: (v, pins[k]) for k, v in installed.items() if pins[k] != v} == {}, "installed at another version"
    assert {k for k in pins if k not in installed} == set(), "in the lock but not installed"


def test_lmms_eval_private_filelock_import_works():
    import filelock._api  # noqa: F401  (what lmms-eval's evaluator imports)
