"""Qwen2.5-VL's one protocol: lmms-eval 0.7.3's `qwen2_5_vl` wrappers' (the MMTok release's Qwen
evaluation is the same wrapper); `vicuna_v1` and `pad` are refused (the spec offers "hf" + "crop" only).

    prompt      the chat template on [system "You are a helpful assistant.", user [image, question]]
                (the image first, then the text; a "<image>" in the question is removed as lmms-eval
                does). `qwen2_5_vl_chat` sends no system turn and the template adds the same default
                one, so both wrappers give the same prompt.
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

from mmtok.models.spec import InputRules, image_token

QWEN_SYSTEM_PROMPT = "You are a helpful assistant."  # lmms-eval's qwen2_5_vl default (= the template's)
QWEN_MAX_RATIO = 200  # qwen_vl_utils refuses more extreme aspect ratios


def qwen_messages(question: str, image=None) -> list[dict]:
    """lmms-eval's `qwen2_5_vl` message structure for one image + `question` (system turn, image, text)."""
    item = {"type": "image"} if image is None else {"type": "image", "image": image}
    return [
        {"role": "system", "content": QWEN_SYSTEM_PROMPT},
        {"role": "user", "content": [item, {"type": "text", "text": question}]},
    ]


def qwen_to_rgb(image: Image.Image) -> Image.Image:
    """qwen_vl_utils' `to_rgb`: an RGBA image is composited onto white, anything else converted."""
    if image.mode == "RGBA":
        canvas = Image.new("RGB", image.size, (255, 255, 255))
        canvas.paste(image, mask=image.split()[3])
        return canvas
    return image.convert("RGB")


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


class QwenRules(InputRules):
    dropped_stops = ("\n\n",)

    def prompt(self, processor, question: str, prompt_format: str) -> str:
        question = question.replace("<image>", "")  # as lmms-eval's qwen2_5_vl: the chat template places the image
        token = image_token(processor)
        if token in question:
            raise ValueError(f"the question already contains the image placeholder {token!r}: {question!r}")
        return processor.apply_chat_template(qwen_messages(question), tokenize=False, add_generation_prompt=True)

    def image(self, image: Image.Image, processor, mode: str) -> Image.Image:
        # the processor module imports transformers: deferred until an image is prepared
        from mmtok.models.qwen2_5_vl.processor import pixel_bounds, resize_factor

        height, width = qwen_smart_resize(image.height, image.width, resize_factor(processor), *pixel_bounds(processor))
        return qwen_to_rgb(image).resize((width, height))


RULES = QwenRules()
