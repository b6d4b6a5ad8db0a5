"""The Qwen2.5-VL processor without its video part, for tiny and real checkpoints alike.

`Qwen2_5_VLProcessor` and `AutoProcessor` always build a video processor, which needs torchvision
(not installed: see README, "Environment"). Images and text need none of it, so this subclass keeps
only `image_processor` and `tokenizer`; it loads any Qwen2.5-VL folder or cached hub snapshot
(`preprocessor_config.json` + tokenizer + chat template, or our `processor_config.json`) and
round-trips through `save_pretrained` / `from_pretrained` without video.

Image sizing: the image processor resizes every image to multiples of patch x merge pixels (28 on
the real model) with a pixel count inside [min_pixels, max_pixels]. lmms-eval's `qwen2_5_vl`
wrappers (and the MMTok release's Qwen wrapper) load the processor with min_pixels = 256*28*28,
max_pixels = 1605632 instead of the checkpoint's 3136 / 12845056; `load_qwen_processor` takes the
same override (`model.min_pixels` / `model.max_pixels` in configs/model/qwen25vl_*.yaml).
"""

from __future__ import annotations

from transformers import ProcessorMixin
from transformers.models.qwen2_5_vl.processing_qwen2_5_vl import Qwen2_5_VLProcessor

IMAGE_PAD = "<|image_pad|>"
VIDEO_PAD = "<|video_pad|>"


class Qwen25VLImageProcessor(Qwen2_5_VLProcessor):
    """`Qwen2_5_VLProcessor` without the video part.

    The stock processor (and `AutoProcessor`) always builds a video processor, which needs
    torchvision; images and text need none of it. Only `image_processor` and `tokenizer` are
    attributes, so `save_pretrained` / `from_pretrained` (of this class) round-trip without video.
    """

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        self.image_token = getattr(tokenizer, "image_token", None) or IMAGE_PAD
        self.video_token = getattr(tokenizer, "video_token", None) or VIDEO_PAD
        self.image_token_id = tokenizer.convert_tokens_to_ids(self.image_token)
        self.video_token_id = tokenizer.convert_tokens_to_ids(self.video_token)
        ProcessorMixin.__init__(self, image_processor, tokenizer, chat_template=chat_template)


def load_qwen_processor(
    source: str,
    *,
    min_pixels: int | None = None,
    max_pixels: int | None = None,
    local_files_only: bool = True,
) -> Qwen25VLImageProcessor:
    """The processor of a Qwen2.5-VL folder / hub id; `min_pixels` / `max_pixels` override the
    checkpoint's image sizing (None keeps the checkpoint's), as lmms-eval passes them."""
    sizing = {k: v for k, v in (("min_pixels", min_pixels), ("max_pixels", max_pixels)) if v is not None}
    processor = Qwen25VLImageProcessor.from_pretrained(source, local_files_only=local_files_only, **sizing)
    size = processor.image_processor.size
    # transformers keeps the bounds as size.shortest_edge / longest_edge (in pixels, not edges)
    if (min_pixels is not None and size.shortest_edge != min_pixels) or (
        max_pixels is not None and size.longest_edge != max_pixels
    ):
        raise RuntimeError(f"the image processor did not take min_pixels={min_pixels}, max_pixels={max_pixels}: {size}")
    return processor


def pixel_bounds(processor) -> tuple[int, int]:
    """(min_pixels, max_pixels) the processor resizes images into."""
    size = processor.image_processor.size
    return int(size.shortest_edge), int(size.longest_edge)


def resize_factor(processor) -> int:
    """Image sides are multiples of this many pixels (patch size x spatial merge: 28 on the real model)."""
    ip = processor.image_processor
    return int(ip.patch_size * ip.merge_size)
