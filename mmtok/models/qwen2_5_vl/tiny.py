"""A tiny Qwen2.5-VL checkpoint built in code (real HF classes, random weights), like every family's `tiny.py`.

The builder writes an ordinary checkpoint folder (model, tokenizer with Qwen's special tokens, a
Qwen-style chat template, the Qwen2-VL image processor) that loads back with `from_pretrained`.
Sizes are chosen so that the vision tower's window attention really reorders tokens on the test
images: patch 8, merge 2 (one LLM token = 16x16 pixels) and window_size 32 (2x2 merged units per
window), so any image wider or taller than 32 pixels spans several windows.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmtok.models.qwen2_5_vl.processor import IMAGE_PAD, VIDEO_PAD, Qwen25VLImageProcessor
from mmtok.models.tiny_words import CORPUS as _CORPUS

VISION_START = "<|vision_start|>"
VISION_END = "<|vision_end|>"
IM_START = "<|im_start|>"
IM_END = "<|im_end|>"
ENDOFTEXT = "<|endoftext|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END, VISION_START, VISION_END, IMAGE_PAD, VIDEO_PAD]

# Qwen2.5-VL-Instruct's template restricted to text and images: a default system turn, one
# <|vision_start|><|image_pad|><|vision_end|> per image (the processor expands the pad).
QWEN25VL_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and message['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
    "{% endif %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}<|im_end|>\n"
    "{% else %}{% for content in message['content'] %}"
    "{% if content['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif content['type'] == 'text' %}{{ content['text'] }}{% endif %}"
    "{% endfor %}<|im_end|>\n{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def build_qwen_tokenizer(vocab_size: int = 400):
    """A byte-level BPE fast tokenizer (like Qwen2's) carrying Qwen's special tokens; no BOS."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        eos_token=IM_END,
        pad_token=ENDOFTEXT,
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE_PAD, "video_token": VIDEO_PAD},
    )


def build_tiny_qwen25vl(
    out_dir: str | Path,
    *,
    seed: int = 0,
    text_layers: int = 8,
    text_hidden: int = 64,
    vision_depth: int = 4,
    patch_size: int = 8,
    window_size: int = 32,
    min_pixels: int = 16 * 16 * 4,
    max_pixels: int = 16 * 16 * 64,
) -> Path:
    """Write a tiny random-weight `Qwen2_5_VLForConditionalGeneration` checkpoint to `out_dir`.

    Vision: `vision_depth` blocks, window attention except the full-attention blocks 1 and 3 (the
    real model has full attention every 8th block, last one included), merge 2x2, output width =
    `text_hidden`. Text: Qwen2 decoder with GQA (4 query / 2 key-value heads) and M-RoPE sections
    [2, 3, 3] over the 16-wide head. Images are resized to multiples of 16 pixels between
    `min_pixels` and `max_pixels` (4 to 64 LLM tokens per image).
    """
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration
    from transformers.models.qwen2_vl.image_processing_pil_qwen2_vl import Qwen2VLImageProcessorPil

    out_dir = Path(out_dir)
    tokenizer = build_qwen_tokenizer()
    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    heads = 4
    text_config = dict(
        vocab_size=len(tokenizer),
        hidden_size=text_hidden,
        intermediate_size=2 * text_hidden,
        num_hidden_layers=text_layers,
        num_attention_heads=heads,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 10000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=ids[ENDOFTEXT],
        eos_token_id=ids[IM_END],
        pad_token_id=ids[ENDOFTEXT],
        initializer_range=0.2,
    )
    vision_config = dict(
        depth=vision_depth,
        hidden_size=32,
        intermediate_size=64,
        num_heads=4,
        patch_size=patch_size,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=window_size,
        out_hidden_size=text_hidden,
        fullatt_block_indexes=[1, 3],
        initializer_range=0.2,
    )
    cfg = Qwen2_5_VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=ids[IMAGE_PAD],
        video_token_id=ids[VIDEO_PAD],
        vision_start_token_id=ids[VISION_START],
        vision_end_token_id=ids[VISION_END],
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    model = Qwen2_5_VLForConditionalGeneration(cfg)
    # Random init gives near-uniform logits; a larger embedding scale makes greedy decoding
    # input-dependent, so a wrong position or a wrong kept token changes the generated tokens.
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 1.0)
        model.lm_head.weight.normal_(0.0, 0.5)
    model.generation_config.pad_token_id = ids[ENDOFTEXT]
    model.generation_config.eos_token_id = [ids[IM_END], ids[ENDOFTEXT]]
    model.generation_config.bos_token_id = ids[ENDOFTEXT]
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        temporal_patch_size=2,
        merge_size=2,
        min_pixels=min_pixels,
        max_pixels=max_pixels,
    )
    processor = Qwen25VLImageProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=QWEN25VL_CHAT_TEMPLATE
    )
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


def build_tiny(out_dir: str | Path, model_type: str = "qwen2_5_vl") -> Path:
    """The family's tiny builder (`FamilySpec.tiny`): `build_tiny_qwen25vl` with its defaults."""
    if model_type != "qwen2_5_vl":
        raise ValueError(f"unknown tiny family {model_type!r}; valid: qwen2_5_vl")
    return build_tiny_qwen25vl(out_dir)


def load_tiny_qwen25vl(path: str | Path):
    """(model, processor) from a folder written by `build_tiny_qwen25vl` (or any Qwen2.5-VL folder)."""
    from transformers import Qwen2_5_VLForConditionalGeneration

    return Qwen2_5_VLForConditionalGeneration.from_pretrained(path).eval(), Qwen25VLImageProcessor.from_pretrained(path)


if __name__ == "__main__":  # python -m mmtok.models.qwen2_5_vl.tiny OUT_DIR
    import sys

    print(build_tiny_qwen25vl(sys.argv[1]))
