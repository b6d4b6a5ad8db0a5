"""Every pruner, found by name. Adding a method = one module (a dataclass decorated with
`@register`) + one `configs/pruner/<name>.yaml`; this package imports every module in it."""

from __future__ import annotations

import importlib
import pkgutil
from dataclasses import fields

from mmtok.models.registry import missing_traits, refusal
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


def pruners_for(model_type: str) -> list[str]:
    """Names of the pruners that apply to the model family `model_type`."""
    return [name for name, cls in PRUNERS.items() if not missing_traits(cls.requires, model_type)]


def check_applies(name: str, model_type: str) -> None:
    """One-line ValueError if pruner `name` cannot run on family `model_type` (config only, no weights)."""
    if name not in PRUNERS:
        raise ValueError(f"unknown pruner {name!r}; valid: {', '.join(PRUNERS)}")
    reason = refusal(name, PRUNERS[name].requires, model_type)
    if reason:
        raise ValueError(f"{reason}; valid there: {', '.join(pruners_for(model_type))}")


__all__ = ["PRUNERS", "Pruner", "build_pruner", "check_applies", "pruner_names", "pruners_for", "register"]
