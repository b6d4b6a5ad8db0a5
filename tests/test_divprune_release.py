"""DivPrune with the release's arithmetic: the distance matrix in the input dtype (float16 in real runs)."""

from __future__ import annotations

import pytest
import torch

from mmtok.pruners import build_pruner
from mmtok.selection.divprune import divprune_select, release_distance


def _release_loop(x: torch.Tensor, k: int) -> list[int]:
    """A plain loop of the release's rule: `1 - (x/|x|) (x/|x|)^T` by `torch.mm` in x's dtype; seed =
    argmax over columns of the column's second-smallest entry; then argmax of the column-wise
    minimum over the chosen rows; first index on ties (`torch.argmax`); all compared in x's dtype."""
    unit = x / x.norm(dim=1, keepdim=True)
    dist = 1.0 - torch.mm(unit, unit.t())
    n = x.shape[0]
    columns = [[dist[i, j] for i in range(n)] for j in range(n)]  # 0-d tensors of x's dtype
    chosen: list[int] = []
    for step in range(k):
        best, best_score = None, None
        for j in range(n):
            if step == 0:
                score = sorted(columns[j], key=float)[1]
            else:
                score = min((columns[j][s] for s in chosen), key=float)
            if j not in chosen and (best_score is None or float(score) > float(best_score)):
                best, best_score = j, score
        chosen.append(best)
    return sorted(chosen)


def test_release_distance_hand_case():
    x = torch.tensor([[3.0, 4.0], [0.0, 2.0], [-1.0, 0.0]])
    expected = torch.tensor([[0.0, 1 - 0.8, 1 + 0.6], [1 - 0.8, 0.0, 1.0], [1 + 0.6, 1.0, 0.0]])
    torch.testing.assert_close(release_distance(x), expected)
    assert release_distance(x.half()).dtype == torch.float16
    # the circle of test_selection_baselines: the same picks as the float32 arithmetic when no ties
    angles = torch.tensor([0.0, 25.0, 40.0, 100.0, 185.0, 200.0]).deg2rad()
    circle = torch.stack([angles.cos(), angles.sin()], dim=1)
    for k in (1, 2, 3, 4, 6):
        assert divprune_select(circle, k, arithmetic="release").tolist() == divprune_select(circle, k).tolist()
    # k = 5 is an exact geometric tie (points 1 and 4 are both 15 degrees from their nearest pick):
    # which one wins is float rounding, and differs between CPUs; either is a correct pick.
    for arithmetic in ("release", "float32"):
        assert divprune_select(circle, 5, arithmetic=arithmetic).tolist() in ([0, 1, 2, 3, 5], [0, 2, 3, 4, 5])


@pytest.mark.parametrize("seed", range(4))
def test_float16_picks_equal_the_release_arithmetic(seed):
    """At a real projected width, float16 distances take few distinct values, so first-index ties
    decide picks: ours must decide them exactly as the release does."""
    g = torch.Generator().manual_seed(seed)
    n, dim, k = 96, 256, 24
    base = torch.randn(8, dim, generator=g)
    x = (base[torch.randint(0, 8, (n,), generator=g)] + 0.3 * torch.randn(n, dim, generator=g)).half()
    expected = _release_loop(x, k)
    assert divprune_select(x, k, arithmetic="release").tolist() == expected
    batch = torch.stack([x, x.flip(0)])
    got = divprune_select(batch, k, arithmetic="release")
    assert got[0].tolist() == expected
    assert got[1].tolist() == _release_loop(x.flip(0), k)


def test_float32_arithmetic_differs_in_float16():
    """The option is real: on half-precision inputs the widened arithmetic picks other tokens."""
    differ = 0
    for seed in range(4):
        g = torch.Generator().manual_seed(seed)
        base = torch.randn(8, 256, generator=g)
        x = (base[torch.randint(0, 8, (96,), generator=g)] + 0.3 * torch.randn(96, 256, generator=g)).half()
        release = divprune_select(x, 24, arithmetic="release").tolist()
        differ += release != divprune_select(x, 24, arithmetic="float32").tolist()
    assert differ > 0


def test_arithmetic_is_a_pruner_param_with_a_one_line_error():
    assert build_pruner("divprune", budget=8).arithmetic == "release"
    assert build_pruner("divprune", budget=8, arithmetic="float32").arithmetic == "float32"
    with pytest.raises(ValueError, match="unknown divprune arithmetic 'fp64'; valid: release, float32"):
        build_pruner("divprune", budget=8, arithmetic="fp64")
    with pytest.raises(ValueError, match="unknown divprune arithmetic"):
        divprune_select(torch.randn(4, 2), 2, arithmetic="x")
