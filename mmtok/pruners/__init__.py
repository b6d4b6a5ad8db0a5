"""Every pruner, found by name. Adding a method = one module (a dataclass decorated with
`@register`) + one `configs/pruner/<name>.yaml`; this package imports every module in it."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import fields

from mmtok.pruners.base import Pruner
from mmtok.pruners.registry import PRUNERS, register

# infrastructure, not methods
_NOT_METHODS = {"base", "inllm", "registry"}
for _module in sorted(m.name for m in pkgutil.iter_modules(__path__)):
    if _module not in _NOT_METHODS and not _module.startswith("_"):
        importlib.import_module(f"{__name__}.{_module}")


def pruner_names() -> list[str]:
    return list(PRUNERS)


def build_pruner(name: str, budget: int | None = None, **params) -> Pruner:
    """The pruner `name` with `budget` and any of its hyper-parameters; one-line errors otherwise."""
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}; valid: {', '.join(PRUNERS)}")
    cls = PRUNERS[name]
    valid = [f.name for f in fields(cls) if f.init and f.name != "budget"]
    unknown = sorted(set(params) - set(valid))
    if unknown:
        raise ValueError(f"unknown parameter(s) {', '.join(unknown)} for pruner {name!r}; valid: {', '.join(valid)}")
    return cls(budget=budget, **params)


__all__ = ["PRUNERS", "Pruner", "build_pruner", "pruner_names", "register"]
