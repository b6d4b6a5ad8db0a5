"""SparseVLM: raters, per-layer counts, density-peak recycling, and the pruned decoder layers."""

from __future__ import annotations

import math

import pytest
import torch

from mmtok.pruners.sparsevlm import SparseVLMPruner
from mmtok.selection.sparsevlm import (
    density_peak_clusters,
    layer_counts,
    recycle,
    recycled_groups,
    text_raters,
)
from tests._tiny import QUESTIONS, generate, inputs

N = 36  # vision tokens of a tiny LLaVA-1.5 image
LAYERS = 16


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


# -- pure math ------------------------------------------------------------------------------------
def test_raters_hand_case():
    vision = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    text = torch.tensor([[2.0, 0.0], [0.0, 2.0], [0.0, 0.0]])
    # V T^T = [[2, 0, 0], [0, 2, 0]]; softmax rows: [a, b, b] and [b, a, b] with a = e^2 / (e^2 + 2)
    a, b = math.e**2 / (math.e**2 + 2), 1 / (math.e**2 + 2)
    relevance = torch.tensor([(a + b) / 2, (a + b) / 2, b])  # mean over vision tokens; mean = 1/3
    assert relevance[0] > 1 / 3 > relevance[2]
    assert text_raters(vision, text).tolist() == [0, 1]
    # all relevances equal: every text token rates
    assert text_raters(vision, torch.zeros(4, 2)).tolist() == [0, 1, 2, 3]
    with pytest.raises(ValueError, match="text tokens after the image"):
        text_raters(vision, torch.zeros(0, 2))


def test_layer_counts_tables_and_rule():
    assert layer_counts(192, 576) == (300, 200, 110)
    assert layer_counts(128, 576) == (303, 110, 36)
    assert layer_counts(64, 576) == (66, 30, 17)
    # halfway between 64 and 128: (184.5, 70, 26.5) rounded half up
    assert layer_counts(96, 576) == (185, 70, 27)
    # tiny model: budget 8 of 36 tokens is 128 of 576 -> (303, 110, 36) / 16 = (18.94, 6.88, 2.25)
    assert layer_counts(8, 36) == (19, 7, 2)
    # below the 64 row: scaled towards 0, never below one token
    assert layer_counts(32, 576) == (33, 15, 9)
    assert layer_counts(1, 576) == (1, 1, 1)
    # at or above N everything stays; None keeps everything
    assert layer_counts(576, 576) == (576, 576, 576)
    assert layer_counts(50, 36) == (36, 36, 36)
    assert layer_counts(None, 36) == (36, 36, 36)


def test_density_peak_clusters_hand_case():
    x = torch.tensor([[0.0], [1.0], [2.0], [10.0], [11.0], [12.5]])
    # d = |xi - xj| (D=1). k=2 nearest neighbours: mean squared distances
    #   0: (1+4)/2=2.5  1: (1+1)/2=1  2: 2.5  10: (1+6.25)/2=3.625  11: (1+2.25)/2=1.625  12.5: 4.25
    # rho = exp(-that): 1 is densest (delta = max distance 11.5, gamma = 4.23), 11 next (delta 10 to
    # point 1, gamma 1.97), then 0 and 2 tie (gamma e^-2.5 * 1; 0 wins the tie), 10 and 12.5 below.
    assert density_peak_clusters(x, 2, k=2).tolist() == [0, 0, 0, 1, 1, 1]
    # three centres 0, 1 and 11: point 2 is nearer to centre 1 than to centre 0
    assert density_peak_clusters(x, 3, k=2).tolist() == [0, 1, 1, 2, 2, 2]
    assert density_peak_clusters(x, 6, k=2).tolist() == [0, 1, 2, 3, 4, 5]


def test_recycle_means_of_the_top_scored_pruned_tokens():
    assert recycled_groups(0) == (0, 0)
    assert recycled_groups(10) == (3, 1)  # ceil(30% of 10) = 3 tokens, 3 // 10 + 1 = 1 cluster
    assert recycled_groups(34) == (11, 2)  # ceil(10.2) = 11 tokens, 2 clusters
    tokens = torch.tensor([[0.0, 0.0], [5.0, 5.0], [1.0, 1.0], [9.0, 9.0], [2.0, 0.0], [7.0, 7.0], [0.0, 3.0]])
    scores = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.05, 0.7, 0.0])
    # 7 pruned -> top 3 by score: rows 1, 3, 5 -> one cluster -> their mean
    torch.testing.assert_close(recycle(tokens, scores), torch.tensor([[7.0, 7.0]]))
    assert recycle(tokens[:0], scores[:0]).shape == (0, 2)


# -- on the tiny model ------------------------------------------------------------------------------
def _lengths(layers, store):
    def hook(module, args, kwargs):
        store.setdefault(module, []).append((args[0].shape[1], kwargs.get("position_ids")))

    return [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in layers]


def test_counts_per_layer_positions_and_cache(models):
    model, processor = models["llava"]
    lm = model.model.language_model
    batch = inputs(processor, QUESTIONS[:1])
    length = batch["input_ids"].shape[1]
    text = length - N
    pruner = SparseVLMPruner(counts=(20, 10, 5))
    seen = {}
    with pruner(model, tokenizer=processor.tokenizer):
        handles = _lengths(list(lm.layers) + [lm.norm], seen)
        try:
            out = model.generate(**batch, max_new_tokens=3, do_sample=False, return_dict_in_generate=True)
        finally:
            for h in handles:
                h.remove()
    # vision tokens: 36 -> 20 kept + 1 recycled (16 pruned: 5 recycled, 1 cluster)
    #               -> 10 + 1 (11 pruned: 4 recycled, 1 cluster) -> 5 + 1 (6 pruned: 2, 1 cluster)
    vision = [36] * 3 + [21] * 4 + [11] * 9
    assert [t["recycled"][0] for t in pruner.last_trace] == [1, 1, 1]
    assert [t["layer"] for t in pruner.last_trace] == [2, 6, 15]
    prefill = [seen[layer][0][0] for layer in lm.layers]
    assert prefill == [text + v for v in vision]
    assert seen[lm.norm][0][0] == text + 6  # pruning applies to layer 15's output too
    stats = pruner.last_stats["samples"][0]
    assert stats["layer_vision_tokens"] == vision
    assert stats["vision_tokens"] == 6
    assert stats["equivalent_tokens"] == pytest.approx(sum(vision) / LAYERS)
    for i, layer in enumerate(lm.layers):
        rows = text + vision[i]
        positions = [p for _, p in seen[layer]]
        # renumbered contiguously; a decode token's position is the layer's cached length
        assert positions[0][0].tolist() == list(range(rows)), i
        assert [int(p) for p in positions[1:]] == [rows, rows + 1], i
        assert out.past_key_values.layers[i].keys.shape[-2] == rows + 2, i


def test_scores_follow_rater_attention(models, tiny_llava_eager):
    """Layer-2 scores equal the eager model's attention (test-only reference) from the raters."""

    model, processor = models["llava"]
    eager = tiny_llava_eager
    batch = inputs(processor, QUESTIONS[:1])
    pruner = SparseVLMPruner(counts=(20, 10, 5))
    with pruner(model, tokenizer=processor.tokenizer):
        generate(model, batch, max_new_tokens=1)
    ids = batch["input_ids"][0]
    start = int((ids == model.config.image_token_id).nonzero()[0])
    with torch.no_grad():
        attn = eager(**batch, output_attentions=True).attentions[2][0]  # [H, L, L]
        embeds = model.get_input_embeddings()(ids)
        pixel = model.model.get_image_features(pixel_values=batch["pixel_values"]).pooler_output[0]
    text_rows = torch.arange(start + N, ids.shape[0])
    raters = text_rows[text_raters(pixel.reshape(N, -1), embeds[text_rows])]
    trace = pruner.last_trace[0]
    assert trace["raters"][0].tolist() == raters.tolist()
    reference = attn[:, raters][..., start : start + N].mean(dim=(0, 1))
    torch.testing.assert_close(trace["scores"][0], reference, atol=1e-6, rtol=1e-4)
    assert trace["keep"][0].tolist() == reference.topk(20).indices.sort().values.tolist()


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_keep_all_reproduces_the_unpruned_model(models, family):
    model, processor = models[family]
    batch = inputs(processor, QUESTIONS[:1])
    reference = generate(model, batch, max_new_tokens=8)
    for pruner in (SparseVLMPruner(), SparseVLMPruner(budget=10_000), SparseVLMPruner(counts=(5000, 5000, 5000))):
        with pruner(model, tokenizer=processor.tokenizer):
            out = generate(model, batch, max_new_tokens=8)
        assert torch.equal(out, reference), (family, pruner)
        assert len(pruner.last_trace) == 3  # scored at every layer all the same
        s = pruner.last_stats["samples"][0]
        assert s["vision_tokens"] == s["vision_tokens_full"] == s["equivalent_tokens"]


def test_pruning_changes_generations_and_next_runs(models):
    for family, budget in (("llava", 8), ("llava_next", 40)):
        model, processor = models[family]
        batch = inputs(processor, QUESTIONS[:1])
        pruner = SparseVLMPruner(budget=budget)
        with pruner(model, tokenizer=processor.tokenizer):
            out = generate(model, batch, max_new_tokens=8)
        assert not torch.equal(out, generate(model, batch, max_new_tokens=8)), family
        s = pruner.last_stats["samples"][0]
        counts = layer_counts(budget, s["vision_tokens_full"])
        kept = [t["keep"][0].numel() for t in pruner.last_trace]
        assert kept == list(counts), family
        assert s["vision_tokens"] == counts[-1] + pruner.last_trace[-1]["recycled"][0]


def test_batch_is_rejected_and_settings_validated(models):
    model, processor = models["llava"]
    with (
        SparseVLMPruner(budget=8)(model, tokenizer=processor.tokenizer),
        pytest.raises(ValueError, match="pruner 'sparsevlm' supports batch size 1 only"),
    ):
        generate(model, inputs(processor))
    with pytest.raises(ValueError, match="one per layer"):
        SparseVLMPruner(counts=(10, 5))
    with pytest.raises(ValueError, match="either budget or counts"):
        SparseVLMPruner(budget=8, counts=(10, 5, 2))
    with pytest.raises(ValueError, match="give counts"):
        SparseVLMPruner(budget=8, layers=(2, 6))
    for layers, message in (((2, 6, 16), "does not exist"), ((6, 2, 9), "increasing")):
        pruner = SparseVLMPruner(counts=(10, 5, 2), layers=layers)
        with pytest.raises(ValueError, match=message), pruner(model, tokenizer=processor.tokenizer):
            pass
    assert "generate" not in vars(model)
