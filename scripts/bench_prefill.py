"""Time to first token (vision + selection + prefill) per pruner, measured side by side.

Every configuration runs on the same model, image and question in one process, interleaved round
by round, so the printed speed-ups over `none` are like-for-like. Without `--model` a random
LLaVA-1.5-shaped checkpoint is built (real HF classes; 336 px / 14 px patches = 576 vision tokens;
a 1024-wide 8-layer LLM), so the ratio shows what shortening the sequence buys on this machine,
not a 7B number. On a GPU box pass `--model <llava-hf checkpoint dir>`.

    python scripts/bench_prefill.py --pruners none mmtok:64 divprune:64 random:64 --repeats 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time

import numpy as np
import torch
from PIL import Image

from mmtok.pruners import build_pruner


def load(path, device, dtype):
    from transformers import AutoConfig, AutoProcessor, LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    cls = (
        LlavaNextForConditionalGeneration
        if AutoConfig.from_pretrained(path).model_type == "llava_next"
        else LlavaForConditionalGeneration
    )
    return cls.from_pretrained(path, dtype=dtype).to(device).eval(), AutoProcessor.from_pretrained(path)


def parse(spec: str):
    name, _, budget = spec.partition(":")
    return spec, (build_pruner(name, budget=int(budget)) if budget else build_pruner(name))


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", help="checkpoint folder; default: build a random LLaVA-1.5-shaped one")
    ap.add_argument("--pruners", nargs="+", default=["none", "mmtok:64", "divprune:64", "random:64"])
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float16" if torch.cuda.is_available() else "float32")
    args = ap.parse_args()
    device = torch.device(args.device)
    path = args.model
    if path is None:
        from mmtok.models.tiny import build_tiny

        path = build_tiny(tempfile.mkdtemp(), "llava", image_size=336, patch_size=14, text_layers=8, text_hidden=1024)
    model, processor = load(path, device, getattr(torch, args.dtype))
    question = "Is there a red car next to the person on the left side of the street?"
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    image = Image.fromarray((np.random.RandomState(0).rand(480, 640, 3) * 255).astype("uint8"))
    batch = processor(
        images=[image], text=[processor.apply_chat_template(conv, add_generation_prompt=True)], return_tensors="pt"
    ).to(device)
    configs = [parse(s) for s in args.pruners]

    def first_token(pruner):
        with pruner(model, tokenizer=processor.tokenizer, questions=[question]), torch.no_grad():
            if device.type == "cuda":
                torch.cuda.synchronize()
            t0 = time.perf_counter()
            model.generate(**batch, max_new_tokens=1, do_sample=False)
            if device.type == "cuda":
                torch.cuda.synchronize()
            return (time.perf_counter() - t0) * 1e3, pruner.last_stats["samples"][0]["vision_tokens"]

    for _, p in configs:  # warm-up
        first_token(p)
    times = {spec: [] for spec, _ in configs}
    kept = {}
    for _ in range(args.repeats):
        for spec, p in configs:
            ms, kept[spec] = first_token(p)
            times[spec].append(ms)
    base = statistics.median(times[configs[0][0]])
    print(f"model: {path}, device: {device}, dtype: {args.dtype}, repeats: {args.repeats} (median)")
    print(f"{'pruner':<16} {'vision tokens':>13} {'TTFT ms':>9} {'speed-up vs ' + configs[0][0]:>18}")
    for spec, _ in configs:
        med = statistics.median(times[spec])
        print(f"{spec:<16} {kept[spec]:>13} {med:>9.1f} {base / med:>18.2f}")


if __name__ == "__main__":
    main()
