"""Tiny LLaVA-1.5 / LLaVA-NeXT checkpoints built in code (real HF classes, random weights).

They exist so that every test and the embedded default run work offline: the builder writes an
ordinary checkpoint folder (model, tokenizer, processor, chat template) that is then loaded with
`from_pretrained`, exactly like a hub checkpoint. Nothing downstream knows it is tiny.
"""

from __future__ import annotations

from pathlib import Path

import torch

from mmtok.models.tiny_words import CORPUS as _CORPUS

IMAGE_TOKEN = "<image>"
LLAVA15_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'user' %}USER: "
    "{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %} {% elif message['role'] == 'assistant' %}ASSISTANT: "
    "{% for item in message['content'] %}{{ item['text'] }}{% endfor %}</s>"
    "{% endif %}{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)


def build_tokenizer(vocab_size: int = 400):
    """A Llama-style (metaspace BPE, BOS added) fast tokenizer with an `<image>` special token."""
    from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=False))
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="first")
    specials = ["<unk>", "<s>", "</s>", "<pad>", IMAGE_TOKEN]
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=specials,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()[:0]
        + list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789.,?!:;'\"()-_/\n"),
        show_progress=False,
    )
    tok.train_from_iterator([_CORPUS] * 4, trainer=trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        padding_side="left",
        extra_special_tokens={"image_token": IMAGE_TOKEN},
    )


def _text_config(vocab_size: int, pad_id: int, layers: int, hidden: int):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=4,
        max_position_embeddings=2048,
        pad_token_id=pad_id,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
        initializer_range=0.2,
    )


def _vision_config(image_size: int, patch_size: int):
    from transformers import CLIPVisionConfig

    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=3,
        num_attention_heads=4,
        image_size=image_size,
        patch_size=patch_size,
        projection_dim=32,
        initializer_range=0.2,
    )


def _image_processor(image_size: int, *, anyres_pinpoints=None):
    """CLIP preprocessing at the tiny resolution (the PIL backend: torchvision is not installed)."""
    common = dict(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        do_center_crop=True,
        image_mean=[0.48145466, 0.4578275, 0.40821073],
        image_std=[0.26862954, 0.26130258, 0.27577711],
    )
    if anyres_pinpoints is None:
        from transformers import CLIPImageProcessor

        return CLIPImageProcessor(**common)
    from transformers import LlavaNextImageProcessor

    return LlavaNextImageProcessor(image_grid_pinpoints=anyres_pinpoints, **common)


def build_tiny(
    out_dir: str | Path,
    family: str = "llava",
    *,
    seed: int = 0,
    image_size: int = 48,
    patch_size: int = 8,
    text_layers: int = 16,
    text_hidden: int = 64,
    vision: dict | None = None,
    text: dict | None = None,
) -> Path:
    """Write a tiny random-weight checkpoint of `family` ("llava" or "llava_next") to `out_dir`.

    16 text layers so that in-LLM pruners can use their paper layers (SparseVLM prunes at 2/6/15).
    With image 48 / patch 8 each crop has 36 patch tokens (LLaVA-1.5 at full size: 576).
    Benchmarks build larger ones (image 336 / patch 14 = 576 tokens, a wider LLM) the same way;
    `vision` / `text` override fields of the CLIP vision / Llama text configs (e.g. CLIP-L's
    widths, a 7B-shaped LLM).
    """
    from transformers import (
        LlavaConfig,
        LlavaForConditionalGeneration,
        LlavaNextConfig,
        LlavaNextForConditionalGeneration,
        LlavaNextProcessor,
        LlavaProcessor,
    )

    if family not in ("llava", "llava_next"):
        raise ValueError(f"unknown tiny family {family!r}; valid: llava, llava_next")
    out_dir = Path(out_dir)
    tokenizer = build_tokenizer()
    image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    text_cfg = _text_config(len(tokenizer), tokenizer.pad_token_id, text_layers, text_hidden)
    vision_cfg = _vision_config(image_size, patch_size)
    for cfg_part, values in ((vision_cfg, vision), (text_cfg, text)):
        for key, value in (values or {}).items():
            setattr(cfg_part, key, value)
    torch.manual_seed(seed)
    if family == "llava":
        cfg = LlavaConfig(
            vision_config=vision_cfg,
            text_config=text_cfg,
            image_token_id=image_token_id,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            projector_hidden_act="gelu",
        )
        model = LlavaForConditionalGeneration(cfg)
        processor = LlavaProcessor(
            image_processor=_image_processor(image_size),
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=LLAVA15_CHAT_TEMPLATE,
        )
    else:
        s = image_size
        pinpoints = [[s, 2 * s], [2 * s, s], [2 * s, 2 * s]]
        cfg = LlavaNextConfig(
            vision_config=vision_cfg,
            text_config=text_cfg,
            image_token_id=image_token_id,
            vision_feature_layer=-2,
            vision_feature_select_strategy="default",
            image_grid_pinpoints=pinpoints,
        )
        model = LlavaNextForConditionalGeneration(cfg)
        processor = LlavaNextProcessor(
            image_processor=_image_processor(image_size, anyres_pinpoints=pinpoints),
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
            chat_template=LLAVA15_CHAT_TEMPLATE,
        )
    # Random init gives near-uniform logits; a larger embedding scale makes greedy decoding
    # input-dependent, so a wrong pruner changes the generated tokens.
    with torch.no_grad():
        model.get_input_embeddings().weight.normal_(0.0, 1.0)
        model.lm_head.weight.normal_(0.0, 0.5)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.save_pretrained(out_dir)
    processor.save_pretrained(out_dir)
    return out_dir


if __name__ == "__main__":  # python -m mmtok.models.llava.tiny OUT_DIR [llava|llava_next]
    import sys

    print(build_tiny(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "llava"))
