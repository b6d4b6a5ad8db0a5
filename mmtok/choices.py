"""The valid values of the evaluation protocol switches, in one torch-free place: the config
validator (which must answer before torch loads) and the evaluation layer both read them."""

from __future__ import annotations

PROMPT_FORMATS = ("hf", "vicuna_v1")
IMAGE_PREPROCESS = ("crop", "pad")
MULTI_IMAGE = ("error", "first", "middle")

# The switches a model family supports, by model_type (a family not listed takes every value).
# vicuna_v1 is the original LLaVA conversation and pad LLaVA-1.5's pad-to-square; Qwen2.5-VL has its
# own chat template (system prompt included) and sizes images by min/max pixels, never crops.
FAMILY_OPTIONS: dict[str, dict[str, tuple[str, ...]]] = {
    "qwen2_5_vl": {"prompt_format": ("hf",), "image_preprocess": ("crop",)},
}
_MEANING = {"vicuna_v1": "the original LLaVA conversation template", "pad": "LLaVA-1.5's pad-to-square"}


def check_family_options(model_type: str, prompt_format: str, image_preprocess: str) -> None:
    """One-line ValueError for a protocol switch the family `model_type` does not have."""
    allowed = FAMILY_OPTIONS.get(model_type, {})
    for key, value in (("prompt_format", prompt_format), ("image_preprocess", image_preprocess)):
        valid = allowed.get(key)
        if valid is not None and value not in valid:
            meaning = f" ({_MEANING[value]})" if value in _MEANING else ""
            raise ValueError(
                f"{key}={value}{meaning} does not apply to {model_type} checkpoints; valid there: {', '.join(valid)}"
            )
