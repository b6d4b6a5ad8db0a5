"""The trained testbed LLaVA (results/testbed/model): real accuracy, offline, on CPU.

The committed model answers the synthetic-scene benchmarks well unpruned, and pruning visibly
matters on it: a pruner that keeps the least relevant tokens and uniform random tokens at a tiny
budget both score far below a correct pruner / the unpruned model. This is what makes a broken
pruner fail CI here, where the random-weight tiny models answer nonsense either way.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import pytest
import torch

from mmtok.models.adapters import CropSelection, ImageCrops
from mmtok.pruners import Pruner, SampleContext, build_pruner

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "results" / "testbed" / "model"
SLICE = 100  # a fixed 100-question set per testbed (POPE: all three splits)


@dataclass
class LowestRelevancePruner(Pruner):
    """Deliberately broken: keeps the image tokens LEAST similar to the question's words."""

    name: ClassVar[str] = "lowest_relevance"

    def select(self, image: ImageCrops, k: int, ctx: SampleContext) -> CropSelection:
        text = torch.nn.functional.normalize(ctx.embed_tokens(ctx.input_ids).float(), dim=-1)
        out = []
        for crop in image.proj:
            score = (torch.nn.functional.normalize(crop.float(), dim=-1) @ text.T).max(dim=-1).values
            out.append(torch.sort(torch.topk(-score, k).indices).values)
        return CropSelection(indices=out)


@pytest.fixture(scope="module")
def testbed_model():
    from mmtok.models.loading import load_model

    torch.set_num_threads(1)
    model, processor, info = load_model(str(MODEL), dtype="float32", attn_implementation="sdpa", device="cpu")
    return model, processor


@pytest.fixture(scope="module")
def beds(tmp_path_factory):
    from mmtok.data import build_dataset

    # held-out scenes (the builders' random streams are not the training streams), 100 questions each
    folder = tmp_path_factory.mktemp("scenes")
    return {t: build_dataset(folder / t, t, n=SLICE, seed=0) for t in ("scenes_pope", "scenes_gqa")}


@pytest.fixture(scope="module")
def unpruned_pope(testbed_model, beds):
    return score(testbed_model, beds["scenes_pope"], build_pruner("none"))


def score(testbed_model, bed, pruner) -> tuple[float, list[dict]]:
    from mmtok.eval.evaluate import evaluate
    from mmtok.eval.protocol import RunProtocol

    model, processor = testbed_model
    out = evaluate(
        model,
        processor,
        pruner,
        tasks=[bed.task],
        include_path=str(bed.include_path),
        protocol=RunProtocol(limit=SLICE, progress=False),
    )
    assert len(out.samples) == SLICE
    key = "pope_f1_avg" if bed.benchmark == "scenes_pope" else "gqa_exact_match"
    return out.metrics[key], out.samples


def test_committed_checkpoint_is_a_real_llava_loaded_offline():
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(MODEL)
    assert cfg.model_type == "llava" and cfg.vision_feature_layer == -1
    assert (cfg.vision_config.image_size, cfg.vision_config.patch_size) == (336, 14)  # 576 image tokens
    size = sum(f.stat().st_size for f in MODEL.iterdir())
    assert size <= 20 * 2**20


def test_unpruned_scores_on_the_fixed_slice(testbed_model, beds, unpruned_pope):
    pope, samples = unpruned_pope
    assert {s["category"] for s in samples} == {"random", "popular", "adversarial"}
    assert all(s["vision_tokens"] == 576 for s in samples)
    assert pope >= 0.85, pope
    gqa, _ = score(testbed_model, beds["scenes_gqa"], build_pruner("none"))
    assert gqa >= 0.80, gqa


def test_broken_pruner_scores_visibly_worse_than_a_correct_one(testbed_model, beds):
    bed = beds["scenes_pope"]
    good, _ = score(testbed_model, bed, build_pruner("mmtok", 16))
    bad, samples = score(testbed_model, bed, LowestRelevancePruner(budget=16))
    assert all(s["vision_tokens"] == 16 for s in samples)
    assert good - bad >= 0.15, (good, bad)


def test_random_at_budget_4_is_far_below_unpruned(testbed_model, beds, unpruned_pope):
    full, _ = unpruned_pope
    rand, _ = score(testbed_model, beds["scenes_pope"], build_pruner("random", 4, seed=0))
    assert full - rand >= 0.15, (full, rand)
