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
