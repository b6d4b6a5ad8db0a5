"""SparseVLM (v1.5 style) math on plain tensors: text raters, per-layer kept counts, and the
density-peak k-NN clustering that recycles pruned tokens. No model code here; the wiring into the
decoder lives in `mmtok.pruners.sparsevlm`.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import torch

__all__ = [
    "COUNT_TABLES",
    "density_peak_clusters",
    "pairwise_distance",
    "layer_counts",
    "recycle",
    "recycled_groups",
    "text_raters",
]

# v1.5 fixed kept-vision-token counts at its three pruning layers (2, 6, 15), for a crop of
# 576 image tokens. Keys are the budget labels of the 64/128/192 tables.
TABLE_TOKENS = 576
COUNT_TABLES: dict[int, tuple[int, int, int]] = {
    64: (66, 30, 17),
    128: (303, 110, 36),
    192: (300, 200, 110),
}
RECYCLE_SHARE = 0.3  # share of the pruned tokens (highest scores first) that gets recycled


def text_raters(vision: torch.Tensor, text: torch.Tensor) -> torch.Tensor:
    """Indices (into `text`) of the rater tokens.

    `vision` [N, D] and `text` [M, D] are layer-0 input embeddings (the text tokens after the image).
    Each text token's relevance is `softmax(V T^T, over the M text tokens)` averaged over the N
    vision tokens; raters are the tokens strictly above the mean relevance. When no token is above
    the mean (all relevances equal) every text token rates.
    """
    if text.shape[0] == 0:
        raise ValueError("SparseVLM needs text tokens after the image to rate the vision tokens")
    relevance = torch.softmax(vision.float() @ text.float().T, dim=-1).mean(dim=0)  # [M]
    raters = (relevance > relevance.mean()).nonzero().flatten()
    return raters if raters.numel() else torch.arange(text.shape[0], device=text.device)


def layer_counts(budget: int | None, n: int) -> tuple[int, int, int]:
    """Kept vision tokens at the three pruning layers for `budget` and an image of `n` tokens.

    Rule: rescale the budget to a 576-token crop, r = budget * 576 / n, and interpolate the
    v1.5 tables piecewise-linearly in r between the anchors r = 0 -> (0, 0, 0), 64, 128, 192 (the
    tables) and r = 576 -> (576, 576, 576); r >= 576 keeps everything. The interpolated counts are
    scaled back by n / 576 and rounded half up, at least 1 and at most n. For n = 576 and budgets
    64 / 128 / 192 this returns the tables exactly; for the tiny models (n = 36) budget 8 is the
    128 row scaled by 1/16. `budget=None` keeps everything.
    """
    if n < 1:
        raise ValueError(f"an image needs at least one token, got {n}")
    if budget is None:
        return (n, n, n)
    r = Fraction(budget * TABLE_TOKENS, n)
    anchors = [(Fraction(0), (0, 0, 0))]
    anchors += [(Fraction(b), c) for b, c in sorted(COUNT_TABLES.items())]
    anchors += [(Fraction(TABLE_TOKENS), (TABLE_TOKENS,) * 3)]
    if r >= TABLE_TOKENS:
        return (n, n, n)
    for (r0, c0), (r1, c1) in itertools.pairwise(anchors):
        if r0 <= r <= r1:
            t = (r - r0) / (r1 - r0)
            counts = [(a + (b - a) * t) * n / TABLE_TOKENS for a, b in zip(c0, c1)]
            return tuple(min(n, max(1, math.floor(c + Fraction(1, 2)))) for c in counts)
    raise AssertionError("unreachable: r lies in [0, 576)")


def pairwise_distance(x: torch.Tensor) -> torch.Tensor:
    """`||x_i - x_j|| / sqrt(D)` for the rows of `x` [n, D], in `x`'s dtype, as the release computes it
    (the norm of the broadcast difference, not `cdist`'s expansion). Rows go in blocks so that the
    [rows, n, D] difference stays near 64 Mi elements (a multi-crop image recycles hundreds of tokens)."""
    n, width = x.shape
    step = max(1, (1 << 26) // max(1, n * width))
    rows = [(x[i : i + step, None, :] - x[None, :, :]).norm(dim=-1, p=2) for i in range(0, n, step)]
    return torch.cat(rows) / (width**0.5) if rows else x.new_zeros(0, 0)


def density_peak_clusters(x: torch.Tensor, groups: int) -> torch.Tensor:
    """Cluster id (0..groups-1) of every row of `x` [n, D], the release's DPC-kNN (`cluster_and_merge`).

    In `x`'s dtype, exactly as the release computes it:
      d_ij    = ||x_i - x_j|| / sqrt(D)                           (`pairwise_distance`)
      rho_i   = exp(-mean of d_ij^2 over the `groups` nearest j, i itself included)
      delta_i = min over the strictly denser j of d_ij; the max of the whole matrix where none is
      centres = the `groups` rows with the largest rho_i * delta_i, in that order (cluster 0 = best)
      each row joins its nearest centre (the earlier centre on ties); a centre joins itself.
    The release adds `rand * 1e-6` to rho to break density ties at random; we add nothing, so the
    result is deterministic and tied densities are simply not "denser" than each other (the
    release's rule with zero noise). Ties in rho * delta go to the lower row.
    """
    n = x.shape[0]
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if groups > n:
        raise ValueError(f"groups must be <= {n} rows, got {groups}")
    d = pairwise_distance(x)
    nearest = d.topk(groups, dim=-1, largest=False).values  # the values do not depend on tie order
    rho = (-(nearest**2).mean(dim=-1)).exp()
    denser = (rho[None, :] > rho[:, None]).to(d.dtype)
    delta = (d * denser + d.max() * (1 - denser)).min(dim=-1).values
    gamma = delta * rho
    centres = torch.sort(gamma, descending=True, stable=True).indices[:groups]
    assign = d[centres].argmin(dim=0)  # first (better-scored) centre on ties
    assign[centres] = torch.arange(groups, device=x.device)
    return assign


def recycled_groups(pruned: int) -> tuple[int, int]:
    """(tokens recycled, clusters) for `pruned` dropped tokens, the release's rule: the top
    `int(0.3 * m) + 1` by score are recycled into `int(n / 10) + 1` clusters; nothing when nothing
    was pruned."""
    if pruned == 0:
        return 0, 0
    n = int(pruned * RECYCLE_SHARE) + 1
    return n, int(n / 10) + 1


def recycle(tokens: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Recycled tokens [g, D] from the pruned `tokens` [m, D] (in image order) and their attention
    `scores` [m], as the release computes them: the top `int(0.3 m) + 1` by score (in descending
    score order, ties to the lower index) are clustered with `density_peak_clusters` in the tokens'
    dtype, and each cluster becomes `sum of members * 1 / (size + 1e-6)`. Clusters come out in
    centre-score order. The sum runs per cluster in member order (the release's `index_add_` is
    unordered on GPU), so the result is deterministic."""
    n, groups = recycled_groups(tokens.shape[0])
    if n == 0:
        return tokens[:0]
    top = torch.sort(scores, descending=True, stable=True).indices[:n]
    chosen = tokens[top]
    assign = density_peak_clusters(chosen, groups)
    sizes = torch.bincount(assign, minlength=groups).to(chosen.dtype)
    weight = torch.ones_like(sizes) / (sizes + 1e-6)
    scaled = chosen * weight[assign, None]
    return torch.stack([scaled[assign == g].sum(dim=0) for g in range(groups)])
