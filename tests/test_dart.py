"""DART: pivots, per-pivot claims, the release's visiting order, and the keys it reads."""

from __future__ import annotations

import math

import pytest
import torch

from mmtok.pruners import rotary_keys
from mmtok.pruners.dart import DARTPruner
from mmtok.selection.dart import dart_kept_count, dart_per_pivot, dart_select
from tests._tiny import QUESTIONS, generate, inputs


def test_counts_follow_the_release():
    # LLaVA-1.5, max_num_trunction 128: 128 // 8 = 16 per pivot, 4 + 8 * 16 = 132 kept
    assert dart_per_pivot(128, 576, 4, 4) == 16
    assert dart_kept_count(128, 576, 4, 4) == 132
    assert dart_kept_count(192, 576, 4, 4) == 196
    assert dart_kept_count(64, 576, 4, 4) == 68
    # NeXT: min(320, n - 4) // 8
    assert dart_per_pivot(320, 2000, 4, 4) == 40
    assert dart_per_pivot(320, 100, 4, 4) == 12  # 96 // 8
    assert dart_kept_count(20, 36, 4, 4) == 20  # 4 + 8 * 2


def test_hand_case_and_visiting_order():
    # 6 image tokens (0..5), 2 text tokens (6, 7); one image pivot (largest key L1: 2), one text (7)
    keys = torch.tensor([[1.0, 0], [1, 0], [5, 0], [1, 0], [1, 0], [1, 0], [1, 0], [3, 0]])
    states = torch.tensor([[1.0, 0.1], [0, 1], [1, 0], [-1, 0], [1, 1], [-1, 1], [0, 0.5], [0, 1]])
    # retain 4 -> 4 // 2 = 2 per pivot. The set {2, 7} is visited 2 then 7:
    #   pivot 2 = (1, 0): least similar in {0, 1, 3, 4, 5}: 3 (cos -1), 5 (-.71)
    #   pivot 7 = (0, 1): least similar in {0, 1, 4}: 0 (.0995), 4 (.71)
    # kept: pivot 2 and the claims 0, 3, 4, 5 (the text pivot only guides)
    assert list({2, 7}) == [2, 7]
    assert dart_select(keys, states, 0, 6, 4, pivot_image=1, pivot_text=1).tolist() == [0, 2, 3, 4, 5]


def _release_retained(keys, states, start, length, retain, pivot_image, pivot_text) -> list[int]:
    """A plain re-implementation of the release's `get_retained_image_token` (LLaVA-NeXT branch,
    `min(retain, n - pivot_image)`), one prompt; returns kept indices relative to the span."""
    token_topk = int(min(retain, length - pivot_image) // (pivot_image + pivot_text))
    image_l1 = torch.norm(keys[start : start + length], p=1, dim=-1)
    query_l1 = torch.norm(keys[start + length :], p=1, dim=-1)
    image_indices = (image_l1.topk(pivot_image).indices + start).tolist()
    query_indices = (query_l1.topk(pivot_text).indices + start + length).tolist()
    indices_set = set(image_indices + query_indices)
    valid = set(range(start, start + length)) - set(image_indices)
    valid_list = list(valid)
    for item in list(indices_set):
        cos = -torch.nn.functional.cosine_similarity(states[item, :], states[valid_list, :], dim=-1)
        top = cos.topk(token_topk).indices
        real = [valid_list[i] for i in top]
        indices_set.update(real)
        valid.difference_update(real)
        valid_list = list(valid)
    indices_set.difference_update(query_indices)
    return sorted(i - start for i in indices_set)


@pytest.mark.parametrize("seed", range(6))
def test_select_equals_the_release_rule_on_random_tensors(seed):
    g = torch.Generator().manual_seed(seed)
    start, length, text = [(35, 576, 40), (5, 100, 12), (0, 36, 9), (20, 300, 30), (3, 64, 5), (7, 200, 60)][seed]
    seq = start + length + text
    keys = torch.randn(seq, 64, generator=g)
    states = torch.randn(seq, 32, generator=g)
    retain = [128, 40, 16, 192, 24, 64][seed]
    expected = _release_retained(keys, states, start, length, retain, 4, 4)
    got = dart_select(keys, states, start, length, retain, 4, 4)
    assert got.tolist() == expected
    assert len(expected) == dart_kept_count(retain, length, 4, 4)


def test_keys_are_layer_k_minus_1_keys_and_picks_match(tiny_models):
    """The keys DART reads equal what layer K-1 caches (RoPE applied), and the kept tokens are
    `dart_select` on them and on the final-normed layer K-1 output."""
    model, processor = tiny_models["llava"]
    lm = model.model.language_model
    batch = inputs(processor, QUESTIONS[:1])
    captured = {}

    def grab(module, args, kwargs, out):
        captured["hidden"], captured["out"] = kwargs.get("hidden_states", args[0] if args else None), out
        captured["emb"] = kwargs["position_embeddings"]

    pruner = DARTPruner(budget=16)
    handle = lm.layers[1].register_forward_hook(grab, with_kwargs=True)
    try:
        with pruner(model, tokenizer=processor.tokenizer), torch.no_grad():
            out = model.generate(**batch, max_new_tokens=1, do_sample=False, return_dict_in_generate=True)
    finally:
        handle.remove()
    prompt = batch["input_ids"].shape[1]
    with torch.no_grad():
        keys = rotary_keys(lm.layers[1], captured["hidden"], captured["emb"])
        cached = out.past_key_values.layers[1].keys[0, :, :prompt]  # [kv_heads, S, head_dim]
        torch.testing.assert_close(keys[0], cached.transpose(0, 1).reshape(prompt, -1))
        states = lm.norm(captured["out"])[0]
    ids = batch["input_ids"][0]
    start = int((ids == model.config.image_token_id).nonzero()[0])
    expected = dart_select(keys[0], states, start, 36, 16)
    assert pruner.last_trace[0].keep[0].tolist() == expected.tolist()
    assert len(expected) == 20
    with torch.no_grad():
        assert out.past_key_values.layers[2].keys.shape[-2] == prompt - 36 + 20


def test_settings_and_keep_all(tiny_models):
    with pytest.raises(ValueError, match="layer K must be an integer >= 1"):
        DARTPruner(budget=8, layer=0)
    with pytest.raises(ValueError, match="at least one pivot"):
        DARTPruner(budget=8, pivot_image=0, pivot_text=0)
    model, processor = tiny_models["llava"]
    with (
        pytest.raises(ValueError, match="below the LLM's 16 layers"),
        DARTPruner(budget=8, layer=16)(model, tokenizer=processor.tokenizer),
    ):
        pass
    assert DARTPruner.keep_all().layer_schedule(36, model.config) == [36] * 16
    assert math.isclose(sum(DARTPruner(budget=16).layer_schedule(36, model.config)) / 16, (2 * 36 + 14 * 20) / 16)
    batch = inputs(processor, QUESTIONS[:1])
    with DARTPruner(budget=16)(model, tokenizer=processor.tokenizer):
        pruned = generate(model, batch, max_new_tokens=8)
    assert not torch.equal(pruned, generate(model, batch, max_new_tokens=8))
