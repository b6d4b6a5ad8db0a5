"""SparseVLM (v1.5 style) math on plain tensors: text raters, per-layer kept counts, and the
density-peak k-NN clustering that recycles pruned tokens. No model code here; the wiring into the
decoder lives in `mmtok.pruners.sparsevlm`.
"""

from __future__ import annotations

import itertools
import math
from fractions import Fraction

import torch

from mmtok.selection import top_in_order

__all__ = [
    "COUNT_TABLES",
    "density_peak_clusters",
    "layer_counts",
    "recycle",
    "recycled_groups",
    "text_raters",
]

# v1.5 fixed kept-vision-token counts at its three pruning layers (2, 6, 15), for LLaVA-1.5's
# 576 image tokens. Keys are the budget labels of the 64/128/192 tables.
TABLE_TOKENS = 576
COUNT_TABLES: dict[int, tuple[int, int, int]] = {
    64: (66, 30, 17),
    128: (303, 110, 36),
    192: (300, 200, 110),
}
RECYCLE_PERCENT = 30  # share of the pruned tokens (highest scores first) that gets recycled
NEIGHBOURS = 5  # k of the k-NN local density


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

    Rule: rescale the budget to LLaVA-1.5's 576 tokens, r = budget * 576 / n, and interpolate the
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


def density_peak_clusters(x: torch.Tensor, groups: int, k: int = NEIGHBOURS) -> torch.Tensor:
    """Cluster id (0..groups-1) of every row of `x` [n, D] by density-peak k-NN clustering.

    Exact definition (deterministic, ties to the lower index):
      d_ij   = ||x_i - x_j|| / sqrt(D)                       (Euclidean, as in TCFormer's DPC-kNN)
      rho_i  = exp(-mean of d_ij^2 over the k nearest j != i), k = min(k, n - 1)
      j is denser than i if rho_j > rho_i, or rho_j == rho_i and j < i (a strict total order)
      delta_i = min d_ij over the denser j; for the densest point, max_j d_ij
      centres = the `groups` points with the largest rho_i * delta_i
      each point joins its nearest centre (a centre joins itself)
    Clusters are numbered by their centre's row order.
    """
    n = x.shape[0]
    if groups < 1:
        raise ValueError(f"groups must be >= 1, got {groups}")
    if groups >= n:
        return torch.arange(n, device=x.device)
    x = x.float()
    d = torch.cdist(x, x) / math.sqrt(x.shape[1])
    knn = d.clone().fill_diagonal_(float("inf")).topk(min(k, n - 1), dim=-1, largest=False).values
    rho = torch.exp(-(knn**2).mean(dim=-1))
    idx = torch.arange(n, device=x.device)
    denser = (rho[None, :] > rho[:, None]) | ((rho[None, :] == rho[:, None]) & (idx[None, :] < idx[:, None]))
    delta = torch.where(denser, d, torch.full_like(d, float("inf"))).min(dim=-1).values
    delta = torch.where(torch.isinf(delta), d.max(dim=-1).values, delta)
    gamma = rho * delta
    centres = top_in_order(gamma, groups)
    assign = d[:, centres].argmin(dim=-1)  # first (lower-numbered) centre on ties
    assign[centres] = torch.arange(groups, device=x.device)
    return assign


def recycled_groups(pruned: int) -> tuple[int, int]:
    """(tokens recycled, clusters) for `pruned` dropped tokens: the top ceil(30%) are recycled
    into n // 10 + 1 clusters (at most n); nothing when nothing was pruned."""
    n = -(-pruned * RECYCLE_PERCENT // 100)
    return n, (min(n, n // 10 + 1) if n else 0)


def recycle(tokens: torch.Tensor, scores: torch.Tensor) -> torch.Tensor:
    """Recycled tokens [g, D] from the pruned `tokens` [m, D] and their attention `scores` [m]:
    the top 30% by score (ties to the lower index) are clustered with `density_peak_clusters` and
    every cluster is replaced by the plain mean of its members (computed in float32)."""
    n, groups = recycled_groups(tokens.shape[0])
    if n == 0:
        return tokens[:0]
    # kept in the tokens' own order so that the clusters come out in image order
    top = top_in_order(scores.float(), n)
    chosen = tokens[top].float()
    assign = density_peak_clusters(chosen, groups)
    sums = torch.zeros(groups, tokens.shape[1], device=tokens.device).index_add_(0, assign, chosen)
    sizes = torch.bincount(assign, minlength=groups).clamp(min=1).unsqueeze(1)
    return (sums / sizes).to(tokens.dtype)
