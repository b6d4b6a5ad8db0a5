"""The compiled greedy (coverage_greedy.c): built with the system C compiler at first use, cached, loaded with ctypes.

No build step and no new dependency: the first process that wants it runs `$CC` (default `cc`)
once, about 0.1 s, and keeps the shared library in a cache folder, named by a hash of the source,
the compiler's version, the flags and the processor (the flags include `-march=native`, so a
library built for one processor is never loaded on another). Everything that can go wrong (no
compiler, a failed build, an unwritable cache, a library that will not load) leaves `load()`
returning None with the reason in `unavailable()`, and the greedy falls back to its pure
numpy / torch variants, which pick the same tokens. `MMTOK_NATIVE=0` turns the compiled path off;
`MMTOK_NATIVE_CACHE` names the cache folder (default `$XDG_CACHE_HOME/mmtok/native`, else
`~/.cache/mmtok/native`).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shutil
import subprocess
import tempfile
from pathlib import Path

SOURCE = Path(__file__).with_name("coverage_greedy.c")
# Plain IEEE arithmetic in the order written (no -ffast-math, no fused multiply-adds), which the
# exactness argument in the source relies on; -fno-trapping-math only lets the compiler vectorise
# the clamps (it changes no result).
FLAGS = ("-O3", "-std=c99", "-shared", "-fPIC", "-ffp-contract=off", "-fno-trapping-math", "-march=native")
# x86: use 512-bit vectors where the processor has them (the row updates are about 1.4x faster).
X86_FLAGS = ("-mprefer-vector-width=512",)

_state: dict[str, object] = {}


def _flags() -> tuple[str, ...]:
    return FLAGS + (X86_FLAGS if platform.machine().lower() in ("x86_64", "amd64") else ())


def _processor() -> str:
    """What `-march=native` depends on: the model and feature flags of this processor."""
    try:
        info = Path("/proc/cpuinfo").read_text(encoding="utf-8", errors="replace").splitlines()
        return "\n".join(sorted({line for line in info if line.startswith(("model name", "flags", "Features"))}))
    except OSError:
        return platform.processor() or platform.machine()


def _cache_dir() -> Path:
    if os.environ.get("MMTOK_NATIVE_CACHE"):
        return Path(os.environ["MMTOK_NATIVE_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mmtok" / "native"


def _build() -> ctypes.CDLL:
    if os.environ.get("MMTOK_NATIVE", "1") == "0":
        raise RuntimeError("turned off (MMTOK_NATIVE=0)")
    cc = os.environ.get("CC", "cc")
    if shutil.which(cc) is None:
        raise RuntimeError(f"no C compiler ({cc!r} not found; set CC)")
    version = subprocess.run([cc, "--version"], capture_output=True, text=True, timeout=30).stdout
    flags = _flags()
    key = hashlib.sha256(
        "\0".join([SOURCE.read_text(encoding="utf-8"), version, " ".join(flags), _processor()]).encode()
    ).hexdigest()[:16]
    folder = _cache_dir()
    target = folder / f"coverage_greedy-{key}.so"
    if not target.exists():
        folder.mkdir(parents=True, exist_ok=True)
        # A private name, then an atomic rename: processes building at once never load a half-written file.
        fd, tmp = tempfile.mkstemp(prefix=target.stem + ".", suffix=".so.tmp", dir=folder)
        os.close(fd)
        try:
            command = [cc, *flags, "-o", tmp, str(SOURCE)]
            done = subprocess.run(command, capture_output=True, text=True, timeout=120)
            if done.returncode != 0:
                raise RuntimeError(f"{cc} failed: {(done.stderr or done.stdout).strip().splitlines()[-1:]}")
            os.replace(tmp, target)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    lib = ctypes.CDLL(str(target))
    ptr, i64, f64 = ctypes.c_void_p, ctypes.c_int64, ctypes.c_double
    lib.mmtok_run.argtypes = [ptr, ptr, ptr, ptr, ptr, ptr, ptr, i64, i64, i64, i64, f64, f64, i64]
    lib.mmtok_run.restype = i64
    return lib


def load() -> ctypes.CDLL | None:
    """The compiled greedy's library, built on first use; None where it cannot be had (see `unavailable`)."""
    if "lib" not in _state:
        try:
            _state["lib"], _state["why"] = _build(), ""
        except (OSError, RuntimeError, subprocess.SubprocessError) as err:
            _state["lib"], _state["why"] = None, str(err) or type(err).__name__
    return _state["lib"]  # type: ignore[return-value]


def unavailable() -> str:
    """Why `load()` returns None ("" when it does not)."""
    load()
    return str(_state["why"])


def reset() -> None:
    """Forget the loaded library, so the next `load()` looks again (tests change the environment)."""
    _state.clear()
