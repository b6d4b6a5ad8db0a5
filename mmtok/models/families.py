"""The model families mmtok runs on, by HF `model_type`, and what each offers a pruning method.

Importable without torch or transformers, so the runner can refuse a pruner that does not apply
to a family before any weights load. The adapters that do the work live beside it, one module per
family (`mmtok.models.llava`, `mmtok.models.qwen25vl`).

Traits (what a method may `require`):
  "cls"      the vision tower has a CLS token whose attention ranks patches (CLIP in LLaVA)
  "rope_1d"  the LLM has 1-D position ids, so a method may renumber positions after pruning
"""

from __future__ import annotations

from dataclasses import dataclass

TRAITS = {
    "cls": "a CLS token in the vision tower",
    "rope_1d": "1-D position ids (it renumbers positions inside the LLM)",
}


@dataclass(frozen=True)
class FamilyInfo:
    model_type: str  # HF config.model_type
    hf_class: str  # the transformers class that loads it, unmodified
    traits: frozenset[str]
    label: str  # for messages and the README


FAMILIES: dict[str, FamilyInfo] = {
    info.model_type: info
    for info in (
        FamilyInfo("llava", "LlavaForConditionalGeneration", frozenset({"cls", "rope_1d"}), "LLaVA-1.5"),
        FamilyInfo("llava_next", "LlavaNextForConditionalGeneration", frozenset({"cls", "rope_1d"}), "LLaVA-NeXT"),
        FamilyInfo("qwen2_5_vl", "Qwen2_5_VLForConditionalGeneration", frozenset(), "Qwen2.5-VL"),
    )
}


def family_info(model_type: str) -> FamilyInfo:
    if model_type not in FAMILIES:
        raise ValueError(f"unsupported model_type {model_type!r}; valid: {', '.join(FAMILIES)}")
    return FAMILIES[model_type]


def missing_traits(requires: frozenset[str], model_type: str) -> list[str]:
    """The traits of `requires` that family `model_type` lacks (sorted)."""
    return sorted(set(requires) - family_info(model_type).traits)


def refusal(name: str, requires: frozenset[str], model_type: str) -> str | None:
    """The one-line reason a method requiring `requires` cannot run on `model_type`, or None."""
    missing = missing_traits(requires, model_type)
    if not missing:
        return None
    needs = " and ".join(TRAITS[t] for t in missing)
    return f"pruner {name!r} does not apply to {family_info(model_type).label} ({model_type}): it needs {needs}"
