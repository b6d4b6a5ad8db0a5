"""The public API of the pruners: everything a method module imports, and building a pruner by name.

A method is one module of this folder (a dataclass decorated with `@register`) + one
`configs/pruner/<name>.yaml`; it imports only from here (and `mmtok.selection.*` for its maths).
Every top-level module here is a method; infrastructure lives in the subpackages `core/` (registry,
records, contract, request engine) and `inllm/` (the in-LLM API, scores, views, decoder hooks).
`PRUNERS` imports the method modules on its first read (`mmtok.pruners.core.registry`), so this
package never imports a method and a method can import this package. See docs/adding-a-pruner.md.
"""

from __future__ import annotations

from dataclasses import fields

from mmtok.models.adapters import (
    CropSelection,
    FamilyAdapter,
    ImageCrops,
    ImageSource,
    ImageSpan,
    image_capacity,
    max_crops,
    tokens_per_crop,
)
from mmtok.models.registry import family_of, missing_traits, refusal
from mmtok.models.source import cached_hub_snapshot, is_hub_id
from mmtok.pruners.core.contract import Pruner
from mmtok.pruners.core.records import LayerTrace, PruneStats, Request, SampleContext, SampleStats
from mmtok.pruners.core.registry import PRUNERS, method_modules, register
from mmtok.pruners.core.tower import cls_attention_and_keys, encode_with_cls_signals
from mmtok.pruners.inllm.api import InLLMPruner, one_cut_schedule
from mmtok.pruners.inllm.compose import Composed
from mmtok.pruners.inllm.scoring import attention_rows, rotary_keys
from mmtok.pruners.inllm.views import Cut, LayerView, Stage, keep_vision


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


__all__ = [
    # writing a method
    "Pruner",
    "InLLMPruner",
    "Composed",
    "register",
    "CropSelection",
    "ImageCrops",
    "ImageSource",
    "SampleContext",
    "FamilyAdapter",
    "ImageSpan",
    "Cut",
    "keep_vision",
    "one_cut_schedule",
    "LayerView",
    "Stage",
    "cls_attention_and_keys",
    "encode_with_cls_signals",
    "attention_rows",
    "rotary_keys",
    "family_of",
    "image_capacity",
    "max_crops",
    "tokens_per_crop",
    "cached_hub_snapshot",
    "is_hub_id",
    # what a pruner reports
    "PruneStats",
    "SampleStats",
    "LayerTrace",
    "Request",
    # finding and building one
    "PRUNERS",
    "build_pruner",
    "check_applies",
    "method_modules",
    "pruner_names",
    "pruners_for",
]
