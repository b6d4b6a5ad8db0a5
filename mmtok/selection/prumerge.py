"""PruMerge+ (arXiv 2403.15388) on one crop: CLS-attention outliers plus spatial
samples as cluster centres, each merged with its most key-similar tokens, plus one summary token.

The release's rule (`token_prune_merge_advanced_plus`), for the n patches of a crop:
  * attention: one head over the full width at the CLIP layer after the one the projector reads:
    q, k = q_proj / k_proj(layer_norm1(features at the projector's layer, CLS included)),
    `softmax(q k^T / sqrt(D))`, the CLS row over the patches;
  * outliers: the share of patches above Q3 + 1.5 IQR of that row (`np.percentile`) is the ratio
    r; the `int(n r)` highest-attention patches are centres, then the patches
    `arange(0, n - 1, int(int(1 / r) / 3))` that are not centres yet (spatial samples);
  * every centre i becomes `x_i + sum(attn_j * x_j)` over the 32 tokens j (other centres in centre
    order, then the non-centres ascending) whose normalised keys are most similar to i's;
  * one extra token: `sum(attn_j * x_j)` over the non-centres; output = centres in centre order + it.
The release's count is adaptive (it follows the outliers). With a per-crop budget k we keep the
first k - 1 centres of that order (filling, if it is shorter, with the remaining patches by
descending attention) plus the extra token: exactly k tokens. Our sorts are stable (exact ties to
the earlier entry); the release's `topk` leaves them to the device.
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F

__all__ = ["NEIGHBOURS", "cls_attention_single_head", "outlier_ratio", "prumerge_centres", "prumerge_merge"]

NEIGHBOURS = 32  # tokens merged into each centre (the release's k=int(32))


def cls_attention_single_head(q: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
    """CLS row over the patches [n] of `softmax(q k^T / sqrt(D))`, q and k [n + 1, D], in their dtype."""
    attn = F.softmax((q[:1] @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5, dim=-1)
    return attn[0, 1:]


def outlier_ratio(attention: torch.Tensor) -> float:
    """Share of entries above Q3 + 1.5 IQR (numpy's linear percentiles on float32 values)."""
    values = attention.to(dtype=torch.float32).cpu().numpy().flatten()
    q1, q3 = np.percentile(values, 25), np.percentile(values, 75)
    return len(np.where(values > q3 + 1.5 * (q3 - q1))[0]) / len(values)


def prumerge_centres(attention: torch.Tensor, count: int) -> list[int]:
    """The first `count` centres (patch indices, in the release's order) for one crop."""
    n = attention.shape[0]
    by_attention = torch.sort(attention, descending=True, stable=True).indices.tolist()
    ratio = outlier_ratio(attention)
    centres = by_attention[: int(n * ratio)]
    if ratio > 0:
        stride = int(int(1 / ratio) / 3)
        if stride >= 1:
            taken = set(centres)
            centres += [x for x in range(0, n - 1, stride) if x not in taken]
    taken = set(centres)
    centres += [x for x in by_attention if x not in taken]  # only reached when the budget needs more
    return centres[:count]


def prumerge_merge(
    features: torch.Tensor, keys: torch.Tensor, attention: torch.Tensor, centres: list[int]
) -> torch.Tensor:
    """[len(centres) + 1, D] merged tokens: each centre plus its attention-weighted 32 most
    key-similar tokens, then the attention-weighted sum of the non-centres."""
    n = features.shape[0]
    unit = F.normalize(keys, p=2, dim=-1)
    chosen = set(centres)
    others = [x for x in range(n) if x not in chosen]
    out = []
    for i, c in enumerate(centres):
        rest = torch.tensor(centres[:i] + centres[i + 1 :] + others, dtype=torch.long, device=features.device)
        if rest.numel() == 0:
            out.append(features[c])
            continue
        sim = unit[rest] @ unit[c]
        near = rest[torch.sort(sim, descending=True, stable=True).indices[:NEIGHBOURS]]
        out.append(features[c] + (features[near] * attention[near, None]).sum(dim=0))
    other = torch.tensor(others, dtype=torch.long, device=features.device)
    out.append((features[other] * attention[other, None]).sum(dim=0))
    return torch.stack(out)
