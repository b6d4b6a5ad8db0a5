"""The name -> class table of every pruner. A method registers itself with `@register`; the package
imports every module of `mmtok/pruners/` on first use, so a new method is one module + one YAML."""

from __future__ import annotations

PRUNERS: dict[str, type] = {}


def register(cls: type) -> type:
    """Class decorator: make `cls` findable by its `name` (`build_pruner(cls.name, ...)`)."""
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{cls.__name__} needs a non-empty ClassVar `name` to be registered")
    if name in PRUNERS and PRUNERS[name] is not cls and PRUNERS[name].__qualname__ != cls.__qualname__:
        raise ValueError(f"pruner name {name!r} is taken by {PRUNERS[name].__qualname__}")
    PRUNERS[name] = cls
    return cls
