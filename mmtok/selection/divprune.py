"""DivPrune: greedy max-min diversity selection on projected vision tokens.

DivPrune keeps the k tokens that are as mutually dissimilar as possible (cosine distance), a
question-agnostic baseline. The greedy is the classic farthest-point heuristic for the max-min
diversity problem: seed with the most isolated token, then repeatedly add the token farthest from
everything kept so far.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

# Same budget / mask conventions as MMTok, so pruners can swap selectors without new checks.
from mmtok.selection.mmtok import _as_budget, _exclude_mask

__all__ = ["ARITHMETICS", "cosine_distance", "divprune_select", "release_distance"]

# "release": the distance matrix in the input dtype, as the authors compute it (float16 in real runs,
# where its few distinct values make first-index ties decide many picks); "float32": widened and
# exactly symmetric, so near-ties are decided by the geometry rather than by half-precision rounding.
ARITHMETICS = ("release", "float32")


def cosine_distance(features: torch.Tensor) -> torch.Tensor:
    """Pairwise `1 - cos` in float32, exactly symmetric, `[n, n]` or `[B, n, n]`.

    Rows are L2-normalised in the input dtype (as the original does) before widening, so the
    distances themselves do not suffer half-precision cancellation near 0.
    """
    unit = F.normalize(features, dim=-1).float()
    dist = 1.0 - torch.matmul(unit, unit.transpose(-1, -2))
    # matmul need not round (i, j) and (j, i) identically; symmetrising exactly (IEEE addition is
    # commutative) makes mathematically tied tokens tie in floats too, so the lowest index wins.
    return 0.5 * (dist + dist.transpose(-1, -2))


def release_distance(features: torch.Tensor) -> torch.Tensor:
    """`1 - cos` in the input dtype, as the release computes it: rows divided by their norm, one
    `mm` per sample (not a batched matmul, whose kernel may round differently), not symmetrised."""
    single = features.dim() == 2
    feats = features.unsqueeze(0) if single else features
    out = []
    for x in feats:
        unit = x / x.norm(dim=1, keepdim=True)
        out.append(1.0 - torch.mm(unit, unit.t()))
    dist = torch.stack(out)
    return dist[0] if single else dist


def _max_min_numpy(dist: torch.Tensor, score: torch.Tensor, blocked: torch.Tensor, k: int) -> torch.Tensor:
    """The greedy loop of `divprune_select` in numpy, for CPUs: k steps of two or three small
    array operations, which torch's per-op dispatch would dominate. Only argmax (first maximum)
    and elementwise minima, which round nothing: the picks are the torch loop's exactly."""
    dist_np, picks = dist.detach().numpy(), np.empty((dist.shape[0], k), dtype=np.int64)
    for b in range(dist_np.shape[0]):
        cur = score[b].detach().numpy().copy()
        dead = blocked[b].numpy()
        cur[dead] = -np.inf
        for step in range(k):
            j = int(cur.argmax())
            picks[b, step] = j
            if step == 0:  # after the seed, the score is the distance to the selected set
                cur = dist_np[b, j].copy()
                cur[dead] = -np.inf
            else:
                np.minimum(cur, dist_np[b, j], out=cur)
            cur[j] = -np.inf
    return torch.from_numpy(picks)


def divprune_select(
    features: torch.Tensor, k: int, *, exclude: torch.Tensor | None = None, arithmetic: str = "float32"
) -> torch.LongTensor:
    """Indices of k tokens chosen by greedy max-min cosine diversity, sorted ascending.

    features: `[n, D]` (result `[k]`) or `[B, n, D]` (result `[B, k]`), the projected tokens.
    exclude:  optional boolean `[n]` or `[B, n]`; excluded tokens are treated as absent: never
              chosen and not counted as anyone's nearest neighbour.

    Step 1 picks the token whose nearest *other* token is farthest away (the release reads this as
    the second-smallest entry of each distance column, the smallest being the token itself; we
    mask the diagonal explicitly so exact duplicates cannot confuse it). Later steps pick the token
    with the largest minimum distance to the selected set. Chosen tokens are masked explicitly
    (the release relies on their zero self-distance), ties go to the lowest index.

    `arithmetic="float32"` (above) widens the distances; `"release"` reproduces the release's
    numbers instead: `release_distance` in the input dtype, the seed score literally the
    second-smallest entry of each column (self included, whatever half precision makes of the
    diagonal), the running minimum in that dtype. Its picks equal the release's whenever the
    release picks k distinct tokens (it could re-pick a chosen token only if every other score were
    at most that token's own rounded self-distance; we never re-pick).
    """
    if arithmetic not in ARITHMETICS:
        raise ValueError(f"unknown divprune arithmetic {arithmetic!r}; valid: {', '.join(ARITHMETICS)}")
    if features.dim() not in (2, 3):
        raise ValueError(f"features must be [n, D] or [B, n, D], got shape {tuple(features.shape)}")
    single = features.dim() == 2
    feats = features.unsqueeze(0) if single else features
    batch, n, _ = feats.shape
    device = feats.device

    if exclude is not None and single and exclude.dim() != 1:
        raise ValueError(f"exclude must have shape [{n}] for [n, D] features, got {tuple(exclude.shape)}")
    forbidden = _exclude_mask(exclude, batch, n, device)
    k = _as_budget(k)
    selectable = n - int(forbidden.sum(dim=-1).max().item())
    if k < 1 or k > selectable:
        raise ValueError(f"k must satisfy 1 <= k <= {selectable} selectable tokens (n={n}), got k={k}")

    inf = float("inf")
    if arithmetic == "release":
        dist = release_distance(feats)
        # column j's second-smallest entry over the non-excluded rows i, self included
        column = dist.masked_fill(forbidden.unsqueeze(2), inf)
        score = column.topk(2, dim=1, largest=False).values[:, 1] if n > 1 else column[:, 0]
    else:
        dist = cosine_distance(feats)
        eye = torch.eye(n, dtype=torch.bool, device=device)
        # Nearest-neighbour distance over the other, non-excluded tokens (+inf if there is none).
        neighbour_blocked = eye.unsqueeze(0) | forbidden.unsqueeze(1)
        score = dist.masked_fill(neighbour_blocked, inf).amin(dim=-1)
    blocked = forbidden.clone()

    if device.type == "cpu" and dist.dtype != torch.bfloat16:
        picks = _max_min_numpy(dist, score, blocked, k)
    else:
        picks = torch.empty(batch, k, dtype=torch.long, device=device)
        for step in range(k):
            j = score.masked_fill(blocked, -inf).argmax(dim=-1)  # first maximum, as the release's argmax
            picks[:, step] = j
            blocked.scatter_(1, j.unsqueeze(1), True)
            row = dist.gather(1, j.view(batch, 1, 1).expand(batch, 1, n)).squeeze(1)
            # After the seed, the score is the distance to the selected set, not to the nearest token.
            score = row if step == 0 else torch.minimum(score, row)
    picks = picks.sort(dim=-1).values
    return picks[0] if single else picks
