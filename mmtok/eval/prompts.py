"""Prompt formats and image preprocessing for the evaluation wrapper, dispatched to the model's family.

Three choices shift absolute benchmark numbers, so all are explicit options:

prompt_format, image_preprocess
    Each family declares the values it offers (`FamilySpec.prompt_formats` / `.image_preprocess`)
    and implements them in its folder (`mmtok/models/<family>/prompts.py`, its `InputRules`), with
    the stop strings its lmms-eval wrapper drops; docs/families.md lists them per family. The
    defaults ("hf" + "crop") are what a plain HF user would get: the processor's own chat template
    and the HF image processor as is. A value no family offers, or one the model's family does not
    offer, is a one-line error.

multi_image (documents with several images; the LLM here receives exactly one image per prompt)
    "error"     refuse: a document whose task gives more than one image fails the run, naming the option.
    "first"     use the first image. MMMU: the MMMU repository's evaluation of single-image models
                feeds `image_1`, and lmms-eval's `mmmu_doc_to_visual` lists the images the question
                references in name order (`image_1` first).
    "middle"    use the image at index n // 2. SEED-Bench video questions: lmms-eval's
                `seed_doc_to_visual` returns all frames it stores for the clip, whereas the original
                SEED evaluation of the paper's single-image baselines extracts the middle frame of each
                video; the middle stored frame is the closest lmms-eval offers (an approximation: the
                stored frames are a sample of the clip, not all of its frames).
    Single-image documents are unaffected by the choice; each sample records `n_images`.

image_scale (the resize baseline): the picked image's sides are scaled by it (`scale_image`) before
the family's rule and the processor, on every family alike.
"""

from __future__ import annotations

from PIL import Image

from mmtok.eval.protocol import IMAGE_PREPROCESS, MULTI_IMAGE, PROMPT_FORMATS, check_family_options
from mmtok.models.registry import family
from mmtok.models.spec import image_token


def check_options(prompt_format: str, image_preprocess: str, model_type: str) -> None:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt_format {prompt_format!r}; valid: {', '.join(PROMPT_FORMATS)}")
    if image_preprocess not in IMAGE_PREPROCESS:
        raise ValueError(f"unknown image_preprocess {image_preprocess!r}; valid: {', '.join(IMAGE_PREPROCESS)}")
    check_family_options(model_type, prompt_format, image_preprocess)


def check_multi_image(multi_image: str) -> None:
    if multi_image not in MULTI_IMAGE:
        raise ValueError(f"unknown multi_image {multi_image!r}; valid: {', '.join(MULTI_IMAGE)}")


def pick_image(visuals, multi_image: str = "error", where: str = "document") -> Image.Image:
    """The one image the LLM receives from a document's visuals (lmms-eval's `doc_to_visual` list).

    `multi_image` decides for several images (see the module docstring); anything other than a
    non-empty list of PIL images (videos as paths, audio, nothing) is refused whatever the policy.
    `where` names the document in the (one-line) error messages.
    """
    check_multi_image(multi_image)
    visuals = list(visuals or [])
    if not visuals or not all(isinstance(v, Image.Image) for v in visuals):
        kinds = ", ".join(sorted({type(v).__name__ for v in visuals})) or "nothing"
        raise ValueError(f"{where}: expected PIL images, got {len(visuals)} visual(s) ({kinds})")
    if len(visuals) == 1:
        return visuals[0]
    if multi_image == "error":
        raise ValueError(
            f"{where} has {len(visuals)} images and the LLM takes one: set multi_image=first or "
            f"multi_image=middle to pick one (multi_image=error refuses such documents)"
        )
    return visuals[0] if multi_image == "first" else visuals[len(visuals) // 2]


def scale_image(image: Image.Image, scale: float) -> Image.Image:
    """The resize baseline (the paper's Table 7): both sides divided by d = 1 / `scale`, as the MMTok
    release's commented-out experiment does (`(int(W // d), int(H // d))`, LANCZOS), before any
    family rule or processor; a side never drops below one pixel. `scale` 1 returns `image` itself."""
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 < scale <= 1.0:
        raise ValueError(f"image_scale must be a number in (0, 1], got {scale!r}")
    if scale == 1.0:
        return image
    d = 1.0 / scale
    width, height = image.size
    return image.resize((max(1, int(width // d)), max(1, int(height // d))), Image.LANCZOS)


def build_prompt(processor, question: str, prompt_format: str, model_type: str) -> str:
    """The full prompt text for one image + `question` (the image goes first) for family `model_type`."""
    check_options(prompt_format, "crop", model_type)
    return family(model_type).input_rules().prompt(processor, question, prompt_format)


def preprocess_image(image: Image.Image, processor, mode: str, model_type: str) -> Image.Image:
    """The PIL image handed to the processor of family `model_type` under `mode` (the family's rule)."""
    check_options("hf", mode, model_type)
    return family(model_type).input_rules().image(image, processor, mode)


def stop_strings(until, model_type: str) -> list[str]:
    """The task's `until` (a string or a list) as the stop strings the answer is cut at (less those the
    family's lmms-eval wrapper drops)."""
    until = [until] if isinstance(until, str) else list(until or [])
    dropped = family(model_type).input_rules().dropped_stops
    return [u for u in until if u not in dropped]


__all__ = [
    "build_prompt",
    "check_multi_image",
    "check_options",
    "image_token",
    "pick_image",
    "preprocess_image",
    "scale_image",
    "stop_strings",
]
