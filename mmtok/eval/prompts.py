"""Prompt formats and image preprocessing for the evaluation wrapper.

Three choices shift absolute benchmark numbers, so all are explicit options:

prompt_format
    "hf"        the processor's own chat template (llava-hf checkpoints: "USER: <image>\\n{q} ASSISTANT:",
                no system prompt). What the HF model cards and lmms-eval's `llava_hf` wrapper use.
    "vicuna_v1" the original LLaVA conversation template `conv_vicuna_v1`: the system prompt, then
                "USER: <image>\\n{q} ASSISTANT:". What the original LLaVA-1.5 and the Vicuna-based
                LLaVA-NeXT (7B/13B) evaluation scripts use.

image_preprocess
    "crop"      the HF image processor as is (resize the shortest edge, centre-crop).
    "pad"       first pad the image to a square with the image processor's mean colour (the
                original LLaVA-1.5 `expand2square`, `image_aspect_ratio="pad"`), then the processor
                (whose centre crop is then a no-op).

multi_image (documents with several images; the LLM here receives exactly one image per prompt)
    "error"     refuse: a document whose task gives more than one image fails the run, naming the option.
    "first"     use the first image. MMMU: the MMMU repository's evaluation of single-image models
                (LLaVA included) feeds `image_1`, and lmms-eval's `mmmu_doc_to_visual` lists the
                images the question references in name order (`image_1` first).
    "middle"    use the image at index n // 2. SEED-Bench video questions: lmms-eval's
                `seed_doc_to_visual` returns all frames it stores for the clip, whereas the original
                LLaVA-1.5 SEED evaluation extracts the middle frame of each video; the middle stored
                frame is the closest lmms-eval offers (an approximation: the stored frames are a
                sample of the clip, not all of its frames).
    Single-image documents are unaffected by the choice; each sample records `n_images`.

The paper's LLaVA-1.5 numbers come from the original LLaVA code: use `vicuna_v1` + `pad`.
Its LLaVA-NeXT numbers come from the original LLaVA-NeXT code, which uses `vicuna_v1` (Vicuna
checkpoints) and "anyres" preprocessing, not pad-to-square: use `vicuna_v1` + `crop` there (HF's anyres
differs from the original only in how the base crop is resized). The defaults ("hf" + "crop") are
what a plain HF user would get.
"""

from __future__ import annotations

from PIL import Image

from mmtok.choices import IMAGE_PREPROCESS, MULTI_IMAGE, PROMPT_FORMATS

VICUNA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


def check_options(prompt_format: str, image_preprocess: str) -> None:
    if prompt_format not in PROMPT_FORMATS:
        raise ValueError(f"unknown prompt_format {prompt_format!r}; valid: {', '.join(PROMPT_FORMATS)}")
    if image_preprocess not in IMAGE_PREPROCESS:
        raise ValueError(f"unknown image_preprocess {image_preprocess!r}; valid: {', '.join(IMAGE_PREPROCESS)}")


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


def image_token(processor) -> str:
    return getattr(processor, "image_token", None) or "<image>"


def build_prompt(processor, question: str, prompt_format: str = "hf") -> str:
    """The full prompt text for one image + `question` (the image goes first, as in LLaVA)."""
    check_options(prompt_format, "crop")
    token = image_token(processor)
    if token in question:
        # The formats place the image themselves; a second placeholder would mean a second image.
        raise ValueError(f"the question already contains the image placeholder {token!r}: {question!r}")
    if prompt_format == "hf":
        conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
        return processor.apply_chat_template(conversation, add_generation_prompt=True)
    # conv_vicuna_v1: system + sep " " + "USER: " + message + sep " " + "ASSISTANT:"
    return f"{VICUNA_V1_SYSTEM} USER: {token}\n{question} ASSISTANT:"


def mean_color(processor) -> tuple[int, int, int]:
    """The image processor's normalisation mean as an RGB colour (what `expand2square` pads with)."""
    mean = processor.image_processor.image_mean
    return tuple(int(x * 255) for x in mean)


def expand2square(image: Image.Image, background: tuple[int, int, int]) -> Image.Image:
    """Pad to a square canvas of side max(w, h), the image centred, like the original LLaVA."""
    width, height = image.size
    if width == height:
        return image
    side = max(width, height)
    canvas = Image.new(image.mode, (side, side), background)
    canvas.paste(image, ((side - width) // 2, (side - height) // 2))
    return canvas


def preprocess_image(image: Image.Image, processor, mode: str = "crop") -> Image.Image:
    """The PIL image handed to the processor under `mode` ("crop": unchanged; "pad": squared)."""
    check_options("hf", mode)
    image = image.convert("RGB")
    if mode == "pad":
        return expand2square(image, mean_color(processor))
    return image
