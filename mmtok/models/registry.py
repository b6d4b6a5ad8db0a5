"""The model families mmtok runs on, by HF `model_type`: who they are and what each offers a pruning method.

Importable without torch or transformers, so the config validator and the runner can refuse a
pruner or an option a family does not have before any weights load. Every family lives in its own
folder `mmtok/models/<family>/` whose `__init__.py` (torch-free) defines `SPECS`, a tuple of
`FamilySpec`; this module finds them by listing the sub-packages of `mmtok.models`, so adding a
family edits nothing here.

Traits (what a method may `require`):
  "cls"              the vision tower has a CLS token whose attention ranks patches
  "tower_attention"  an attention score per vision token from the tower: the CLS row where there is
                     one, else a substitute rule the family declares and implements in its adapter
                     (`FamilyAdapter.encode_with_attention`)
  "rope_1d"          the LLM has 1-D position ids, so a method may renumber positions after pruning
"""

from __future__ import annotations

import importlib
import pkgutil

import mmtok.models as _models
from mmtok.models.spec import FamilySpec

TRAITS = {
    "cls": "a CLS token in the vision tower",
    "tower_attention": "an attention score per vision token from the vision tower (CLS row or a declared substitute)",
    "rope_1d": "1-D position ids (it renumbers positions inside the LLM)",
}


def _discover() -> dict[str, FamilySpec]:
    found: dict[str, FamilySpec] = {}
    for info in pkgutil.iter_modules(_models.__path__):  # sorted by name: a stable order for messages
        if not info.ispkg:
            continue
        # family folders are discovered, not named; their __init__ imports mmtok.models.spec only
        package = importlib.import_module(f"{_models.__name__}.{info.name}")
        for spec in getattr(package, "SPECS", ()):
            if spec.model_type in found:
                raise ValueError(f"model_type {spec.model_type!r} is declared by two family folders")
            unknown = sorted(spec.traits - set(TRAITS))
            if unknown:
                raise ValueError(f"{spec.model_type}: unknown traits {unknown}; valid: {', '.join(TRAITS)}")
            found[spec.model_type] = spec
    return found


FAMILIES: dict[str, FamilySpec] = _discover()


def family_names() -> tuple[str, ...]:
    return tuple(FAMILIES)


def family(model_type: str) -> FamilySpec:
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model_type {model_type!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def family_of(config) -> FamilySpec | None:
    """The spec of an HF config's `model_type`, or None for a model type no family declares."""
    return FAMILIES.get(getattr(config, "model_type", None))


def missing_traits(requires: frozenset[str], model_type: str) -> list[str]:
    """The traits of `requires` that family `model_type` lacks (sorted)."""
    return sorted(set(requires) - family(model_type).traits)


def refusal(name: str, requires: frozenset[str], model_type: str) -> str | None:
    """The one-line reason a method requiring `requires` cannot run on `model_type`, or None."""
    missing = missing_traits(requires, model_type)
    if not missing:
        return None
    needs = " and ".join(TRAITS[t] for t in missing)
    return f"pruner {name!r} does not apply to {family(model_type).label} ({model_type}): it needs {needs}"


def _union(values) -> tuple[str, ...]:
    out: list[str] = []
    for v in values:
        if v not in out:
            out.append(v)
    return tuple(out)


def prompt_formats() -> tuple[str, ...]:
    """Every `prompt_format` some family offers (in family order)."""
    return _union(v for spec in FAMILIES.values() for v in spec.prompt_formats)


def image_preprocess_modes() -> tuple[str, ...]:
    """Every `image_preprocess` some family offers (in family order)."""
    return _union(v for spec in FAMILIES.values() for v in spec.image_preprocess)


def option_meaning(value: str) -> str | None:
    """What a family-specific option value means, from the family that offers it."""
    return next((s.option_meanings[value] for s in FAMILIES.values() if value in s.option_meanings), None)


def pixel_bounds_families() -> str:
    """The labels of the families whose processor takes min/max_pixels ("A / B"), for messages."""
    return " / ".join(_union(s.label for s in FAMILIES.values() if s.pixel_bounds))


def method_defaults(model_type: str, method: str) -> dict:
    """The family's defaults for pruner `method`'s parameters ({} when none or an unknown family)."""
    spec = FAMILIES.get(model_type)
    return dict(spec.method_defaults.get(method, {})) if spec is not None else {}
