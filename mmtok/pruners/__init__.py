"""Every pruner, found by name. Adding a method = one module with one dataclass + one line here."""

from __future__ import annotations

from dataclasses import fields

from mmtok.pruners.base import Pruner
from mmtok.pruners.divprune import DivPrunePruner
from mmtok.pruners.fastv import FastVPruner
from mmtok.pruners.mmtok import MMTokPruner
from mmtok.pruners.none import NoPruner
from mmtok.pruners.random import RandomPruner
from mmtok.pruners.sparsevlm import SparseVLMPruner
from mmtok.pruners.visionzip import VisionZipPruner

PRUNERS: dict[str, type[Pruner]] = {
    cls.name: cls
    for cls in (NoPruner, RandomPruner, MMTokPruner, VisionZipPruner, DivPrunePruner, FastVPruner, SparseVLMPruner)
}


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


__all__ = ["PRUNERS", "Pruner", "build_pruner", "pruner_names"]
