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

Qwen2.5-VL (model_type qwen2_5_vl) has one protocol, lmms-eval 0.7.3's `qwen2_5_vl` wrappers' (the
MMTok release's Qwen evaluation is the same wrapper); `vicuna_v1` and `pad` are refused there:
    prompt      the chat template on [system "You are a helpful assistant.", user [image, question]]
                (the image first, then the text; LLaVA's "<image>" is removed from the question as
                lmms-eval does). `qwen2_5_vl_chat` sends no system turn and the template adds the
                same default one, so both wrappers give the same prompt.
    image       no crop, no pad: `qwen_vl_utils.fetch_image` as lmms-eval calls it (RGBA onto white,
                else RGB; `smart_resize` to sides that are multiples of patch x merge = 28 pixels with a
                pixel count in [min_pixels, max_pixels]; PIL's default resize), then the processor, whose
                own resize with the same bounds then keeps the size. The bounds are the processor's,
                loaded from `model.min_pixels` / `model.max_pixels` (lmms-eval: 256*28*28 / 1605632).
                Not reproduced: lmms-eval's `qwen2_5_vl` first re-encodes each image as JPEG (quality
                85; the release: PIL's default 75) and decodes it again; `qwen2_5_vl_chat` resizes
                twice (once with qwen_vl_utils' default bounds, 4 to 16384 tokens, then the processor's).
    stop        the task's `until` strings without "\\n\\n" (lmms-eval's `qwen2_5_vl` drops it "to
                prevent truncation"; the chat wrapper applies none).
    decoding    greedy, as every family here (the wrapper); the answer ends at the first EOS of the
                generation config (<|im_end|> or <|endoftext|>), special tokens skipped. lmms-eval
                stops at the tokenizer's <|im_end|> only, and where a task sets no cap its wrappers
                allow 128 (chat) / 32768 (simple) new tokens against our 1024 (llava_hf's).
"""

from __future__ import annotations

import math

from PIL import Image

from mmtok.choices import IMAGE_PREPROCESS, MULTI_IMAGE, PROMPT_FORMATS, check_family_options

VICUNA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


QWEN_SYSTEM_PROMPT = "You are a helpful assistant."  # lmms-eval's qwen2_5_vl default (= the template's)


def check_options(prompt_format: str, image_preprocess: str, model_type: str = "llava") -> None:
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


def image_token(processor) -> str:
    return getattr(processor, "image_token", None) or "<image>"


def build_prompt(processor, question: str, prompt_format: str = "hf", model_type: str = "llava") -> str:
    """The full prompt text for one image + `question` (the image goes first) for family `model_type`."""
    check_options(prompt_format, "crop", model_type)
    return _PROMPTS.get(model_type, _llava_prompt)(processor, question, prompt_format)


def qwen_messages(question: str, image=None) -> list[dict]:
    """lmms-eval's `qwen2_5_vl` message structure for one image + `question` (system turn, image, text)."""
    item = {"type": "image"} if image is None else {"type": "image", "image": image}
    return [
        {"role": "system", "content": QWEN_SYSTEM_PROMPT},
        {"role": "user", "content": [item, {"type": "text", "text": question}]},
    ]


def _qwen_prompt(processor, question: str, prompt_format: str) -> str:
    question = question.replace("<image>", "")  # as lmms-eval's qwen2_5_vl: the chat template places the image
    token = image_token(processor)
    if token in question:
        raise ValueError(f"the question already contains the image placeholder {token!r}: {question!r}")
    return processor.apply_chat_template(qwen_messages(question), tokenize=False, add_generation_prompt=True)


def _llava_prompt(processor, question: str, prompt_format: str) -> str:
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


def preprocess_image(image: Image.Image, processor, mode: str = "crop", model_type: str = "llava") -> Image.Image:
    """The PIL image handed to the processor of family `model_type` under `mode`
    (LLaVA: "crop" unchanged, "pad" squared; Qwen2.5-VL: lmms-eval's resize, see the module docstring)."""
    check_options("hf", mode, model_type)
    return _IMAGES.get(model_type, _llava_image)(image, processor, mode)


def _llava_image(image: Image.Image, processor, mode: str) -> Image.Image:
    image = image.convert("RGB")
    if mode == "pad":
        return expand2square(image, mean_color(processor))
    return image


def _qwen_image(image: Image.Image, processor, mode: str) -> Image.Image:
    from mmtok.models.qwen_processor import pixel_bounds, resize_factor  # defers transformers

    height, width = qwen_smart_resize(image.height, image.width, resize_factor(processor), *pixel_bounds(processor))
    return qwen_to_rgb(image).resize((width, height))


def qwen_to_rgb(image: Image.Image) -> Image.Image:
    """qwen_vl_utils' `to_rgb`: an RGBA image is composited onto white, anything else converted."""
    if image.mode == "RGBA":
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image, mask=image.split()[3])
        return canvas
    return image.convert("RGB")


QWEN_MAX_RATIO = 200  # qwen_vl_utils refuses more extreme aspect ratios


def qwen_smart_resize(height: int, width: int, factor: int, min_pixels: int, max_pixels: int) -> tuple[int, int]:
    """(height, width) as qwen_vl_utils' (and transformers') `smart_resize`: the nearest multiples of
    `factor`, scaled down / up keeping the aspect ratio when the pixel count leaves [min, max]."""
    if max(height, width) / min(height, width) > QWEN_MAX_RATIO:
        raise ValueError(
            f"image of {width}x{height}: Qwen2.5-VL takes aspect ratios up to {QWEN_MAX_RATIO}, "
            f"got {max(height, width) / min(height, width):.1f}"
        )
    h = max(factor, round(height / factor) * factor)
    w = max(factor, round(width / factor) * factor)
    if h * w > max_pixels:
        beta = math.sqrt(height * width / max_pixels)
        h = math.floor(height / beta / factor) * factor
        w = math.floor(width / beta / factor) * factor
    elif h * w < min_pixels:
        beta = math.sqrt(min_pixels / (height * width))
        h = math.ceil(height * beta / factor) * factor
        w = math.ceil(width * beta / factor) * factor
    return h, w


# Stop strings a family's lmms-eval wrapper drops from the task's `until`.
_DROPPED_STOPS = {"qwen2_5_vl": ("\n\n",)}


def stop_strings(until, model_type: str = "llava") -> list[str]:
    """The task's `until` (a string or a list) as the stop strings the answer is cut at."""
    until = [until] if isinstance(until, str) else list(until or [])
    dropped = _DROPPED_STOPS.get(model_type, ())
    return [u for u in until if u not in dropped]


# Family specifics by model_type; a family not listed is prompted and preprocessed like LLaVA.
_PROMPTS = {"qwen2_5_vl": _qwen_prompt}
_IMAGES = {"qwen2_5_vl": _qwen_image}
