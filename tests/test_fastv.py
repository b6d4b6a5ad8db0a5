"""FastV: the selection rule, the budget mapping, and what the pruned decoder layers really see."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from mmtok.pruners.fastv import FastVPruner, fastv_keep
from tests._tiny import QUESTIONS, generate, images, inputs

N = 36  # vision tokens of a tiny LLaVA-1.5 image
LAYERS = 16


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


def _image_start(model, ids):
    return int((ids == model.config.image_token_id).nonzero()[0])


# -- the rule and the budget ------------------------------------------------------------------
def test_keep_is_top_r_of_the_row_in_original_order():
    scores = torch.tensor([0.05, 0.30, 0.10, 0.25, 0.30, 0.00])
    # top 3: 0.30 (1), 0.30 (4), 0.25 (3) -> back in original order
    assert fastv_keep(scores, 3).tolist() == [1, 3, 4]
    # a tie at the cut goes to the lower index
    assert fastv_keep(scores, 1).tolist() == [1]
    assert fastv_keep(scores, 6).tolist() == [0, 1, 2, 3, 4, 5]


def test_equivalent_budget_mapping():
    fastv = FastVPruner(budget=64)
    # LLaVA-1.5-7B: 32 layers, 576 tokens, K=2: R = round((64*32 - 2*576) / 30) = round(29.87)
    assert fastv.kept_tokens(576, 32) == 30
    assert FastVPruner(budget=128).kept_tokens(576, 32) == 98  # 2944 / 30 = 98.13
    assert FastVPruner(budget=192).kept_tokens(576, 32) == 166  # 4992 / 30 = 166.4
    assert FastVPruner(budget=12).kept_tokens(N, LAYERS) == 9  # (192 - 72) / 14 = 8.57
    assert FastVPruner(budget=1000).kept_tokens(576, 32) == 576  # at most N: keeps all
    assert FastVPruner(budget=7, budget_mode="kept").kept_tokens(576, 32) == 7
    with pytest.raises(ValueError, match="minimum budget is 37"):
        # (36*32 - 1152) / 30 = 0 kept tokens; 37 gives 1.07 -> 1
        FastVPruner(budget=36).kept_tokens(576, 32)
    assert FastVPruner(budget=37).kept_tokens(576, 32) == 1
    with pytest.raises(ValueError, match="budget_mode"):
        FastVPruner(budget=8, budget_mode="tokens")
    with pytest.raises(ValueError, match="layer K"):
        FastVPruner(budget=8, layer=0)


def test_layer_beyond_the_model_is_rejected(models):
    model, processor = models["llava"]
    with (
        pytest.raises(ValueError, match="below the LLM's 16 layers"),
        FastVPruner(budget=8, layer=16)(model, tokenizer=processor.tokenizer),
    ):
        pass
    assert "generate" not in vars(model)


# -- what layers >= K see -----------------------------------------------------------------------
@pytest.mark.parametrize("k", [2, 5])
def test_pruned_layers_see_text_plus_r_with_original_positions(models, k):
    model, processor = models["llava"]
    layers = model.model.language_model.layers
    batch = inputs(processor, QUESTIONS[:1])
    ids = batch["input_ids"][0]
    length, start, r = ids.shape[0], _image_start(model, ids), 5
    seen = []
    pruner = FastVPruner(budget=r, budget_mode="kept", layer=k)
    with pruner(model, tokenizer=processor.tokenizer):
        handle = layers[k].register_forward_pre_hook(
            lambda m, a, kw: seen.append((a[0].shape[1], kw["position_ids"].clone())), with_kwargs=True
        )
        out = model.generate(**batch, max_new_tokens=4, do_sample=False, return_dict_in_generate=True)
        handle.remove()
    keep = pruner.last_trace[0].keep[0]
    assert pruner.last_trace[0].layer == k - 1
    assert keep.tolist() == sorted(keep.tolist()) and keep.numel() == r
    text = length - N
    assert [s[0] for s in seen] == [text + r, 1, 1, 1]
    kept_positions = torch.cat([torch.arange(start), start + keep, torch.arange(start + N, length)])
    assert seen[0][1][0].tolist() == kept_positions.tolist()  # original ids, gaps where tokens left
    assert [int(s[1]) for s in seen[1:]] == [length, length + 1, length + 2]  # decode: full prompt + t
    cache = out.past_key_values
    generated = out.sequences.shape[1] - length - 1  # the last token is never fed back
    for i in range(LAYERS):
        expected = (length if i < k else text + r) + generated
        assert cache.layers[i].keys.shape[-2] == expected, i
    stats = pruner.last_stats.samples[0]
    assert stats.vision_tokens == r
    assert stats.equivalent_tokens == pytest.approx((k * N + (LAYERS - k) * r) / LAYERS)


def test_scores_equal_eager_attention_of_the_last_token(models, tiny_llava_eager):
    """Reference: the unmodified model under eager attention with output_attentions (test only)."""

    model, processor = models["llava"]
    eager = tiny_llava_eager
    batch = inputs(processor, QUESTIONS[:2])  # left padding: the scoring row sees a 4-D mask
    k = 3
    pruner = FastVPruner(budget=6, budget_mode="kept", layer=k)
    with pruner(model, tokenizer=processor.tokenizer):
        generate(model, batch, max_new_tokens=1)
    with torch.no_grad():
        attn = eager(**batch, output_attentions=True).attentions[k - 1]  # [B, H, L, L]
    for b in range(2):
        start = _image_start(model, batch["input_ids"][b])
        reference = attn[b, :, -1, start : start + N].mean(0)
        torch.testing.assert_close(pruner.last_trace[0].scores[b], reference, atol=1e-6, rtol=1e-4)
        assert pruner.last_trace[0].keep[b].tolist() == fastv_keep(reference, 6).tolist()


# -- identity and batches -------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_keep_all_reproduces_the_unpruned_model(models, family):
    model, processor = models[family]
    for b in (1, 3):
        batch = inputs(processor, QUESTIONS[:b])
        reference = generate(model, batch, max_new_tokens=8)
        for pruner in (FastVPruner(), FastVPruner(budget=10_000), FastVPruner(budget=10_000, budget_mode="kept")):
            with pruner(model, tokenizer=processor.tokenizer):
                out = generate(model, batch, max_new_tokens=8)
            assert torch.equal(out, reference), (family, b, pruner)
            assert len(pruner.last_trace) == 1  # the scores were computed all the same
            for s in pruner.last_stats.samples:
                assert s.vision_tokens == s.vision_tokens_full == s.equivalent_tokens


@pytest.mark.parametrize("family,budget", [("llava", 8), ("llava_next", 40)])
def test_batch_equals_one_by_one_while_pruning(models, family, budget):
    """NeXT images have different packed spans (5 and 3 crops): the kept lengths differ per sample
    and the batch is re-padded inside the decoder."""
    model, processor = models[family]
    pruner = FastVPruner(budget=budget)
    batch = inputs(processor)
    with pruner(model, tokenizer=processor.tokenizer):
        together = generate(model, batch, max_new_tokens=8)
        stats = [dataclasses.replace(s) for s in pruner.last_stats.samples]
    reference = generate(model, batch, max_new_tokens=8)
    assert not torch.equal(together, reference)  # pruning is active and changes the answers
    assert all(s.vision_tokens < s.vision_tokens_full for s in stats)
    if family == "llava_next":
        assert len({s.vision_tokens_full for s in stats}) > 1
    for i, q in enumerate(QUESTIONS):
        single = inputs(processor, [q], imgs=[images()[i]])
        with pruner(model, tokenizer=processor.tokenizer):
            alone = generate(model, single, max_new_tokens=8)
        assert pruner.last_stats.samples[0].vision_tokens == stats[i].vision_tokens
        assert together[i].tolist() == alone[0].tolist(), (family, i)
