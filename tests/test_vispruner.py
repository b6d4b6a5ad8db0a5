"""VisPruner: important + diverse tokens, hand-computed and against the release's rule."""

from __future__ import annotations

import pytest
import torch

from mmtok.pruners import build_pruner
from mmtok.selection.vispruner import vispruner_select

FEATS = torch.tensor([[1.0, 0], [0, 1], [1, 0.1], [0, 1], [0, 1], [1, 1]])
FEATS[2] = torch.tensor([1.0, 0])  # an exact duplicate of token 0
ATTN = torch.tensor([0.1, 0.5, 0.2, 0.05, 0.1, 0.05])


def test_hand_cases():
    # attention order (stable): 1, 2, 0, 4, 3, 5
    # k=3: important [1]; residual [2, 0, 4, 3, 5] must lose 3: evens [2, 4, 5] score their best
    # cosine to the odds [0, 3]: 2 -> 1 (duplicate of 0), 4 -> 1 (duplicate of 3), 5 -> .71;
    # the 3 highest go -> residual [0, 3]
    assert vispruner_select(FEATS, ATTN, 3).tolist() == [0, 1, 3]
    # k=4: important [1, 2]; residual [0, 4, 3, 5] loses 2: evens [0, 3] vs odds [4, 5]:
    # 0 -> .71 (to 5), 3 -> 1 (to 4) -> both go -> residual [4, 5]
    assert vispruner_select(FEATS, ATTN, 4).tolist() == [1, 2, 4, 5]
    # k=2: important [1]; residual loses 4 in the first round (all evens) then 1 of [0, 3]
    assert vispruner_select(FEATS, ATTN, 2).tolist() == [1, 3]
    assert vispruner_select(FEATS, ATTN, 6).tolist() == list(range(6))
    # step bounds a round: with step=1 the k=3 case drops one even per round instead
    #   round 1: evens [2, 4, 5] -> drop 2 (score 1, first) -> [4, 5, 0, 3]
    #   round 2: evens [4, 0] vs odds [5, 3]: 4 -> 1, 0 -> .71 -> drop 4 -> [0, 5, 3]
    #   round 3: evens [0, 3] vs odds [5]: both .71 -> drop 0 (first) -> [3, 5]
    assert vispruner_select(FEATS, ATTN, 3, step=1).tolist() == [1, 3, 5]


def _release(features: torch.Tensor, attention: torch.Tensor, t: int) -> list[int]:
    """The release's `encode_images` selection, batch of one, as written (its ratio 0.5 and step 8)."""
    image_features, image_attentions = features[None], attention[None]
    features_normalized = image_features / image_features.norm(dim=-1, keepdim=True)
    b = 1
    important_token_num = int(t * 0.5)
    diverse_token_num = t - important_token_num
    token_indices = image_attentions.argsort(dim=-1, descending=True)
    important_indices = token_indices[:, :important_token_num]
    residual_indices = token_indices[:, important_token_num:]
    while True:
        residual_tokens = features_normalized[torch.arange(b), residual_indices]
        r = min(8, residual_tokens.shape[1] - diverse_token_num)
        if r <= 0:
            break
        a, bb = residual_tokens[..., ::2, :], residual_tokens[..., 1::2, :]
        scores = (a @ bb.transpose(-1, -2)).max(dim=-1).values
        distinct_indices = scores.argsort(dim=-1, descending=True)[:, r:]
        residual_indices = torch.cat(
            [residual_indices[..., ::2][torch.arange(b), distinct_indices], residual_indices[..., 1::2]], dim=-1
        )
    return torch.sort(torch.cat([important_indices, residual_indices], dim=-1)).values[0].tolist()


@pytest.mark.parametrize("seed", range(6))
def test_select_equals_the_release_rule_on_random_tensors(seed):
    g = torch.Generator().manual_seed(seed)
    n, dim, k = [(576, 64, 64), (576, 64, 128), (576, 32, 192), (36, 16, 8), (36, 16, 5), (100, 8, 33)][seed]
    features = torch.randn(n, dim, generator=g)
    attention = torch.rand(n, generator=g)
    got = vispruner_select(features, attention, k)
    assert got.tolist() == _release(features, attention, k)
    assert got.numel() == k


def test_settings():
    with pytest.raises(ValueError, match="important_ratio must be in \\[0, 1\\]"):
        build_pruner("vispruner", budget=8, important_ratio=2)
    with pytest.raises(ValueError, match="step must be an integer >= 1"):
        build_pruner("vispruner", budget=8, step=0)
    with pytest.raises(ValueError, match="1 <= k <= 6"):
        vispruner_select(FEATS, ATTN, 7)
