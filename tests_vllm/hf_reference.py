"""The HF references the vLLM plugin's tests compare against, made by our real HF pruning path.

    .venv/bin/python tests_vllm/hf_reference.py --out .cache/vllm-tests     # `make test-vllm` runs it

Runs in the MAIN environment (transformers 5.23, mmtok.pruners), because the vLLM environment has
vLLM's own transformers (< 5.20) and not the evaluation stack. For the committed testbed LLaVA
(fp32) and a few testbed scenes it writes `reference.json` + the images (PNG, lossless):
per case (image, question, method, budget) the prompt, the kept row indices our HF pruner selects
(None for VisionZip's merged tokens), the greedy tokens of `model.generate` under the pruner
(batch 1, so no padding), the first token's top log-probabilities, and the prompt's text-token
count. Nothing is written when the inputs (this script, the model, mmtok/) are unchanged.

For MMTok and DivPrune it also writes each case's objective matrix (`objective-<i>.npy`: MMTok's
coverage matrix C, DivPrune's cosine distances) and the picks no rounding can move (`decided`): on
the trained testbed both greedies saturate within a few picks (MMTok's gains fall to ~1e-7, the
background patches DivPrune then spreads over are near-duplicates), after which vLLM's features
(within ~5e-6 of HF's) decide the near-ties as well as ours; the tests compare those rows by their
objective under HF's matrix rather than by identity.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import random
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "results" / "testbed" / "model"
METHODS = ("mmtok", "divprune", "random", "visionzip", "vispruner")
BUDGETS = (4, 16, 64)
NEXT_BUDGETS = (5, 20, 80, 200)  # per crop (5 crops at most): 1, 4, 16, 40 >= the 36 tokens of a crop
MAX_NEW = 8
TOP = 5
# A greedy step is decided when its winner's gain beats the runner-up's by this share of the first
# pick's gain: far above the gain changes vLLM's features (within ~5e-6 of HF's) can make.
DECIDED_MARGIN = 1e-4
# DivPrune: a step is decided when its farthest token is farther than the runner-up by this much
# (cosine distance).
DECIDED_DISTANCE = 1e-4
# (scene seed, colour asked about): two scenes, one question each, plus a second question on scene 0
QUESTIONS = (
    (0, "Is there a red object in the image?"),
    (1, "Is there a blue object in the image?"),
)
SECOND_QUESTION = "Is there a yellow object in the image?"  # on scene 0 MMTok@4 keeps other rows than for "red"
POST_PROMPT = "\nAnswer the question using a single word or phrase."


def _hf_path_sources():
    """mmtok's sources except the vLLM plugin (the HF references do not depend on it)."""
    return (p for p in (ROOT / "mmtok").rglob("*.py") if "serving" not in p.relative_to(ROOT).parts)


def inputs_digest() -> str:
    h = hashlib.sha256()
    files = [Path(__file__), *sorted(MODEL.iterdir()), *sorted(_hf_path_sources())]
    for path in files:
        if path.is_file():
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def scene_image(seed: int):
    from mmtok.data.scenes import render, sample_scene

    return render(sample_scene(random.Random(f"vllm-tests:{seed}")))


def encoded(pruner, inputs):
    """The image of the request `pruner` just ran, encoded by the pruner itself (the same inputs)."""
    adapter = pruner.request.contexts[0].adapter
    extra = {key: inputs[key] for key in adapter.image_keys if key in inputs}
    with torch.no_grad():
        return pruner.encode(adapter, inputs["pixel_values"], **extra)[0]


def kept_rows(pruner, image) -> list[list[int]]:
    """The kept row indices of the request `pruner` just ran (its own select on its `encoded`
    image), per crop, or [indices into the packed sequence] (NeXT DivPrune); None for the unpruned
    packed layout."""
    ctx = pruner.request.contexts[0]
    with torch.no_grad():
        k = pruner.per_crop_budget(ctx.adapter, image)
        if k is None or k >= image.tokens_per_crop:
            return [list(range(image.tokens_per_crop))] * image.num_crops
        sel = pruner.select(image, k, ctx)
        if sel.packed_indices is not None:
            packed = ctx.adapter.full_sequence(image)
            if sel.packed_indices.numel() == packed.shape[0]:
                return None  # every packed token: the unpruned layout
            return [sel.packed_indices.tolist()]
        return [x.tolist() for x in sel.indices]


def coverage_matrix(pruner, image) -> torch.Tensor:
    """MMTok's C for the request `pruner` just ran ([text rows + patches, patches], one crop), built
    as its `select` builds it."""
    from mmtok.selection.mmtok import build_coverage_matrix

    ctx = pruner.request.contexts[0]
    text, _ = pruner.text_rows(ctx)
    tau_t = pruner.for_family(ctx.adapter.family).tau_t
    with torch.no_grad():
        return build_coverage_matrix(text, image.proj[0], image.patches[0], pruner.alpha, tau_t, pruner.tau_v)


def decided_picks(C: torch.Tensor, k: int) -> list[int]:
    """The greedy's leading picks (pick order) up to its first step that is not decided
    (`DECIDED_MARGIN`), in float64."""
    C = C.double()
    best = torch.zeros(C.shape[0], dtype=C.dtype)
    picks: list[int] = []
    first = None
    for _ in range(k):
        gains = (C - best[:, None]).clamp(min=0).sum(0)
        gains[picks] = -torch.inf
        top = torch.topk(gains, 2)
        first = float(top.values[0]) if first is None else first
        if float(top.values[0] - top.values[1]) < DECIDED_MARGIN * first:
            break
        picks.append(int(top.indices[0]))
        best = torch.maximum(best, C[:, picks[-1]])
    return picks


def distance_matrix(pruner, image) -> torch.Tensor:
    """DivPrune's cosine distances for the request `pruner` just ran (one crop), as its `select`
    measures them."""
    from mmtok.selection.divprune import cosine_distance

    with torch.no_grad():
        return cosine_distance(pruner.crop_features(image, pruner.request.contexts[0].adapter)[0])


def decided_farthest(dist: torch.Tensor, k: int) -> list[int]:
    """DivPrune's leading picks (pick order) up to its first step that is not decided
    (`DECIDED_DISTANCE`), in float64."""
    dist = dist.double()
    score = dist.masked_fill(torch.eye(dist.shape[0], dtype=torch.bool), torch.inf).amin(dim=1)
    picks: list[int] = []
    for _ in range(k):
        score[picks] = -torch.inf
        top = torch.topk(score, 2)
        if float(top.values[0] - top.values[1]) < DECIDED_DISTANCE:
            break
        picks.append(int(top.indices[0]))
        score = dist[picks[-1]].clone() if len(picks) == 1 else torch.minimum(score, dist[picks[-1]])
    return picks


def run_case(model, processor, image, question: str, method: str | None, budget: int | None) -> dict:
    from transformers import LogitsProcessorList

    from mmtok.eval.prompts import build_prompt
    from mmtok.pruners import build_pruner

    prompt = build_prompt(processor, question, "hf", model.config.model_type)
    inputs = processor(images=[image], text=[prompt], return_tensors="pt")
    image_id = model.config.image_token_id
    text_tokens = int((inputs["input_ids"] != image_id).sum())
    pruner = build_pruner(method or "none", budget=budget)
    scores = []

    def grab(input_ids, logits):
        scores.append(torch.log_softmax(logits.float(), dim=-1)[0])
        return logits

    with pruner(model, tokenizer=processor.tokenizer, questions=[question]), torch.inference_mode():
        out = model.generate(
            **inputs, max_new_tokens=MAX_NEW, do_sample=False, num_beams=1, logits_processor=LogitsProcessorList([grab])
        )
        encoded_image = encoded(pruner, inputs) if method and not pruner.merges else None
        rows = None if encoded_image is None else kept_rows(pruner, encoded_image)
        objective = None
        if model.config.model_type == "llava" and method in ("mmtok", "divprune"):
            objective = (coverage_matrix if method == "mmtok" else distance_matrix)(pruner, encoded_image)
    new = out[0, inputs["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    n = next((j + 1 for j, tok in enumerate(new) if tok == eos), len(new))
    top = torch.topk(scores[0], TOP)
    extra = {}
    if objective is not None:
        decided = (decided_picks if method == "mmtok" else decided_farthest)(objective, budget)
        assert set(decided) <= set(rows[0]), "the decided picks are the greedy's"
        extra = {"objective": objective.float().numpy(), "decided": decided}
    return {
        **extra,
        "prompt": prompt,
        "question": question,
        "method": method,
        "budget": budget,
        "kept": None if rows is None or model.config.model_type != "llava" else rows[0],
        "kept_crops": rows,
        "vision_tokens": int(pruner.last_stats.samples[0].vision_tokens),
        "text_tokens": text_tokens,
        "tokens": new[:n],
        "top_ids": top.indices.tolist(),
        "top_logprobs": top.values.tolist(),
    }


def next_reference(out: Path) -> list[dict]:
    """LLaVA-NeXT: a tiny random-weight checkpoint (mmtok.models.tiny; 36 tokens per crop, 5 crops
    at most), a wide image (base + 1 x 2 tiles, unpadded rows), per-crop budgets 1 / 4 / 16 and a
    budget above the crop size, every method."""
    from PIL import Image
    from transformers import AutoProcessor, LlavaNextForConditionalGeneration

    from mmtok.models.llava.tiny import build_tiny

    folder = out / "next-model"
    if not (folder / "config.json").is_file():
        text = {"hidden_size": 128, "head_dim": 32, "intermediate_size": 256}
        build_tiny(folder, "llava_next", text_layers=2, text=text)
    model = LlavaNextForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(folder)
    pixels = (np.random.RandomState(7).rand(60, 100, 3) * 255).astype("uint8")
    image = Image.fromarray(pixels)
    image.save(out / "next.png")
    question = "Is there a red object in the image?" + POST_PROMPT
    cases = [{"image": "next.png", **run_case(model, processor, image, question, None, None)}]
    for method in METHODS:
        for budget in NEXT_BUDGETS:
            cases.append({"image": "next.png", **run_case(model, processor, image, question, method, budget)})
    return cases


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    digest = inputs_digest()
    ref = args.out / "reference.json"
    if ref.is_file() and json.loads(ref.read_text()).get("inputs_sha256") == digest:
        print(f"{ref} is current")
        return 0
    from transformers import AutoProcessor, LlavaForConditionalGeneration

    torch.manual_seed(0)
    model = LlavaForConditionalGeneration.from_pretrained(MODEL, dtype=torch.float32).eval()
    processor = AutoProcessor.from_pretrained(MODEL)
    args.out.mkdir(parents=True, exist_ok=True)
    cases = []
    for seed, text in QUESTIONS:
        image = scene_image(seed)
        name = f"scene{seed}.png"
        image.save(args.out / name)
        question = text + POST_PROMPT
        cases.append({"image": name, **run_case(model, processor, image, question, None, None)})
        for method in METHODS:
            for budget in BUDGETS:
                cases.append({"image": name, **run_case(model, processor, image, question, method, budget)})
    # the question-dependent selection: the same image, another question, MMTok at 4
    image = scene_image(QUESTIONS[0][0])
    cases.append(
        {"image": "scene0.png", **run_case(model, processor, image, SECOND_QUESTION + POST_PROMPT, "mmtok", 4)}
    )
    for i, case in enumerate(c for c in cases if "objective" in c):
        np.save(args.out / f"objective-{i}.npy", case.pop("objective"))
        case["objective_file"] = f"objective-{i}.npy"
    next_cases = next_reference(args.out)
    payload = {"inputs_sha256": digest, "model": str(MODEL), "cases": cases, "next_cases": next_cases}
    ref.write_text(json.dumps(payload, indent=1) + "\n")
    print(f"wrote {ref}: {len(cases)} LLaVA-1.5 cases, {len(next_cases)} LLaVA-NeXT cases")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
