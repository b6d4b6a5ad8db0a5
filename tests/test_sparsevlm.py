"""SparseVLM: raters, per-layer counts, density-peak recycling, and the pruned decoder layers."""

from __future__ import annotations

import math

import pytest
import torch

from mmtok.pruners.sparsevlm import SparseVLMPruner
from mmtok.selection.sparsevlm import (
    density_peak_clusters,
    layer_counts,
    pairwise_distance,
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
    # d = |xi - xj| (D=1). groups=2 nearest (self included): mean squared distance to self + nearest
    #   0: 1/2  1: 1/2  2: 1/2  10: 1/2  11: 1/2  12.5: 2.25/2 -> rho = e^-0.5 for all but 12.5
    # nobody is strictly denser than the five tied rows: their delta is the matrix max 12.5, gamma
    # 12.5 e^-0.5 (tie -> rows 0 and 1 are the centres, in that order); 12.5's delta is 1.5.
    # every row joins its nearest centre (0 or 1): 0 -> 0, the rest -> 1
    assert density_peak_clusters(x, 2).tolist() == [0, 1, 1, 1, 1, 1]
    x = torch.tensor([[0.0], [1.0], [1.5], [10.0], [11.0], [13.0]])
    # groups=2: rho_i = exp(-nn_i^2 / 2), nn = 1, .5, .5, 1, 1, 2 -> rows 1 and 2 densest (tied)
    # delta: rows 1, 2 -> max 13 (gamma 13 e^-.125); 0 -> 1; 10 -> 8.5; 11 -> 9.5; 13 -> 2
    # gamma: 1 & 2: 11.47 (tie -> 1 first, then 2), 11: 9.5 e^-.5 = 5.76, 10: 8.5 e^-.5 = 5.16
    assert density_peak_clusters(x, 2).tolist() == [0, 0, 1, 1, 1, 1]
    # groups=3 (self + 2 nearest): mean sq = 0: 3.25/3, 1: 1.25/3, 1.5: 2.5/3, 10: 10/3, 11: 5/3, 13: 13/3
    # delta: 1 -> 13 (densest), 1.5 -> .5, 0 -> 1, 11 -> 9.5, 10 -> 1, 13 -> 2
    # gamma: 1: 8.57, 11: 1.79, 0: .338, 1.5: .217, ... -> centres 1, 11, 0 (ids 0, 1, 2)
    assert density_peak_clusters(x, 3).tolist() == [2, 0, 0, 1, 1, 1]
    # groups=6 (all rows): sum sq = 393.25, 326.25, 297.25, 263.25, 316.25, 458.25 -> density order
    # 10, 1.5, 11, 1, 0, 13; delta 13, 8.5, 1, .5, 1, 2 -> gamma in the same order: ids by it
    assert density_peak_clusters(x, 6).tolist() == [4, 3, 1, 0, 2, 5]
    with pytest.raises(ValueError, match="groups must be <= 6"):
        density_peak_clusters(x, 7)


def test_recycle_means_of_the_top_scored_pruned_tokens():
    assert recycled_groups(0) == (0, 0)
    assert recycled_groups(1) == (1, 1)
    assert recycled_groups(10) == (4, 1)  # int(3.0000000000000004) + 1 = 4 tokens, int(0.4) + 1 = 1 cluster
    assert recycled_groups(34) == (11, 2)  # int(10.2) + 1 = 11 tokens, int(1.1) + 1 = 2 clusters
    assert recycled_groups(273) == (82, 9)  # LLaVA-1.5 at 128, layer 2: 576 - 303 pruned
    tokens = torch.tensor([[0.0, 0.0], [5.0, 5.0], [1.0, 1.0], [9.0, 9.0], [2.0, 0.0], [7.0, 7.0], [0.0, 3.0]])
    scores = torch.tensor([0.1, 0.9, 0.2, 0.8, 0.05, 0.7, 0.0])
    # 7 pruned -> int(2.1) + 1 = 3 top by score: rows 1, 3, 5 -> one cluster -> sum / (3 + 1e-6)
    torch.testing.assert_close(recycle(tokens, scores), torch.tensor([[21.0, 21.0]]) / (3 + 1e-6))
    assert recycle(tokens[:0], scores[:0]).shape == (0, 2)


def _release_cluster_and_merge(x: torch.Tensor, cluster_num: int) -> tuple[torch.Tensor, torch.Tensor]:
    """A plain re-implementation of the release's `cluster_and_merge` (batch 1, without its
    `rand * 1e-6` density noise): (cluster id per row, merged tokens)."""
    n, c = x.shape
    dist = torch.zeros(n, n, dtype=x.dtype)
    for i in range(n):
        for j in range(n):
            dist[i, j] = (x[i] - x[j]).norm(p=2)
    dist = dist / (c**0.5)
    density = torch.empty(n, dtype=x.dtype)
    for i in range(n):
        nearest = sorted(dist[i].tolist())[:cluster_num]
        density[i] = torch.tensor(nearest, dtype=x.dtype).pow(2).mean().neg().exp()
    dist_max = dist.max()
    parent = torch.empty(n, dtype=x.dtype)
    for i in range(n):
        denser = [dist[i, j] for j in range(n) if density[j] > density[i]]
        parent[i] = min(denser) if denser else dist_max
    score = (parent * density).tolist()
    centres = sorted(range(n), key=lambda i: (-score[i], i))[:cluster_num]
    assign = []
    for i in range(n):
        to_centre = [float(dist[ctr, i]) for ctr in centres]
        assign.append(to_centre.index(min(to_centre)))
    for g, ctr in enumerate(centres):
        assign[ctr] = g
    merged = torch.zeros(cluster_num, c, dtype=x.dtype)
    for g in range(cluster_num):
        members = [i for i in range(n) if assign[i] == g]
        for i in members:
            merged[g] += x[i] * (1 / (len(members) + 1e-6))
    return torch.tensor(assign), merged


def _release_recycle(tokens: torch.Tensor, scores: torch.Tensor) -> tuple[list[int], torch.Tensor, torch.Tensor]:
    """The release's recycling step on the pruned tokens (image order) and their scores."""
    m = tokens.shape[0]
    n = int(m * 0.3) + 1
    top = sorted(range(m), key=lambda i: (-float(scores[i]), i))[:n]
    cluster_num = int(n / 10) + 1
    assign, merged = _release_cluster_and_merge(tokens[top], cluster_num)
    return top, assign, merged


@pytest.mark.parametrize("seed", range(6))
def test_recycle_equals_the_release_rule_on_random_instances(seed):
    g = torch.Generator().manual_seed(seed)
    m = [40, 57, 93, 120, 12, 200][seed]
    # clumpy tokens so that clusters are non-trivial; integer-valued scores force exact score ties
    centres = torch.randn(5, 16, generator=g) * 3
    tokens = centres[torch.randint(0, 5, (m,), generator=g)] + torch.randn(m, 16, generator=g)
    scores = torch.randint(0, 20, (m,), generator=g).float()
    top, assign, merged = _release_recycle(tokens, scores)
    chosen = tokens[top]
    assert density_peak_clusters(chosen, int(len(top) / 10) + 1).tolist() == assign.tolist()
    torch.testing.assert_close(recycle(tokens, scores), merged, rtol=1e-6, atol=1e-6)


def test_pairwise_distance_blocks_match_one_shot():
    x = torch.randn(300, 1024, generator=torch.Generator().manual_seed(0))  # 300 * 300 * 1024 > 2^26: blocks
    one_shot = (x[:, None, :] - x[None, :, :]).norm(dim=-1, p=2) / (1024**0.5)
    assert torch.equal(pairwise_distance(x), one_shot)


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
    assert [t.recycled[0] for t in pruner.last_trace] == [1, 1, 1]
    assert [t.layer for t in pruner.last_trace] == [2, 6, 15]
    prefill = [seen[layer][0][0] for layer in lm.layers]
    assert prefill == [text + v for v in vision]
    assert seen[lm.norm][0][0] == text + 6  # pruning applies to layer 15's output too
    stats = pruner.last_stats.samples[0]
    assert stats.layer_vision_tokens == vision
    assert stats.vision_tokens == 6
    assert stats.equivalent_tokens == pytest.approx(sum(vision) / LAYERS)
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
    assert trace.raters[0].tolist() == raters.tolist()
    reference = attn[:, raters][..., start : start + N].mean(dim=(0, 1))
    torch.testing.assert_close(trace.scores[0], reference, atol=1e-6, rtol=1e-4)
    assert trace.keep[0].tolist() == reference.topk(20).indices.sort().values.tolist()


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
        s = pruner.last_stats.samples[0]
        assert s.vision_tokens == s.vision_tokens_full == s.equivalent_tokens


def test_pruning_changes_generations_and_next_runs(models):
    for family, budget in (("llava", 8), ("llava_next", 40)):
        model, processor = models[family]
        batch = inputs(processor, QUESTIONS[:1])
        pruner = SparseVLMPruner(budget=budget)
        with pruner(model, tokenizer=processor.tokenizer):
            out = generate(model, batch, max_new_tokens=8)
        assert not torch.equal(out, generate(model, batch, max_new_tokens=8)), family
        s = pruner.last_stats.samples[0]
        counts = layer_counts(budget, s.vision_tokens_full)
        kept = [t.keep[0].numel() for t in pruner.last_trace]
        assert kept == list(counts), family
        assert s.vision_tokens == counts[-1] + pruner.last_trace[-1].recycled[0]


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
