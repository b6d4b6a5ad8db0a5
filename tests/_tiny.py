"""Shared helpers for tests that run tiny real-HF LLaVA models (built in code, loaded from disk)."""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image

QUESTIONS = [
    "Is there a cat in the image?\nAnswer the question using a single word or phrase.",
    "What color is the car on the left?",
    "How many people are there? A. one B. two C. three D. four\n"
    "Answer with the option's letter from the given choices directly.",
]
# Different sizes and aspect ratios so LLaVA-NeXT picks different anyres grids (5 and 3 crops).
IMAGE_SIZES = [(60, 90), (40, 100), (90, 70)]


def images(sizes=IMAGE_SIZES):
    return [
        Image.fromarray((np.random.RandomState(i).rand(h, w, 3) * 255).astype("uint8"))
        for i, (h, w) in enumerate(sizes)
    ]


def load(path, family):
    from transformers import AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    cls = LlavaNextForConditionalGeneration if family == "llava_next" else LlavaForConditionalGeneration
    return cls.from_pretrained(path).eval(), AutoProcessor.from_pretrained(path)


def prompt(processor, question):
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conv, add_generation_prompt=True)


def inputs(processor, questions=QUESTIONS, imgs=None):
    imgs = images()[: len(questions)] if imgs is None else imgs
    return processor(images=imgs, text=[prompt(processor, q) for q in questions], return_tensors="pt", padding=True)


def generate(model, batch, max_new_tokens=6):
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return out[:, batch["input_ids"].shape[1] :]


def build_tiny_clip(out_dir, *, vision_width: int = 32, seed: int = 0):
    """A tiny random CLIP (CLIPModel + the tiny checkpoints' tokenizer) whose vision width matches
    the tiny LLaVA towers, saved as an ordinary folder: CDPruner's `clip_path` in the tests. Its
    16-position text tower makes the longer test questions span several segments."""
    from pathlib import Path

    from transformers import CLIPConfig, CLIPModel

    from mmtok.models.llava.tiny import build_tokenizer

    tok = build_tokenizer()
    text = dict(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        max_position_embeddings=16,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        projection_dim=16,
    )
    vision = dict(
        hidden_size=vision_width,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=4,
        image_size=48,
        projection_dim=16,
    )
    torch.manual_seed(seed)
    model = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16)).eval()
    out_dir = Path(out_dir)
    model.save_pretrained(out_dir)
    tok.save_pretrained(out_dir)
    return out_dir


_TINY_CLIP: list = []


def tiny_clip_path():
    """The session's tiny CLIP folder, built on first use in a temporary folder removed at exit."""
    if not _TINY_CLIP:
        import atexit
        import shutil
        import tempfile

        root = tempfile.mkdtemp(prefix="mmtok-tiny-clip-")
        atexit.register(shutil.rmtree, root, ignore_errors=True)
        _TINY_CLIP.append(str(build_tiny_clip(root)))
    return _TINY_CLIP[0]


def method_params(cls) -> dict:
    """Parameters the tests give a method beyond its defaults, by what it declares: a `clip_path`
    field (a CLIP model beside the VLM, no hub here) gets the tiny CLIP."""
    from dataclasses import fields

    return {"clip_path": tiny_clip_path()} if any(f.name == "clip_path" for f in fields(cls)) else {}
