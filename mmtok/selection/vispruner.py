"""VisPruner (arXiv 2412.01818, "Beyond Text-Visual Attention") on one crop: important tokens by
CLS attention, then diverse tokens by repeatedly dropping the most duplicated ones.

The release's rule (`encode_images`), T = tokens to keep:
  * important: the `int(T * important_ratio)` patches with the highest CLS attention (at the CLIP
    layer the projector reads, averaged over heads);
  * the other patches, in descending attention order, form the residual list; while it is longer
    than the diverse share T - T_imp: split it into even and odd positions, score every even one by
    its largest cosine similarity to an odd one, and drop the `r = min(step, excess)` highest-scored
    evens; the survivors are re-listed as [evens in descending score order, odds in order];
  * kept = important + residual, in original order; the features are the CLIP features (before
    the projector) of those patches.
Our sorts are stable (exact ties to the earlier entry); the release's `argsort` leaves ties to the device.
"""

from __future__ import annotations

import torch

__all__ = ["vispruner_select"]


def vispruner_select(
    features: torch.Tensor, attention: torch.Tensor, k: int, important_ratio: float = 0.5, step: int = 8
) -> torch.Tensor:
    """Indices (ascending) of the `k` kept patches of one crop.

    features:  [n, D] patch features (no CLS) at the layer the projector reads
    attention: [n] CLS attention to each patch, averaged over heads
    """
    n = features.shape[0]
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= {n}, got {k}")
    unit = features / features.norm(dim=-1, keepdim=True)
    important = int(k * important_ratio)
    diverse = k - important
    order = torch.sort(attention, descending=True, stable=True).indices
    kept, residual = order[:important], order[important:]
    while True:
        r = min(step, residual.numel() - diverse)
        if r <= 0:
            break
        evens, odds = residual[::2], residual[1::2]
        scores = (unit[evens] @ unit[odds].T).max(dim=-1).values
        distinct = torch.sort(scores, descending=True, stable=True).indices[r:]
        residual = torch.cat([evens[distinct], odds])
    return torch.cat([kept, residual]).sort().values
