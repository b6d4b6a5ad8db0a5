"""The valid values of the evaluation protocol switches, in one torch-free place: the config
validator (which must answer before torch loads) and the evaluation layer both read them.
`prompt_format` / `image_preprocess` are the values the families offer (`mmtok.models.registry`)."""

from __future__ import annotations

from mmtok.models.registry import family, image_preprocess_modes, option_meaning, prompt_formats

PROMPT_FORMATS = prompt_formats()
IMAGE_PREPROCESS = image_preprocess_modes()
MULTI_IMAGE = ("error", "first", "middle")


def check_family_options(model_type: str, prompt_format: str, image_preprocess: str) -> None:
    """One-line ValueError for a protocol switch the family `model_type` does not have."""
    spec = family(model_type)
    for key, value, valid in (
        ("prompt_format", prompt_format, spec.prompt_formats),
        ("image_preprocess", image_preprocess, spec.image_preprocess),
    ):
        if value not in valid:
            meaning = option_meaning(value)
            meaning = f" ({meaning})" if meaning else ""
            raise ValueError(
                f"{key}={value}{meaning} does not apply to {model_type} checkpoints; valid there: {', '.join(valid)}"
            )
