"""Qwen2.5-VL's own checks beyond the shared contract (tests/test_pruner_contract.py, which runs every
method on this family through `QwenTester`): a pruned run equals a no-cache greedy reference that
feeds the kept tokens with their ORIGINAL M-RoPE positions; FastV's retain ratio and a hand-run FastV;
MMTok and DivPrune pick what plain loops of the release's Qwen rules pick; the family's traits and
defaults (which methods run, MMTok's tau_t).
"""

from __future__ import annotations

import pytest
import torch

from mmtok.models.qwen2_5_vl import adapter as Q
from mmtok.models.registry import family
from mmtok.pruners import PRUNERS, build_pruner, pruners_for
from tests._families import QwenTester
from tests._tiny import QUESTIONS
from tests.test_pruner_contract import METHODS, ids
from tests.test_qwen25vl import _eos, _reference, _until_eos

FAMILY = "qwen2_5_vl"
TESTER = QwenTester()
QWEN = [m for m in METHODS if m.name in pruners_for(FAMILY)]
PRE_LLM = [m for m in QWEN if not m.in_llm and m.name != "none"]
# methods that keep original image rows unchanged (merging ones: tests/test_visionzip_qwen.py)
SELECTING = [m for m in PRE_LLM if not m.merges]
MAX_NEW = 8


@pytest.fixture(scope="module")
def tiny_qwen(family_models):
    return family_models(TESTER)


def _batch(processor, which=(0, 1, 2)):
    return TESTER.batch(processor, which)


def _generate(model, batch, max_new_tokens=MAX_NEW):
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    return out[:, batch["input_ids"].shape[1] :]


def _questions(which):
    return [QUESTIONS[i] for i in which]


def test_the_table_splits_by_traits():
    names = {m.name for m in QWEN}
    assert {"none", "random", "mmtok", "divprune", "fastv"} <= names
    # Qwen2.5-VL offers no CLS token and 3-row positions, only its declared substitute for CLS
    # attention (tests/test_visionzip_qwen.py): exactly the methods requiring nothing else run
    assert family(FAMILY).traits == frozenset({"tower_attention"})
    assert names == {name for name, cls in PRUNERS.items() if cls.requires <= {"tower_attention"}}
    assert "visionzip" in names


def test_fastv_retain_ratio_keeps_int_ratio_of_each_image(tiny_qwen):
    model, processor = tiny_qwen
    batch = _batch(processor)
    pruner = build_pruner("fastv", retain_ratio=0.2)
    with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS[:3]):
        _generate(model, batch, max_new_tokens=2)
    assert [s.vision_tokens for s in pruner.last_stats.samples] == [4, 7, 5]  # int(0.2 * 24 / 35 / 28)


@pytest.mark.parametrize("method", ids(SELECTING))
def test_pruned_run_equals_no_cache_reference_at_original_positions(tiny_qwen, method):
    """The kept tokens with their original (t, h, w) positions, decoding from the unpruned next position."""
    model, processor = tiny_qwen
    batch = _batch(processor)
    pruner = build_pruner(method.name, budget=8)
    with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS[:3]):
        ours = _generate(model, batch, max_new_tokens=10)
    kept = [torch.tensor(s.kept_index) for s in pruner.last_stats.samples]
    with torch.no_grad():
        full = Q.build_request(model, batch)
    pruned = Q.keep_image_tokens(full, kept)
    eos = _eos(model)
    refs = [_reference(model, pruned, full, b, steps=10) for b in range(3)]
    assert [_until_eos(ours[b], eos) for b in range(3)] == refs
    assert max(len(r) for r in refs) >= 5


def _plain_greedy(C: torch.Tensor, k: int) -> list[int]:
    """The release's greedy over the [m + n, n] coverage matrix, as a plain loop (lowest index on ties)."""
    best = torch.zeros(C.shape[0], dtype=torch.float64)
    chosen: list[int] = []
    for _ in range(k):
        gains = [
            -float("inf") if j in chosen else float(torch.clamp(C[:, j] - best, min=0).sum()) for j in range(C.shape[1])
        ]
        j = max(range(len(gains)), key=lambda i: (gains[i], -i))
        chosen.append(j)
        best = torch.maximum(best, C[:, j])
    return sorted(chosen)


def _release_coverage(text, merged, vit, alpha=0.5, tau_t=0.01, tau_v=0.2) -> torch.Tensor:
    """The release's [m + n, n] coverage matrix on Qwen, in float64."""
    unit = lambda x: x / x.norm(dim=-1, keepdim=True)  # noqa: E731
    t, v, w = unit(text.double()), unit(merged.double()), unit(vit.double())
    P = torch.softmax(t @ v.T / tau_t, dim=-1) / t.shape[0]
    Qm = torch.softmax(w @ w.T / tau_v, dim=-1) / w.shape[0]
    return torch.cat([P, alpha * Qm])


def _min_margin(C: torch.Tensor, k: int) -> float:
    """Smallest margin between the best and second-best gain over the greedy's steps (ties guard)."""
    best, chosen, margin = torch.zeros(C.shape[0], dtype=torch.float64), [], float("inf")
    for _ in range(k):
        gains = torch.clamp(C - best[:, None], min=0).sum(0)
        gains[chosen] = -float("inf")
        top = torch.topk(gains, 2).values
        margin = min(margin, float(top[0] - top[1]))
        j = int(gains.argmax())
        chosen.append(j)
        best = torch.maximum(best, C[:, j])
    return margin


def test_mmtok_on_qwen_equals_the_release_rule(tiny_qwen):
    """Picks = a plain loop of the release's Qwen rule: text "Question: <q>" rows of the embedding
    table vs the merged tokens (tau_t 0.01), ViT last-block features averaged per 2x2 unit and put back
    in raster order vs themselves (tau_v 0.2), alpha 0.5 (the features' plain loop is checked in
    test_qwen25vl.test_qwen_features_match_plain_loop)."""
    model, processor = tiny_qwen
    batch = _batch(processor)
    with torch.no_grad():
        feats = Q.encode_images(model, batch["pixel_values"], batch["image_grid_thw"])
    embed = model.get_input_embeddings()
    checked = 0
    for k in (4, 8, 12):
        pruner = build_pruner("mmtok", budget=k)
        with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS[:3]):
            _generate(model, batch, max_new_tokens=1)
        for b, im in enumerate(feats):
            with torch.no_grad():
                text = Q.release_question_embeddings(embed, processor.tokenizer, QUESTIONS[b])
            C = _release_coverage(text, im.merged, im.vit)
            if _min_margin(C, k) < 1e-6:  # a numerical tie: either pick is the rule's
                continue
            assert pruner.last_stats.samples[b].kept_index == _plain_greedy(C, k)
            checked += 1
    assert checked >= 7
    # the family default is Qwen's tau_t (0.01), and the runner can record it resolved
    assert build_pruner("mmtok", budget=8).for_family(FAMILY).tau_t == 0.01
    assert build_pruner("mmtok", budget=8).for_family("llava").tau_t == 0.02
    assert build_pruner("mmtok", budget=8, tau_t=0.05).for_family(FAMILY).tau_t == 0.05


def _fastv_reference(model, batch, k_layer: int, r: int, steps: int) -> list[int]:
    """FastV on Qwen2.5-VL by hand, without a cache, batch 1: layers < K run on the whole sequence;
    the last prompt token's head-averaged attention in layer K-1 (eager softmax of q.k, computed
    here) picks the top-r image tokens; layers >= K run on the kept rows, every row keeping its
    original 3-row position. Each new token enters at the unpruned next position."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb, repeat_kv

    lm = model.model.language_model
    embed = model.get_input_embeddings()
    with torch.no_grad():
        full = Q.build_request(model, batch)
        x0 = full.inputs_embeds
        pos = full.position_ids
        is_image = full.image_mask[0]
        nxt = int(full.next_position[0])
        out: list[int] = []
        keep = None
        for step in range(steps):
            h = x0
            for i, layer in enumerate(lm.layers):
                if i == k_layer:  # drop the unkept image rows from here on
                    h, p = h[:, keep], pos[:, :, keep]
                else:
                    p = pos if i < k_layer else pos[:, :, keep]
                cos_sin = lm.rotary_emb(h, p)
                if i == k_layer - 1 and step == 0:
                    attn = layer.self_attn
                    xn = layer.input_layernorm(h)
                    q = attn.q_proj(xn).view(1, h.shape[1], -1, attn.head_dim).transpose(1, 2)
                    kk = attn.k_proj(xn).view(1, h.shape[1], -1, attn.head_dim).transpose(1, 2)
                    q, kk = apply_rotary_pos_emb(q, kk, *cos_sin)
                    kk = repeat_kv(kk, attn.num_key_value_groups)
                    probs = torch.softmax((q[:, :, -1:] @ kk.transpose(-1, -2)).float() * attn.scaling, -1)
                    score = probs.mean(1)[0, 0, : is_image.numel()][is_image]
                    top = torch.topk(score, r).indices.sort().values  # no ties on random features
                    rows = torch.arange(is_image.numel())
                    keep_image = rows[is_image][top]
                    keep = torch.cat([rows[~is_image], keep_image]).sort().values
                h = layer(h, attention_mask=None, position_embeddings=cos_sin, position_ids=None)
                if isinstance(h, tuple):
                    h = h[0]
            token = int(model.lm_head(lm.norm(h))[0, -1].argmax())
            out.append(token)
            if token in _eos(model):
                break
            x0 = torch.cat([x0, embed(torch.tensor([[token]]))], dim=1)
            pos = torch.cat([pos, torch.full((3, 1, 1), nxt + step)], dim=-1)
            keep = torch.cat([keep, torch.tensor([x0.shape[1] - 1])])
            is_image = torch.cat([is_image, torch.tensor([False])])
    return out


@pytest.mark.parametrize("which", [0, 1, 2])
def test_fastv_on_qwen_equals_a_hand_run_reference(tiny_qwen, which):
    model, processor = tiny_qwen
    batch = _batch(processor, (which,))
    pruner = build_pruner("fastv", budget=5, budget_mode="kept")
    with pruner(model, tokenizer=processor.tokenizer, questions=_questions((which,))):
        ours = _generate(model, batch, max_new_tokens=8)
    ref = _fastv_reference(model, batch, k_layer=2, r=5, steps=8)
    assert _until_eos(ours[0], _eos(model)) == ref
    assert pruner.last_stats.samples[0].layer_vision_tokens[2:] == [5] * 6


def _release_qwen_divprune(features: torch.Tensor, k: int) -> list[int]:
    """The MMTok authors' Qwen DivPrune loop, restated: 1 - cos in the input dtype; the seed column
    score is its second-smallest entry (self included); then the min distance to the kept set."""
    unit = features / features.norm(dim=1, keepdim=True)
    dist = 1.0 - torch.mm(unit, unit.t())
    chosen: list[int] = []
    taken = torch.zeros(dist.shape[0], dtype=torch.bool)
    for i in range(k):
        m2 = dist if i == 0 else dist[torch.tensor(chosen)]
        scores = torch.topk(m2, 2, dim=0, largest=False).values[1] if i == 0 else m2.min(dim=0).values
        scores[taken] = float("-inf")
        j = int(torch.argmax(scores))
        chosen.append(j)
        taken[j] = True
    return sorted(chosen)


def test_divprune_on_qwen_equals_the_release_variant(tiny_qwen):
    """On Qwen the release runs DivPrune on the 2x2-averaged ViT features, not on the merged tokens."""
    model, processor = tiny_qwen
    batch = _batch(processor)
    with torch.no_grad():
        feats = Q.encode_images(model, batch["pixel_values"], batch["image_grid_thw"])
    differs = 0
    for k in (4, 8, 12):
        pruner = build_pruner("divprune", budget=k)
        with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS[:3]):
            _generate(model, batch, max_new_tokens=1)
        for b, im in enumerate(feats):
            got = pruner.last_stats.samples[b].kept_index
            assert got == _release_qwen_divprune(im.vit, k), (k, b)
            differs += got != _release_qwen_divprune(im.merged, k)
    assert differs > 0  # the features matter: on the merged tokens the picks would differ
