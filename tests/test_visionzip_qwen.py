"""VisionZip on Qwen2.5-VL (no CLS token): the VisionZip authors' Qwen2.5-VL rule, declared by the family.

- `visionzip_in_place` on a hand-computed case, and against a plain transcription of the authors'
  Qwen2.5-VL port (their `Qwen2_5_VLForConditionalGeneration.forward` selection) on random tensors;
- the family's substitute score (`encode_with_attention`) against the port's literal formula
  (`attn_mean = logits.mean(0).sum(0).view(-1, 4).mean(-1)[reverse]`) on the tiny checkpoint;
- a pruned run equals a no-cache greedy reference fed the merged tokens at their targets' rows with
  their original M-RoPE positions;
- the family declares the trait, the method requires it, the CLS-only methods stay refused.
The shared contract (keep-all, exact counts, batch = one by one, determinism) runs it through
`QwenTester` in tests/test_pruner_contract.py.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from mmtok.models.adapters import adapter_for
from mmtok.models.qwen2_5_vl import adapter as Q
from mmtok.models.qwen2_5_vl.tower import LastBlockCapture
from mmtok.models.registry import family
from mmtok.pruners import PRUNERS, SampleContext, build_pruner, check_applies
from mmtok.selection.visionzip import visionzip_in_place, visionzip_split
from tests._families import QwenTester
from tests._tiny import QUESTIONS
from tests.test_qwen25vl import _eos, _reference, _until_eos

TESTER = QwenTester()


@pytest.fixture(scope="module")
def tiny_qwen(family_models):
    return family_models(TESTER)


# -- the selection rule ---------------------------------------------------------------------------------
def test_in_place_rule_on_a_hand_computed_case():
    # 6 tokens; scores rank tokens 4 and 1 dominant; remaining [0, 2, 3, 5], 2 contextual targets at
    # stride 4 // 2 = 2: tokens 0 and 3; by key direction 2 joins 0 and 5 joins 3.
    features = torch.tensor([[1.0, 0.0], [9.0, 9.0], [3.0, 0.0], [0.0, 1.0], [7.0, 7.0], [0.0, 5.0]])
    scores = torch.tensor([0.1, 0.8, 0.2, 0.05, 0.9, 0.3])
    keys = torch.tensor([[1.0, 0.0], [0.0, 1.0], [2.0, 0.1], [0.0, 1.0], [1.0, 1.0], [0.1, 3.0]])
    index, tokens = visionzip_in_place(features, scores, keys, dominant=2, contextual=2)
    assert index.tolist() == [0, 1, 3, 4]
    # target + mean of its assigned tokens: 0 -> [1,0] + [3,0]; 3 -> [0,1] + [0,5]
    assert tokens.tolist() == [[4.0, 0.0], [9.0, 9.0], [0.0, 6.0], [7.0, 7.0]]
    # no contextual budget: the dominant tokens only, untouched
    index, tokens = visionzip_in_place(features, scores, keys, dominant=3, contextual=0)
    assert index.tolist() == [1, 4, 5] and torch.equal(tokens, features[[1, 4, 5]])
    # a target nobody joins stays as it is (+ nothing)
    index, tokens = visionzip_in_place(features, scores, keys, dominant=2, contextual=4)
    assert index.tolist() == list(range(6)) and torch.equal(tokens, features)


def test_in_place_rule_rejects_bad_counts_in_one_line():
    f, s, k = torch.zeros(4, 2), torch.zeros(4), torch.zeros(4, 3)
    with pytest.raises(ValueError, match=r"^need dominant >= 1, contextual >= 0 and dominant \+ contextual <= 4"):
        visionzip_in_place(f, s, k, dominant=3, contextual=2)
    with pytest.raises(ValueError, match=r"^token counts differ"):
        visionzip_in_place(f, torch.zeros(5), k, dominant=1, contextual=1)


def release_select(inputs_embeds, first, attn_logits, attn_key, dominant_num, contextual_num):
    """The authors' Qwen2.5-VL port, transcribed (its forward's `select_pixel` branch, one sample):
    returns the image rows it keeps (sequence rows) and the embeddings it writes there."""
    topk_values, topk_indices = torch.topk(attn_logits, dominant_num)
    mask = torch.zeros_like(attn_logits, dtype=torch.bool)
    mask[topk_indices] = True
    contextual_mask = ~mask
    metric_filtered = attn_key[:, contextual_mask]
    metric_normalized = metric_filtered / metric_filtered.norm(dim=-1, keepdim=True)
    step = max(1, metric_normalized.shape[1] // contextual_num)
    target_indices = torch.arange(0, metric_normalized.shape[1], step)[:contextual_num]
    target_tokens = metric_normalized[:, target_indices, :]
    others = ~torch.isin(torch.arange(metric_normalized.shape[1]), target_indices)
    tokens_to_merge = metric_normalized[:, others, :]
    similarity = torch.bmm(tokens_to_merge, target_tokens.transpose(1, 2))
    shape = (tokens_to_merge.shape[0], tokens_to_merge.shape[1], contextual_num)
    assign_one_hot = torch.zeros(*shape, dtype=attn_logits.dtype)
    assign_one_hot.scatter_(2, similarity.argmax(dim=2).unsqueeze(-1), 1)
    counts = assign_one_hot.sum(dim=1).clamp(min=1).unsqueeze(-1)
    select_mask = torch.zeros_like(attn_logits, dtype=torch.bool)
    select_mask[topk_indices] = True
    false_pos = (~select_mask).nonzero(as_tuple=True)[0]
    select_mask[false_pos[target_indices]] = True
    n = attn_logits.shape[0]
    hidden_states_filtered = inputs_embeds[:, first : first + n][:, contextual_mask]
    hidden_to_merge = hidden_states_filtered[:, others, :]
    aggregated_hidden = torch.bmm(assign_one_hot.transpose(1, 2), hidden_to_merge) / counts
    contextual_tokens = hidden_states_filtered[:, target_indices, :] + aggregated_hidden
    out = inputs_embeds.clone()
    out[:, false_pos[target_indices] + first] = contextual_tokens
    rows = select_mask.nonzero(as_tuple=True)[0]
    return rows, out[0, first + rows]


@pytest.mark.parametrize("seed", range(12))
def test_in_place_rule_equals_the_release_port(seed):
    g = torch.Generator().manual_seed(seed)
    n = int(torch.randint(8, 90, (1,), generator=g))
    dim, kdim, first = 16, 8, 5
    embeds = torch.randn(1, first + n + 3, dim, generator=g)
    scores = torch.rand(n, generator=g)
    keys = torch.randn(1, n, kdim, generator=g)
    k = int(torch.randint(2, n, (1,), generator=g))
    dominant, contextual = visionzip_split(k)
    rows, tokens = release_select(embeds, first, scores, keys, dominant, contextual)
    index, ours = visionzip_in_place(embeds[0, first : first + n], scores, keys[0], dominant, contextual)
    assert index.tolist() == rows.tolist()
    torch.testing.assert_close(ours, tokens)  # float32 both; the sums run in a different order


# -- the family's substitute score -----------------------------------------------------------------------
def release_signals(model, batch):
    """The port's tower formula, literally, on the last block's recomputed q, k of one image."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    with LastBlockCapture(model) as grab, torch.no_grad():
        model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"])
        attn, x, pe = grab.attn, grab.inputs["x"], grab.inputs["position_embeddings"]
        t = x.shape[0]
        q, k, _ = attn.qkv(x).reshape(t, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
        q, k = apply_rotary_pos_emb_vision(q, k, *pe)
        q, k = q.permute(1, 0, 2), k.permute(1, 0, 2)  # [H, T, D]
        logits = F.softmax(torch.matmul(q, k.transpose(-1, -2)) / (q.shape[-1] ** 0.5), dim=-1)
    reverse = torch.argsort(Q.window_index(model, batch["image_grid_thw"]))
    attn_mean = logits.mean(dim=0).sum(dim=0)
    attn_mean = attn_mean.view(attn_mean.shape[0] // 4, -1).mean(dim=-1)[reverse]
    attn_key = k.view(k.shape[0], k.shape[1] // 4, 4, k.shape[-1]).mean(dim=2)
    attn_key = attn_key[:, reverse, :].mean(dim=0)
    return attn_mean, attn_key


@pytest.mark.parametrize("which", [0, 1, 2])
def test_substitute_score_is_the_release_formula(tiny_qwen, which):
    model, processor = tiny_qwen
    batch = TESTER.batch(processor, (which,))
    adapter = adapter_for(model)
    with torch.no_grad():
        image = adapter.encode_with_attention(batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])[0]
    want_scores, want_keys = release_signals(model, batch)
    assert image.attention.shape == (1, TESTER.full_tokens[which]) and not image.has_cls
    torch.testing.assert_close(image.attention[0], want_scores, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(image.keys[0], want_keys, rtol=1e-5, atol=1e-6)
    # the scores of one image are the attention its patches receive: 4 patches per token, so they sum to
    # (patches x 1 per query) / 4 per token average = patches / 4 = the image's token count
    assert float(image.attention.sum()) == pytest.approx(TESTER.full_tokens[which], rel=1e-5)


def test_substitute_score_does_not_depend_on_the_batch(tiny_qwen):
    model, processor = tiny_qwen
    adapter = adapter_for(model)
    batch = TESTER.batch(processor)
    with torch.no_grad():
        together = adapter.encode_with_attention(batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])
        for i in range(3):
            one = TESTER.batch(processor, (i,))
            alone = adapter.encode_with_attention(one["pixel_values"], image_grid_thw=one["image_grid_thw"])[0]
            torch.testing.assert_close(together[i].attention, alone.attention, rtol=1e-5, atol=1e-6)
            torch.testing.assert_close(together[i].keys, alone.keys, rtol=1e-5, atol=1e-6)


# -- end to end -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("params", [{"budget": 8}, {"retain_ratio": 0.5}])
def test_pruned_run_equals_a_reference_with_merged_tokens_at_original_positions(tiny_qwen, params):
    model, processor = tiny_qwen
    batch = TESTER.batch(processor)
    pruner = build_pruner("visionzip", **params)
    with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS[:3]):
        with torch.no_grad():
            ours = model.generate(**batch, max_new_tokens=10, do_sample=False)[:, batch["input_ids"].shape[1] :]
    adapter = adapter_for(model)
    with torch.no_grad():
        full = Q.build_request(model, batch)
        images = pruner.encode(adapter, batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])
    kept = []
    for b, image in enumerate(images):
        k = pruner.per_crop_budget(adapter, image)
        ctx = SampleContext(b, batch["input_ids"][b], QUESTIONS[b], processor.tokenizer, None, 0, adapter)
        sel = adapter.kept(image, pruner.select(image, k, ctx), "paper")
        rows = full.image_mask[b].nonzero().view(-1)
        full.inputs_embeds[b, rows[sel.index]] = sel.tokens  # merged tokens in their targets' rows
        kept.append(sel.index)
        assert sel.index.tolist() == pruner.last_stats.samples[b].kept_index
        assert len(kept[-1]) == (params.get("budget") or int(params.get("retain_ratio", 1) * image.tokens_per_crop))
    pruned = Q.keep_image_tokens(full, kept)
    refs = [_reference(model, pruned, full, b, steps=10) for b in range(3)]
    assert [_until_eos(ours[b], _eos(model)) for b in range(3)] == refs
    assert max(len(r) for r in refs) >= 5


def test_contextual_tokens_differ_from_the_plain_rows(tiny_qwen):
    """Guard for the reference test: merged rows really carry merged features."""
    model, processor = tiny_qwen
    adapter = adapter_for(model)
    batch = TESTER.batch(processor, (1,))
    pruner = build_pruner("visionzip", budget=8)
    with torch.no_grad():
        image = pruner.encode(adapter, batch["pixel_values"], image_grid_thw=batch["image_grid_thw"])[0]
    sel = pruner.select(image, 8, None)
    same = [torch.equal(t, image.proj[0, i]) for i, t in zip(sel.indices[0].tolist(), sel.features[0])]
    assert same.count(False) == visionzip_split(8)[1]  # exactly the contextual tokens changed


# -- declared, not named ----------------------------------------------------------------------------------
def test_the_family_declares_the_substitute_and_cls_methods_stay_refused():
    traits = family("qwen2_5_vl").traits
    assert traits == frozenset({"tower_attention"})
    assert PRUNERS["visionzip"].requires == frozenset({"tower_attention"})
    check_applies("visionzip", "qwen2_5_vl")
    for name in ("vispruner", "prumerge_plus", "cdpruner"):
        with pytest.raises(ValueError, match=rf"^pruner '{name}' does not apply to Qwen2.5-VL .*CLS token"):
            check_applies(name, "qwen2_5_vl")
