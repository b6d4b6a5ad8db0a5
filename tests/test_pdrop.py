"""PyramidDrop: the staged schedule, the budget -> lambda rule, and the scores against the release's rule."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

from mmtok.pruners import attention_rows, build_pruner
from mmtok.pruners.pdrop import PDropPruner
from mmtok.selection import top_in_order
from mmtok.selection.pdrop import default_rank_layers, solve_ratio, stage_counts, stage_lengths
from tests._tiny import QUESTIONS, generate, inputs

N = 36  # vision tokens of a tiny LLaVA-1.5 image
LAYERS = 16


def test_release_defaults_and_counts():
    assert default_rank_layers(32) == (8, 16, 24)  # the release's layer_list
    assert default_rank_layers(16) == (4, 8, 12)
    assert stage_lengths((8, 16, 24), 32) == [8, 8, 8, 8]
    # image_token_ratio_list [0.5, 0.25, 0.125]: int(576 * r)
    assert stage_counts(576, 0.5, 3) == (288, 144, 72)
    assert stage_counts(36, 0.5, 3) == (18, 9, 4)  # int(4.5) = 4
    assert stage_counts(36, 0.05, 3) == (1, 1, 1)  # never below one token
    assert stage_counts(36, 1.0, 3) == (36, 36, 36)


def test_budget_solves_lambda():
    # (8 + 8l + 8l^2 + 8l^3) / 32 * 576 = 270 exactly at l = 1/2: found exactly
    assert PDropPruner(budget=270).lam(32, 576) == Fraction(1, 2)
    # 192: l + l^2 + l^3 = 1/3 -> l = 0.25308 -> int(576 l^s) = 145, 36, 9
    lam = PDropPruner(budget=192).lam(32, 576)
    assert abs(float(lam + lam**2 + lam**3) - 1 / 3) < 1e-12
    assert PDropPruner(budget=192).counts(576, 32, 576) == (145, 36, 9)
    assert solve_ratio(Fraction(1), (8, 16, 24), 32) == 1
    # the first 8 of 32 layers see all 576 tokens: 144 is the infimum, 145 the smallest label
    with pytest.raises(ValueError, match="the minimum budget is 145 \\(or give earlier layers\\)"):
        PDropPruner(budget=144).lam(32, 576)
    assert PDropPruner(budget=145).counts(576, 32, 576)[0] >= 1
    # no budget: the release's lambda; ratio sets it
    assert PDropPruner().counts(576, 32, 576) == (288, 144, 72)
    assert PDropPruner(ratio=0.75).counts(576, 32, 576) == (432, 324, 243)


def test_settings_are_validated():
    with pytest.raises(ValueError, match="either budget or ratio"):
        PDropPruner(budget=192, ratio=0.5)
    with pytest.raises(ValueError, match="ratio \\(lambda\\) must be in \\(0, 1\\]"):
        PDropPruner(ratio=1.5)
    with pytest.raises(ValueError, match="rank layers must lie in \\[1, 15\\]"):
        PDropPruner(layers=(4, 16)).prune_layers(16)
    with pytest.raises(ValueError, match="increasing"):
        PDropPruner(layers=(8, 4)).prune_layers(16)
    assert PDropPruner(layers=(2, 6)).prune_layers(16) == (1, 5)
    assert build_pruner("pdrop").keep_all().ratio == 1.0


def test_schedule_on_the_tiny_model(tiny_models):
    model, _ = tiny_models["llava"]
    assert PDropPruner().layer_schedule(N, model.config) == [36] * 4 + [18] * 4 + [9] * 4 + [4] * 4
    assert PDropPruner.keep_all().layer_schedule(N, model.config) == [36] * 16


def _release_rank(layer, rotary, hidden: torch.Tensor, start: int, n: int, keep: int) -> list[int]:
    """A plain re-implementation of the release's `pdrop_rank_drop` ranking (inference, one sample):
    layer r's input_layernorm, q/k projections and rotary on layer r-1's output, the last prompt
    token's row, softmax(q k^T / sqrt(d) + causal) in float32, mean over heads, the image columns,
    topk(keep), sorted."""
    attn = layer.self_attn
    h = layer.input_layernorm(hidden)
    _, seq, _ = h.shape
    hd = attn.head_dim
    q = attn.q_proj(h).view(1, seq, -1, hd).transpose(1, 2)
    k = attn.k_proj(h).view(1, seq, -1, hd).transpose(1, 2)
    pos = torch.arange(seq)[None]
    cos, sin = rotary(h, pos)
    cos, sin = cos[:, None], sin[:, None]

    def rot(x):
        half = x.shape[-1] // 2
        return torch.cat((-x[..., half:], x[..., :half]), dim=-1)

    q, k = q * cos + rot(q) * sin, k * cos + rot(k) * sin
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)
    weights = q[:, :, -1:] @ k.transpose(-1, -2) / math.sqrt(hd)  # the last row attends to every key
    probs = torch.softmax(weights, dim=-1, dtype=torch.float32)[0, :, 0]  # [H, S]
    avg = probs.mean(dim=0)[start : start + n]
    order = sorted(range(n), key=lambda i: (-float(avg[i]), i))[:keep]
    return sorted(order)


@pytest.mark.parametrize("seed", range(5))
def test_ranking_equals_the_release_rule_on_random_states(tiny_models, seed):
    model, _ = tiny_models["llava"]
    lm = model.model.language_model
    layer = lm.layers[4]
    g = torch.Generator().manual_seed(seed)
    seq, start, n = 60, 5, 36
    hidden = torch.randn(1, seq, lm.config.hidden_size, generator=g)
    keep = [18, 9, 4, 30, 1][seed]
    with torch.no_grad():
        expected = _release_rank(layer, lm.rotary_emb, hidden, start, n, keep)
        pos = torch.arange(seq)[None]
        probs = attention_rows(layer, hidden, torch.tensor([[seq - 1]]), lm.rotary_emb(hidden, pos), None)[0, 0]
    assert top_in_order(probs[start : start + n], keep).tolist() == expected


def test_first_drop_follows_the_eager_attention_of_the_rank_layer(tiny_models, tiny_llava_eager):
    model, processor = tiny_models["llava"]
    batch = inputs(processor, QUESTIONS[:1])
    pruner = PDropPruner()
    with pruner(model, tokenizer=processor.tokenizer):
        out = generate(model, batch, max_new_tokens=4)
    assert not torch.equal(out, generate(model, batch, max_new_tokens=4))
    ids = batch["input_ids"][0]
    start = int((ids == model.config.image_token_id).nonzero()[0])
    with torch.no_grad():
        attn = tiny_llava_eager(**batch, output_attentions=True).attentions[4][0]  # [H, L, L], layer 4 unpruned
    reference = attn[:, -1, start : start + N].mean(dim=0)
    trace = pruner.last_trace[0]
    assert trace.layer == 4
    torch.testing.assert_close(trace.scores[0], reference, atol=1e-6, rtol=1e-4)
    assert trace.keep[0].tolist() == top_in_order(reference, 18).tolist()
    assert [t.keep[0].numel() for t in pruner.last_trace] == [18, 9, 4]
