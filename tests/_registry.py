"""Tests that register pruners leave the global registry exactly as they found it."""

from __future__ import annotations

import contextlib

from mmtok.pruners import PRUNERS


@contextlib.contextmanager
def registry_snapshot():
    """Inside: register freely. On exit: the registry holds exactly the classes it held before, by name."""
    saved = dict(PRUNERS)  # reading it discovers every method module first
    try:
        yield PRUNERS
    finally:
        PRUNERS.clear()
        PRUNERS.update(saved)
