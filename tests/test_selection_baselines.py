"""DivPrune, VisionZip and Random selection: hand-computed cases and properties."""

from __future__ import annotations

import itertools
import math
import random

import pytest
import torch

from mmtok.selection.divprune import cosine_distance, divprune_select
from mmtok.selection.random import random_select
from mmtok.selection.visionzip import (
    visionzip_dominant_indices,
    visionzip_merge,
    visionzip_split,
    visionzip_targets,
)


# ================================================================= DivPrune
def _circle(degrees: list[float]) -> torch.Tensor:
    rad = [math.radians(d) for d in degrees]
    return torch.tensor([[math.cos(a), math.sin(a)] for a in rad], dtype=torch.float64).float()


# Nearest-neighbour gaps: 0:10, 10:10, 25:15, 90:65, 180:5, 185:5 degrees. The seed is 90 (most
# isolated); then 185 (95 deg from 90), then 0 (90 vs 80/65/5), then 25 (25 vs 10/5), then 10.
CIRCLE = [0.0, 10.0, 25.0, 90.0, 180.0, 185.0]


@pytest.mark.parametrize(
    ("k", "expected"),
    [(1, [3]), (2, [3, 5]), (3, [0, 3, 5]), (4, [0, 2, 3, 5]), (5, [0, 1, 2, 3, 5]), (6, [0, 1, 2, 3, 4, 5])],
)
def test_divprune_circle(k, expected):
    assert divprune_select(_circle(CIRCLE), k).tolist() == expected


def test_divprune_exclude_removes_token_from_pool():
    # Without token 3 the most isolated is 25 deg (15 to its neighbour); then 185 (160 away);
    # then 0 (25 vs 15 / 5).
    exclude = torch.tensor([False, False, False, True, False, False])
    assert divprune_select(_circle(CIRCLE), 3, exclude=exclude).tolist() == [0, 2, 5]
    assert divprune_select(_circle(CIRCLE), 5, exclude=exclude).tolist() == [0, 1, 2, 4, 5]


def test_divprune_exact_ties_and_duplicates():
    e = torch.eye(3)
    # All pairwise distances are exactly 1: lowest indices win.
    assert divprune_select(e, 1).tolist() == [0]
    assert divprune_select(e, 2).tolist() == [0, 1]
    # Duplicates have nearest-neighbour distance 0, so the unique token seeds; the duplicate
    # pair then ties and the lower index is taken; the copy is still selectable at k = n.
    dup = torch.stack([e[0], e[0], e[1]])
    assert divprune_select(dup, 1).tolist() == [2]
    assert divprune_select(dup, 2).tolist() == [0, 2]
    assert divprune_select(dup, 3).tolist() == [0, 1, 2]
    # Scale does not matter (cosine).
    assert divprune_select(dup * torch.tensor([[3.0], [0.5], [7.0]]), 2).tolist() == [0, 2]


def _ref_divprune(x: torch.Tensor, k: int, excluded: set[int]) -> list[int]:
    d = cosine_distance(x).double().tolist()  # the distance matrix itself is tested below
    n = len(d)
    pool = [i for i in range(n) if i not in excluded]
    chosen: list[int] = []
    for step in range(k):
        pick, pick_score = None, -math.inf
        for j in pool:
            if j in chosen:
                continue
            if step == 0:
                others = [d[j][i] for i in pool if i != j]
                score = min(others) if others else math.inf
            else:
                score = min(d[s][j] for s in chosen)
            if score > pick_score:
                pick, pick_score = j, score
        chosen.append(pick)
    return sorted(chosen)


def test_cosine_distance_matches_definition():
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0], [-1.0, 0.0]])
    expected = torch.tensor([[0.0, 1 - 0.8, 1 + 0.6], [1 - 0.8, 0.0, 1.0], [1 + 0.6, 1.0, 0.0]])
    torch.testing.assert_close(cosine_distance(x), expected)


@pytest.mark.parametrize("seed", range(30))
def test_divprune_matches_reference_and_batch(seed):
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    batch, n, dim = rng.randint(1, 3), rng.randint(1, 30), rng.randint(2, 16)
    x = torch.randn(batch, n, dim, generator=gen)
    exclude = None
    if seed % 2 and n > 1:
        exclude = torch.rand(batch, n, generator=gen) < 0.3
        exclude[:, -1] = False
    selectable = n - (0 if exclude is None else int(exclude.sum(-1).max()))
    k = rng.randint(1, selectable)
    got = divprune_select(x, k, exclude=exclude)
    assert got.shape == (batch, k) and got.dtype == torch.long
    for b in range(batch):
        eb = None if exclude is None else exclude[b]
        excluded = set() if eb is None else set(eb.nonzero().flatten().tolist())
        assert got[b].tolist() == _ref_divprune(x[b], k, excluded)
        assert torch.equal(got[b], divprune_select(x[b], k, exclude=eb))


@pytest.mark.parametrize("seed", range(40))
def test_divprune_half_approximation_of_max_min(seed):
    # On the circle 1 - cos is monotone in the angle, which is a metric there, so the farthest-
    # point greedy must reach at least half the optimal minimum pairwise angle.
    rng = random.Random(100 + seed)
    n, k = rng.randint(2, 10), rng.randint(2, 4)
    k = min(k, n)
    x = _circle([rng.uniform(0, 360) for _ in range(n)])
    angle = torch.arccos((1 - cosine_distance(x).double()).clamp(-1, 1))

    def spread(S) -> float:
        return min(angle[i, j].item() for i, j in itertools.combinations(S, 2))

    optimum = max(spread(S) for S in itertools.combinations(range(n), k))
    assert spread(divprune_select(x, k).tolist()) >= optimum / 2 - 1e-5


def test_divprune_errors():
    x = torch.randn(5, 4)
    with pytest.raises(ValueError, match="1 <= k <= 5"):
        divprune_select(x, 0)
    with pytest.raises(ValueError, match="1 <= k <= 5"):
        divprune_select(x, 6)
    with pytest.raises(ValueError, match="1 <= k <= 3"):
        divprune_select(x, 4, exclude=torch.tensor([True, True, False, False, False]))
    with pytest.raises(ValueError, match="boolean mask"):
        divprune_select(x, 1, exclude=torch.zeros(5))
    with pytest.raises(ValueError, match=r"\[n, D\]"):
        divprune_select(torch.randn(5), 1)


# ================================================================= VisionZip
# CLS + 6 patches. Summed CLS attention over the two heads for patches 1..6:
# [0.15, 0.10, 0.50, 0.15, 0.20, 0.20] -> top-2 patches: 3, then the 5/6 tie goes to 5.
CLS_ATTN = torch.tensor(
    [
        [0.40, 0.10, 0.05, 0.20, 0.05, 0.10, 0.10],
        [0.30, 0.05, 0.05, 0.30, 0.10, 0.10, 0.10],
    ]
)
# Feature of token i: [i + 1, (i + 1)^2].
FEATS = torch.tensor([[i + 1.0, (i + 1.0) ** 2] for i in range(7)])
# Keys: target 1 points along x, target 4 along y with a large norm, so a dot product would send
# token 6 to target 4 while cosine sends it to target 1. Token 2 is nearly along y.
KEYS = torch.tensor([[1.0, 1.0], [1.0, 0.0], [0.1, 1.0], [9.0, 9.0], [0.0, 5.0], [9.0, 9.0], [3.0, 2.9]])


def test_visionzip_hand_computed_two_contextual():
    # dominant = [CLS, 3, 5]; remaining [1, 2, 4, 6], r = 4, stride 4 // 2 = 2 -> targets 1, 4;
    # token 2 -> target 4 (cos 0.995 vs 0.0995), token 6 -> target 1 (cos 0.719 vs 0.695).
    out = visionzip_merge(FEATS, CLS_ATTN, KEYS, dominant=3, contextual=2)
    expected = torch.tensor(
        [
            [1.0, 1.0],  # CLS
            [4.0, 16.0],  # patch 3
            [6.0, 36.0],  # patch 5
            [2.0 + 7.0, 4.0 + 49.0],  # target 1 + mean(token 6)
            [5.0 + 3.0, 25.0 + 9.0],  # target 4 + mean(token 2)
        ]
    )
    torch.testing.assert_close(out, expected)


def test_visionzip_hand_computed_unassigned_and_averaged_targets():
    # remaining [1, 2, 4, 6], 3 contextual -> stride 1, targets 1, 2, 4; only token 6 is merged,
    # into target 2 (cos 0.763 beats 0.719 and 0.695); targets 1 and 4 stay alone.
    out = visionzip_merge(FEATS, CLS_ATTN, KEYS, dominant=3, contextual=3)
    expected = torch.tensor([[1.0, 1.0], [4.0, 16.0], [6.0, 36.0], [2.0, 4.0], [3.0 + 7.0, 9.0 + 49.0], [5.0, 25.0]])
    torch.testing.assert_close(out, expected)
    # CLS only as dominant: remaining [1..6], one target (token 1) takes the mean of all others.
    out = visionzip_merge(FEATS, CLS_ATTN, KEYS, dominant=1, contextual=1)
    mean_rest = FEATS[2:].mean(dim=0)
    torch.testing.assert_close(out, torch.stack([FEATS[0], FEATS[1] + mean_rest]))


def test_visionzip_dominant_only_and_everything():
    out = visionzip_merge(FEATS, CLS_ATTN, KEYS, dominant=4, contextual=0)
    torch.testing.assert_close(out, FEATS[[0, 3, 5, 6]])
    # All tokens kept as targets: nothing is merged, order is dominant then remaining.
    out = visionzip_merge(FEATS, CLS_ATTN, KEYS, dominant=3, contextual=4)
    torch.testing.assert_close(out, FEATS[[0, 3, 5, 1, 2, 4, 6]])


def test_visionzip_dtype_and_shape():
    gen = torch.Generator().manual_seed(0)
    n = 576
    feats = torch.randn(n + 1, 32, generator=gen).half()
    attn = torch.softmax(torch.randn(4, n + 1, generator=gen), dim=-1)
    keys = torch.randn(n + 1, 16, generator=gen)
    d, c = visionzip_split(64)
    out = visionzip_merge(feats, attn, keys, d, c)
    assert out.shape == (64, 32) and out.dtype == torch.float16
    dom = visionzip_dominant_indices(attn, d)
    assert dom[0].item() == 0 and dom.tolist() == sorted(dom.tolist())
    torch.testing.assert_close(out[:d], feats[dom])


def test_visionzip_dominant_ties_go_to_lower_index():
    # Uniform attention: every patch ties, so the first patches are the dominant ones.
    attn = torch.full((16, 577), 1 / 577)
    assert visionzip_dominant_indices(attn, 54).tolist() == list(range(54))
    attn[:, 300] = 0.5
    assert visionzip_dominant_indices(attn, 4).tolist() == [0, 1, 2, 300]


def test_visionzip_targets_stride():
    assert visionzip_targets(4, 2).tolist() == [0, 2]
    assert visionzip_targets(522, 10).tolist() == list(range(0, 520, 52))
    assert visionzip_targets(5, 3).tolist() == [0, 1, 2]
    assert visionzip_targets(7, 0).tolist() == []


@pytest.mark.parametrize(
    ("budget", "split"),
    [
        (64, (54, 10)),
        (128, (108, 20)),
        (192, (162, 30)),
        (1, (1, 0)),
        (2, (1, 1)),
        (32, (27, 5)),
        (144, (121, 23)),
        (576, (486, 90)),
    ],
)
def test_visionzip_split_table(budget, split):
    assert visionzip_split(budget) == split


def test_visionzip_split_invariants():
    for budget in range(1, 1000):
        d, c = visionzip_split(budget)
        assert d + c == budget and d >= 1 and (c >= 1 or budget == 1)
        assert abs(c - budget * 10 / 64) <= 0.5 or c == 1
    with pytest.raises(ValueError):
        visionzip_split(0)


def test_visionzip_errors():
    with pytest.raises(ValueError, match="dominant \\+ contextual <= 7"):
        visionzip_merge(FEATS, CLS_ATTN, KEYS, dominant=5, contextual=3)
    with pytest.raises(ValueError, match="dominant >= 1"):
        visionzip_merge(FEATS, CLS_ATTN, KEYS, dominant=0, contextual=3)
    with pytest.raises(ValueError, match="token counts differ"):
        visionzip_merge(FEATS, CLS_ATTN[:, 1:], KEYS, dominant=3, contextual=2)
    with pytest.raises(ValueError, match="token counts differ"):
        visionzip_merge(FEATS, CLS_ATTN, KEYS[1:], dominant=3, contextual=2)


# ================================================================= Random
def test_random_seeded_determinism_and_shape():
    a = random_select(576, 64, seed=7)
    b = random_select(576, 64, seed=7)
    assert torch.equal(a, b) and a.dtype == torch.long and a.shape == (64,)
    assert a.tolist() == sorted(set(a.tolist())) and 0 <= a.min() and a.max() < 576
    assert not torch.equal(a, random_select(576, 64, seed=8))
    assert torch.equal(random_select(10, 10, seed=3), torch.arange(10))


def test_random_generator_stream():
    g1, g2 = torch.Generator().manual_seed(5), torch.Generator().manual_seed(5)
    first = random_select(100, 10, generator=g1)
    second = random_select(100, 10, generator=g1)
    assert torch.equal(first, random_select(100, 10, generator=g2))
    assert not torch.equal(first, second)  # the generator advanced
    assert torch.equal(first, random_select(100, 10, seed=5))


def test_random_is_uniform():
    g = torch.Generator().manual_seed(0)
    counts = torch.zeros(10)
    draws = 3000
    for _ in range(draws):
        counts[random_select(10, 3, generator=g)] += 1
    freq = counts / draws
    assert torch.all((freq - 0.3).abs() < 0.04), freq


def test_random_errors():
    with pytest.raises(ValueError, match="either generator or seed"):
        random_select(10, 2, seed=1, generator=torch.Generator())
    with pytest.raises(ValueError, match="1 <= k <= n"):
        random_select(10, 11, seed=1)
    with pytest.raises(ValueError, match="1 <= k <= n"):
        random_select(10, 0, seed=1)


def _max_min_torch(dist: torch.Tensor, score: torch.Tensor, blocked: torch.Tensor, k: int) -> torch.Tensor:
    """divprune_select's torch loop (the one GPUs run), written out for comparison."""
    batch, n = score.shape
    blocked, picks = blocked.clone(), torch.empty(batch, k, dtype=torch.long)
    for step in range(k):
        j = score.masked_fill(blocked, -float("inf")).argmax(dim=-1)
        picks[:, step] = j
        blocked.scatter_(1, j.unsqueeze(1), True)
        row = dist.gather(1, j.view(batch, 1, 1).expand(batch, 1, n)).squeeze(1)
        score = row if step == 0 else torch.minimum(score, row)
    return picks


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
@pytest.mark.parametrize("seed", range(8))
def test_divprune_numpy_loop_equals_torch_loop_with_ties(seed, dtype):
    """The CPU (numpy) max-min loop picks exactly what the torch loop picks, in the same order,
    on distance matrices made of a few distinct values (ties everywhere: lowest index wins)."""
    from mmtok.selection.divprune import _max_min_numpy

    gen = torch.Generator().manual_seed(300 + seed)
    batch, n = 1 + seed % 3, 5 + 7 * seed
    dist = (torch.randint(0, 4, (batch, n, n), generator=gen).to(dtype) / 4).contiguous()
    score = torch.randint(0, 3, (batch, n), generator=gen).to(dtype)
    blocked = torch.rand(batch, n, generator=gen) < 0.2
    blocked[:, 0] = False
    k = max(1, n - int(blocked.sum(dim=1).max()))
    for kk in {1, 2, k // 2 or 1, k}:
        assert torch.equal(_max_min_numpy(dist, score, blocked, kk), _max_min_torch(dist, score, blocked, kk))
