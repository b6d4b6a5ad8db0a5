"""The evaluation protocol of a run (`RunProtocol`: prompt format, image preprocessing, multi-image
rule, generation cap, batch size, ...) and the valid values of its switches, in one torch-free place:
the config validator (which must answer before torch loads) and the evaluation layer both read them.
`prompt_format` / `image_preprocess` are the values the families offer (`mmtok.models.registry`)."""

from __future__ import annotations

from dataclasses import dataclass

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


# the benchmarks whose paper metrics `mmtok.eval.metrics` computes
SUMMARIES = ("pope", "gqa", "mme", "mmstar", "ocrbench")


@dataclass(frozen=True)
class RunProtocol:
    """How a run evaluates: built once by the runner from its config and handed to `evaluate`, which
    hands it to the lmms-eval model class."""

    batch_size: int = 1
    max_new_tokens: int = 16  # the cap; a task's own `max_new_tokens` lowers it
    prompt_format: str = "hf"  # hf (the checkpoint's chat template) | vicuna_v1
    image_preprocess: str = "crop"  # crop (HF centre crop) | pad (pad-to-square)
    multi_image: str = "error"  # documents with several images: error | first | middle
    limit: int | None = None  # samples per task; None = the whole benchmark
    summary: str | None = None  # one of SUMMARIES for every task, or None to infer each task's
    progress: bool = True
    image_scale: float = 1.0  # the resize baseline: each image's sides scaled by this before the processor


def mme_limit_problem(limit: int | None) -> str | None:
    """Why `limit` cannot run MME (its questions come in pairs that acc+ scores together), or None."""
    if limit is not None and limit % 2:
        return f"MME questions come in pairs (acc+ scores both): limit must be even; got {limit}"
    return None


DEFAULT_PROTOCOL = RunProtocol()  # frozen: safe to share as a default argument
