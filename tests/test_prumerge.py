"""PruMerge+: outliers, spatial samples, merging, against the release's rule."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmtok.selection.prumerge import cls_attention_single_head, outlier_ratio, prumerge_centres, prumerge_merge


def test_outliers_and_centres_hand_case():
    # 12 patches: 10 at 1.0 and two spikes; quartiles 1 and 1 -> IQR 0 -> the two spikes are outliers
    attention = torch.ones(12)
    attention[4], attention[9] = 5.0, 7.0
    assert outlier_ratio(attention) == 2 / 12
    # int(12 * 2/12) = 2 outliers by attention: 9, 4; then stride int(int(6) / 3) = 2 over
    # arange(0, 11, 2) = 0, 2, 4, 6, 8, 10 without 4; then (budget permitting) the rest by attention
    assert prumerge_centres(attention, 7) == [9, 4, 0, 2, 6, 8, 10]
    assert prumerge_centres(attention, 3) == [9, 4, 0]
    assert prumerge_centres(attention, 9) == [9, 4, 0, 2, 6, 8, 10, 1, 3]
    # no outliers at all (a flat row): no spatial samples either, attention order (stable) fills
    assert prumerge_centres(torch.ones(5), 3) == [0, 1, 2]


def test_merge_hand_case():
    features = torch.tensor([[1.0, 0], [0, 1], [2, 0], [0, 3]])
    keys = torch.tensor([[1.0, 0], [0, 1], [1, 0.1], [0.1, 1]])
    attention = torch.tensor([0.4, 0.3, 0.2, 0.1])
    out = prumerge_merge(features, keys, attention, [0, 1])
    # fewer than 32 others: every other token joins each centre, weighted by its attention
    # centre 0: x0 + .3 x1 + .2 x2 + .1 x3 = (1 + .4, .3 + .3) ; centre 1: x1 + .4 x0 + .2 x2 + .1 x3
    torch.testing.assert_close(out[0], torch.tensor([1.4, 0.6]))
    torch.testing.assert_close(out[1], torch.tensor([0.8, 1.3]))
    # the summary token: .2 x2 + .1 x3 over the non-centres
    torch.testing.assert_close(out[2], torch.tensor([0.4, 0.3]))


def _release(features, q, k):
    """The release's `token_prune_merge_advanced_plus` after its hooks, batch of one, as written
    (its 575 is n - 1 for 576 patches)."""
    image_features, desired_q, desired_k = features[None], q[None], k[None]
    _, n, c = image_features.shape
    attn = F.softmax((desired_q @ desired_k.transpose(-2, -1)) * c**-0.5, dim=-1)
    cls_attn = attn[:, 0, 1:]
    values = cls_attn.to(dtype=torch.float32).cpu().numpy().flatten()
    q1, q3 = np.percentile(values, 25), np.percentile(values, 75)
    ratio = len(np.where(values > q3 + 1.5 * (q3 - q1))[0]) / len(values)
    _, idx = torch.topk(cls_attn, int(n * ratio), dim=1, largest=True)
    step_length = int(1 / ratio)
    seq = torch.arange(0, n - 1, int(step_length / 3))
    filtered = torch.tensor([x for x in seq if x not in idx.flatten()])
    idx = torch.cat((idx, filtered.unsqueeze(0)), dim=1)
    index = idx.unsqueeze(-1).expand(-1, -1, c)
    key_wo_cls = desired_k[:, 1:]
    x_others = torch.gather(image_features, 1, index)
    x_others_attn = torch.gather(cls_attn, 1, idx)
    key_others = torch.gather(key_wo_cls, 1, index)
    mask = torch.ones(n, dtype=torch.bool)
    mask[idx[0]] = False
    compl = torch.arange(n)[mask][None]
    non_topk = torch.gather(image_features, 1, compl.unsqueeze(-1).expand(-1, -1, c))
    non_topk_key = torch.gather(key_wo_cls, 1, compl.unsqueeze(-1).expand(-1, -1, c))
    non_topk_attn = torch.gather(cls_attn, 1, compl)
    key_others_norm, non_topk_key_norm = F.normalize(key_others, p=2, dim=-1), F.normalize(non_topk_key, p=2, dim=-1)
    left = x_others.shape[1]
    updated = torch.zeros_like(x_others)
    for i in range(left):
        rest_x = torch.cat([x_others[0, :i], x_others[0, i + 1 :], non_topk[0]])[None]
        rest_attn = torch.cat([x_others_attn[0, :i], x_others_attn[0, i + 1 :], non_topk_attn[0]])[None]
        rest_keys = torch.cat([key_others_norm[0, :i], key_others_norm[0, i + 1 :], non_topk_key_norm[0]])[None]
        sim = torch.bmm(key_others_norm[0, i][None, None], rest_keys.transpose(1, 2))
        _, near = torch.topk(sim, k=32, dim=2, largest=True)
        weighted = torch.sum(rest_x[:, near.squeeze(), :] * rest_attn[:, near.squeeze()].unsqueeze(-1), dim=1)
        updated[0, i] = x_others[0, i] + weighted
    extra = torch.sum(non_topk * non_topk_attn.unsqueeze(-1), dim=1, keepdim=True)
    return idx[0].tolist(), torch.cat([updated, extra], dim=1)[0]


@pytest.mark.parametrize("seed", range(4))
def test_equals_the_release_rule_on_random_tensors(seed):
    g = torch.Generator().manual_seed(seed)
    n, dim = [(576, 64), (576, 32), (196, 48), (300, 16)][seed]
    q, k = torch.randn(n + 1, dim, generator=g), torch.randn(n + 1, dim, generator=g)
    features = torch.randn(n, dim, generator=g)
    centres, expected = _release(features, q, k)
    attention = cls_attention_single_head(q, k)
    assert 0 < outlier_ratio(attention) < 1 / 3  # the instance exercises outliers and spatial samples
    assert prumerge_centres(attention, len(centres)) == centres
    torch.testing.assert_close(prumerge_merge(features, k[1:], attention, centres), expected)


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_signals_equal_what_the_releases_hooks_capture(tiny_models, family):
    """q / k recomputed from LLaVA's CLIP features equal the next layer's own q_proj / k_proj
    outputs during the tower pass (what the release's hooks read)."""
    from mmtok.models.adapters import adapter_for
    from mmtok.pruners.prumerge_plus import next_clip_layer
    from tests._tiny import QUESTIONS, inputs

    model, processor = tiny_models[family]
    adapter = adapter_for(model)
    layer = next_clip_layer(adapter)
    captured = {}
    handles = [
        layer.self_attn.q_proj.register_forward_hook(lambda m, a, out: captured.__setitem__("q", out)),
        layer.self_attn.k_proj.register_forward_hook(lambda m, a, out: captured.__setitem__("k", out)),
    ]
    batch = inputs(processor, QUESTIONS[:1])
    try:
        with torch.no_grad():
            image = adapter.encode(batch["pixel_values"], image_sizes=batch.get("image_sizes"))[0]
            x = layer.layer_norm1(image.pre)
            q, k = layer.self_attn.q_proj(x), layer.self_attn.k_proj(x)
    finally:
        for h in handles:
            h.remove()
    torch.testing.assert_close(q, captured["q"], rtol=0, atol=0)
    torch.testing.assert_close(k, captured["k"], rtol=0, atol=0)
