"""Exactness of the in-LLM rewrite path and of the VisionZip tower signals, against references
that need no pruning code: an identity cut must not change generations, FastV's first-token
logits must equal the unmodified model with the dropped keys masked out, and VisionZip's CLS
attention must equal the tower's own (eager, test-only) attention weights."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import pytest
import torch

from mmtok.models.adapters import adapter_for
from mmtok.pruners import Cut, build_pruner
from mmtok.pruners.fastv import FastVPruner
from tests._tiny import QUESTIONS, generate, inputs


@dataclass
class IdentityCut(FastVPruner):
    """Scores like FastV, then 'keeps' every row: the masks / positions / cache rewrite still runs."""

    name: ClassVar[str] = "identity-cut"

    def cut(self, step, view):
        super().cut(step, view)
        return [Cut(keep=torch.arange(view.stage.rows, device=view.hidden.device)) for _ in view.stage.spans]


@dataclass
class IdentityCutRenumbered(IdentityCut):
    renumber_positions: ClassVar[bool] = True


@pytest.mark.parametrize("family", ["llava", "llava_next"])
@pytest.mark.parametrize("cls", [IdentityCut, IdentityCutRenumbered])
@pytest.mark.parametrize("layer", [2, 5])
def test_identity_cut_through_the_rewrite_path_changes_nothing(tiny_models, family, cls, layer):
    model, processor = tiny_models[family]
    for b in (1, 3):
        batch = inputs(processor, QUESTIONS[:b])
        ref = generate(model, batch, max_new_tokens=8)
        with cls(budget=None, layer=layer)(model):
            assert torch.equal(generate(model, batch, max_new_tokens=8), ref), (family, b)


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_fastv_first_token_equals_the_model_with_dropped_keys_masked(tiny_models, family):
    model, processor = tiny_models[family]
    batch = inputs(processor, QUESTIONS[:1])
    k = 3
    pruner = FastVPruner(budget=6, budget_mode="kept", layer=k)
    with pruner(model), torch.no_grad():
        out = model.generate(
            **batch, max_new_tokens=1, do_sample=False, output_logits=True, return_dict_in_generate=True
        )
    keep = pruner.last_trace[0].keep[0]
    ids = batch["input_ids"][0]
    length = ids.shape[0]
    image = (ids == model.config.image_token_id).nonzero().flatten()
    allowed = torch.ones(length, dtype=torch.bool)
    allowed[image] = False
    allowed[image[0] + keep] = True
    causal = torch.ones(length, length, dtype=torch.bool).tril()
    neg = torch.finfo(torch.float32).min
    late = torch.where((causal & allowed[None]) | torch.eye(length, dtype=torch.bool), 0.0, neg)[None, None]
    early = torch.where(causal, 0.0, neg)[None, None]
    layers = model.model.language_model.layers
    handles = [
        layer.register_forward_pre_hook(
            lambda mod, a, kw, m=(late if i >= k else early): (a, {**kw, "attention_mask": m}), with_kwargs=True
        )
        for i, layer in enumerate(layers)
    ]
    try:
        with torch.no_grad():
            ref = model(**batch).logits[0, -1]
    finally:
        for h in handles:
            h.remove()
    assert torch.allclose(out.logits[0][0], ref, atol=1e-4, rtol=1e-4)


def test_visionzip_cls_attention_equals_the_towers_own_weights(tiny_models, tiny_llava_eager):

    model, processor = tiny_models["llava"]
    batch = inputs(processor, QUESTIONS[:2])
    pruner = build_pruner("visionzip", budget=8)
    with torch.no_grad():
        images = pruner.encode(adapter_for(model), batch["pixel_values"])
    eager = tiny_llava_eager
    with torch.no_grad():
        ref = eager.model.vision_tower(batch["pixel_values"], output_attentions=True).attentions[-2][:, :, 0]
    got = torch.stack([img.cls_attention[0] for img in images])
    assert torch.allclose(got, ref, atol=1e-6)
