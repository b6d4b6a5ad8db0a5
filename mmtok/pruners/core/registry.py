"""The name -> class table of every pruner, filled by `@register` and by discovering the method modules.

The rule that tells methods from infrastructure is the package layout: every top-level module of
`mmtok/pruners/` is a method (it registers one class), infrastructure lives in subpackages
(`core/`, `inllm/`). The first read of `PRUNERS` imports every method module, so a new method is
one module + one YAML and nothing else is edited.
"""

from __future__ import annotations

import importlib
import pkgutil
from collections.abc import Iterator, MutableMapping
from pathlib import Path

PACKAGE = "mmtok.pruners"
_PACKAGE_DIR = Path(__file__).resolve().parents[1]


def method_modules() -> list[str]:
    """Names of the method modules: top-level, non-package modules of `mmtok/pruners/` not starting with "_"."""
    return sorted(m.name for m in pkgutil.iter_modules([str(_PACKAGE_DIR)]) if not m.ispkg and m.name[0] != "_")


class Registry(MutableMapping):
    """A dict of pruner classes by name that imports every method module on its first read."""

    def __init__(self) -> None:
        self._classes: dict[str, type] = {}
        self._discovered = False

    def discover(self) -> None:
        if self._discovered:
            return
        self._discovered = True  # set first: the modules imported below call `register`
        try:
            for module in method_modules():
                # imported by name, found on disk: the methods are not static imports of this package
                importlib.import_module(f"{PACKAGE}.{module}")
        except BaseException:
            self._discovered = False
            raise

    def __getitem__(self, name: str) -> type:
        self.discover()
        return self._classes[name]

    def __setitem__(self, name: str, cls: type) -> None:
        self._classes[name] = cls

    def __delitem__(self, name: str) -> None:
        self.discover()
        del self._classes[name]

    def __iter__(self) -> Iterator[str]:
        self.discover()
        return iter(self._classes)

    def __len__(self) -> int:
        self.discover()
        return len(self._classes)

    def __repr__(self) -> str:
        return f"Registry({list(self)})"


PRUNERS = Registry()


def register(cls: type) -> type:
    """Class decorator: make `cls` findable by its `name` (`build_pruner(cls.name, ...)`).

    A name belongs to one class: registering it again from another module (or another class) is a
    one-line error naming the holder; the same class re-registered (its module reloaded) replaces it."""
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a non-empty ClassVar `name` to be registered")
    PRUNERS.discover()  # a name taken by a method module is found before it is handed out
    taken = PRUNERS._classes.get(name)
    if taken is not None and taken is not cls and _where(taken) != _where(cls):
        raise ValueError(f"pruner name {name!r} is taken by {_where(taken)}; give {_where(cls)} another `name`")
    PRUNERS[name] = cls
    return cls


def _where(cls: type) -> str:
    return f"{cls.__module__}.{cls.__qualname__}"
