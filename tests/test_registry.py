"""A method is one module + one YAML: the package discovers modules, `@register` names them."""

from __future__ import annotations

import pkgutil
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest

import mmtok.pruners as pruners
from mmtok.pruners import PRUNERS, Pruner, register

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pruner"


def test_every_method_module_is_discovered_and_has_a_config():
    modules = {m.name for m in pkgutil.iter_modules(pruners.__path__)} - {"base", "inllm", "registry"}
    assert {cls.__module__.rsplit(".", 1)[1] for cls in PRUNERS.values()} == modules
    assert {p.stem for p in CONFIGS.glob("*.yaml")} == set(PRUNERS)


def test_register_rejects_nameless_and_taken_names():
    @dataclass
    class Nameless(Pruner):
        pass

    with pytest.raises(ValueError, match="needs a non-empty ClassVar `name`"):
        register(Nameless)

    @dataclass
    class Impostor(Pruner):
        name: ClassVar[str] = "fastv"

    with pytest.raises(ValueError, match="pruner name 'fastv' is taken by FastVPruner"):
        register(Impostor)
    assert PRUNERS["fastv"].__name__ == "FastVPruner"
