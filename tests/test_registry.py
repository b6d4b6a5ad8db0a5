"""A method is one module + one YAML: the package discovers modules, `@register` names them."""

from __future__ import annotations

import importlib
import pkgutil
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
from omegaconf import OmegaConf

import mmtok.pruners as pruners
from mmtok.pruners import PRUNERS, Pruner, method_modules, register

CONFIGS = Path(__file__).resolve().parents[1] / "configs" / "pruner"


def test_every_method_module_is_discovered_and_has_a_config():
    # the declared rule: top-level modules are methods, subpackages are infrastructure
    modules = {m.name for m in pkgutil.iter_modules(pruners.__path__) if not m.ispkg}
    assert method_modules() == sorted(modules)
    assert {cls.__module__.rsplit(".", 1)[1] for cls in PRUNERS.values()} == modules
    assert set(PRUNERS) <= {p.stem for p in CONFIGS.glob("*.yaml")}
    # every other file is a variant of a registered method (the paper's method keys, e.g. mmtok_tv_raw)
    for path in CONFIGS.glob("*.yaml"):
        node = OmegaConf.load(path)
        node = node.pruner if "pruner" in node else node  # none.yaml is a _global_ file
        assert node.name in PRUNERS and (path.stem == node.name or path.stem not in PRUNERS), path.name
        assert node.get("then") is None or node.then.name in PRUNERS, path.name  # a composition


def test_register_rejects_nameless_and_taken_names(pruner_registry):
    @dataclass
    class Nameless(Pruner):
        pass

    with pytest.raises(ValueError, match="needs a non-empty ClassVar `name`"):
        register(Nameless)

    @dataclass
    class Impostor(Pruner):
        name: ClassVar[str] = "fastv"

    message = (
        "pruner name 'fastv' is taken by mmtok.pruners.fastv.FastVPruner; "
        "give tests.test_registry.test_register_rejects_nameless_and_taken_names.<locals>.Impostor another `name`"
    )
    with pytest.raises(ValueError, match=f"^{message.replace('.', '[.]').replace('(', '[(]')}$"):
        register(Impostor)
    assert PRUNERS["fastv"].__name__ == "FastVPruner"


def test_a_class_of_the_same_name_from_another_module_is_refused(pruner_registry):
    """Two modules defining `NormPruner` with name "norm" (a copied example) is an error, not a silent swap."""

    def define(module: str) -> type:
        return type(
            "NormPruner", (Pruner,), {"name": "registry_test_probe", "__module__": module, "__qualname__": "NormPruner"}
        )

    first = register(define("first_module"))
    assert register(first) is first  # the same class again (a reloaded module) keeps its name
    with pytest.raises(
        ValueError, match=r"^pruner name 'registry_test_probe' is taken by first_module\.NormPruner; give "
    ):
        register(define("second_module"))
    assert PRUNERS["registry_test_probe"] is first


def test_the_snapshot_restores_the_registry(pruner_registry):
    before = dict(PRUNERS)

    @dataclass
    class Extra(Pruner):
        name: ClassVar[str] = "extra_for_the_snapshot_test"

    from tests._registry import registry_snapshot

    with registry_snapshot():
        register(Extra)
        del PRUNERS["random"]
    assert dict(PRUNERS) == before


def test_importing_the_package_imports_no_method():
    """The public API never imports a method module (they import it): no import cycle through __init__."""
    code = "import sys, mmtok.pruners; print(sorted(m for m in sys.modules if m.startswith('mmtok.pruners.')))"
    import subprocess

    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    loaded = {name.rsplit(".", 1)[1] for name in eval(out)}
    assert not loaded & set(method_modules()), loaded
    assert importlib.import_module("mmtok.pruners.fastv").FastVPruner is PRUNERS["fastv"]
