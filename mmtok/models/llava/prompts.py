"""LLaVA's prompt formats and image preprocessing (`prompt_format`, `image_preprocess`).

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

The paper's LLaVA-1.5 numbers come from the original LLaVA code: use `vicuna_v1` + `pad`.
Its LLaVA-NeXT numbers come from the original LLaVA-NeXT code, which uses `vicuna_v1` (Vicuna
checkpoints) and "anyres" preprocessing, not pad-to-square: use `vicuna_v1` + `crop` there (HF's anyres
differs from the original only in how the base crop is resized). The defaults ("hf" + "crop") are
what a plain HF user would get. Stop strings: the task's `until`, unchanged.
"""

from __future__ import annotations

from PIL import Image

from mmtok.models.spec import InputRules, image_token

VICUNA_V1_SYSTEM = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)


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


def padding_patches(width: int, height: int, side: int, patch: int) -> list[int]:
    """Row-major indices of the `(side // patch)²` patches that lie entirely in the padding `expand2square`
    adds to a `width` x `height` image once the square is resized to `side` px (LLaVA-1.5: 336 / 14).

    The MMTok release's rule for MMTok++ (`calculate_padding_patch_indices` in its
    `mmtok/llava/patch_llava.py`, `include_overlap=False`), for any side and patch size: the image
    resized to `side` on its long edge spans `round(short * side / long)` px (Python's round), centred;
    the padding before it is half the rest (floored) and after it the remainder; only whole patches
    inside either band count (floor), so patches straddling the border stay. Wide images lose whole
    top and bottom rows, tall ones whole left and right columns; square images none.
    """
    if side % patch:
        raise ValueError(f"the crop side {side} is not a multiple of the patch size {patch}")
    grid = side // patch
    if width == height:
        return []
    long_side, short_side = max(width, height), min(width, height)
    scaled = int(round(short_side * (side / long_side)))
    if scaled == side:
        return []
    before = (side - scaled) // 2
    after = side - scaled - before
    lines = [*range(before // patch), *range(grid - after // patch, grid)]
    if width > height:  # whole rows
        return sorted(r * grid + c for r in lines for c in range(grid))
    return sorted(r * grid + c for r in range(grid) for c in lines)  # whole columns


class LlavaRules(InputRules):
    def prompt(self, processor, question: str, prompt_format: str) -> str:
        token = image_token(processor)
        if token in question:
            # The formats place the image themselves; a second placeholder would mean a second image.
            raise ValueError(f"the question already contains the image placeholder {token!r}: {question!r}")
        if prompt_format == "hf":
            conversation = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
            return processor.apply_chat_template(conversation, add_generation_prompt=True)
        # conv_vicuna_v1: system + sep " " + "USER: " + message + sep " " + "ASSISTANT:"
        return f"{VICUNA_V1_SYSTEM} USER: {token}\n{question} ASSISTANT:"

    def image(self, image: Image.Image, processor, mode: str) -> Image.Image:
        image = image.convert("RGB")
        if mode == "pad":
            return expand2square(image, mean_color(processor))
        return image


RULES = LlavaRules()
