"""VisionZip: keep the CLS-attended "dominant" tokens and merge the rest into "contextual" ones.

Works on one image crop at the CLIP layer the projector reads (hidden_states[-2]), before the projector.
Inputs include the CLS token at index 0 because VisionZip keeps it as the first dominant token.

Conventions (from the paper, checked against the authors' release; docs/pruners.md):
- `dominant` counts CLS: CLS plus the top (dominant - 1) patches by CLS attention summed over
  heads. This is the release's own count: its public `visionzip(model, dominant=54,
  contextual=10)` passes `dominant - 1` to the tower, which keeps CLS + 53 patches + 10
  contextual = 64 tokens, so the authors' "64" and ours are the same 64 tokens.
- Contextual targets: over the r remaining (non-dominant) tokens in original order, the positions
  `arange(0, r, max(1, r // contextual))[:contextual]` (the release's uniform stride).
- Every other remaining token is assigned to its most cosine-similar target on the head-averaged
  keys (ties: lowest target), and each contextual token = target feature + mean(assigned
  features), the target alone if nothing was assigned. This is what the release computes: the
  target is not averaged in as one more member of its group but added at full weight.

Towers without a CLS token (`visionzip_in_place`, the authors' later port to such a tower): the
dominant tokens are ranked by a per-token attention score the family supplies instead of the CLS
row, nothing is counted for CLS, the features are the tokens the LLM receives, and each
contextual token stands at its target's place (so every kept token keeps its position).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from mmtok.selection import top_in_order

__all__ = [
    "NEXT_TILES",
    "release_next_order",
    "visionzip_dominant_indices",
    "visionzip_in_place",
    "visionzip_merge",
    "visionzip_split",
    "visionzip_targets",
]

# Multi-crop arrangement of the per-crop VisionZip tokens: "crop" concatenates each crop's
# [dominant, contextual] in crop order; "release" is the authors' `restore_image_features_sorted`.
NEXT_TILES = ("crop", "release")


def visionzip_split(budget: int) -> tuple[int, int]:
    """(dominant, contextual) for a total token budget, CLS counted among the dominant tokens.

    The paper's table (64 = 54 + 10, 128 = 108 + 20, 192 = 162 + 30) is a fixed 54:10 ratio, so
    other budgets use contextual = round(budget * 10 / 64) with halves rounded up (integer
    arithmetic, e.g. 144 -> 121 + 23), at least 1 once budget >= 2 so the merge always exists,
    and dominant = budget - contextual (>= 1: CLS).
    """
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"budget must be a positive integer, got {budget!r}")
    contextual = (budget * 10 + 32) // 64
    if budget >= 2:
        contextual = max(1, contextual)
    return budget - contextual, contextual


def visionzip_dominant_indices(cls_attention: torch.Tensor, dominant: int) -> torch.LongTensor:
    """Token indices (CLS = 0 first, then patches ascending) of the `dominant` kept tokens.

    Patches are ranked by CLS attention summed over heads; a stable sort breaks exact ties
    towards the lower index so the result is deterministic across devices.
    """
    if cls_attention.dim() != 2:
        raise ValueError(f"cls_attention must be [H, n + 1], got shape {tuple(cls_attention.shape)}")
    total = cls_attention.shape[1]
    if not 1 <= dominant <= total:
        raise ValueError(f"dominant must be in [1, {total}] (CLS included), got {dominant}")
    scores = cls_attention[:, 1:].float().sum(dim=0)
    top = top_in_order(scores, dominant - 1) + 1
    cls = torch.zeros(1, dtype=torch.long, device=cls_attention.device)
    return torch.cat([cls, top])


def visionzip_targets(remaining: int, contextual: int) -> torch.LongTensor:
    """Positions, within the remaining-token list, of the contextual targets (uniform stride)."""
    if not 0 <= contextual <= remaining:
        raise ValueError(f"contextual must be in [0, {remaining}] remaining tokens, got {contextual}")
    if contextual == 0:
        return torch.zeros(0, dtype=torch.long)
    step = max(1, remaining // contextual)
    return torch.arange(0, remaining, step)[:contextual]


def _check_split(dominant: int, contextual: int, total: int, counted: str = "") -> None:
    """The dominant + contextual split fits the crop's `total` tokens (`counted`: what they include)."""
    if dominant < 1 or contextual < 0 or dominant + contextual > total:
        raise ValueError(
            f"need dominant >= 1, contextual >= 0 and dominant + contextual <= {total} tokens{counted}, "
            f"got dominant={dominant}, contextual={contextual}"
        )


def visionzip_merge(
    features: torch.Tensor,
    cls_attention: torch.Tensor,
    keys: torch.Tensor,
    dominant: int,
    contextual: int,
) -> torch.Tensor:
    """The `[dominant + contextual, Dv]` VisionZip tokens of one crop, before the projector.

    features:      `[n + 1, Dv]` CLIP features of the layer the projector reads, CLS at index 0.
    cls_attention: `[H, n + 1]` attention probabilities of the CLS query, per head, same layer.
    keys:          `[n + 1, Dk]` that layer's keys averaged over heads.

    Output order: dominant tokens (CLS first, then patches in original order), then the
    contextual tokens in target order. The merge is accumulated in float32 and cast back to the
    features' dtype, so half-precision towers do not lose precision summing many features.
    """
    if features.dim() != 2 or keys.dim() != 2:
        raise ValueError(
            f"features and keys must be 2-D [n + 1, D], got {tuple(features.shape)} and {tuple(keys.shape)}"
        )
    total = features.shape[0]
    if cls_attention.dim() != 2 or cls_attention.shape[1] != total or keys.shape[0] != total:
        raise ValueError(
            f"token counts differ: features {tuple(features.shape)}, cls_attention "
            f"{tuple(cls_attention.shape)} (expected [H, {total}]), keys {tuple(keys.shape)}"
        )
    _check_split(dominant, contextual, total, " (CLS included)")
    device = features.device
    dominant_idx = visionzip_dominant_indices(cls_attention, dominant).to(device)
    dominant_tokens = features[dominant_idx]
    if contextual == 0:
        return dominant_tokens

    _, contextual_tokens = _contextual_tokens(features, keys, dominant_idx, contextual)
    return torch.cat([dominant_tokens, contextual_tokens])


def _contextual_tokens(
    features: torch.Tensor, keys: torch.Tensor, dominant_idx: torch.Tensor, contextual: int
) -> tuple[torch.LongTensor, torch.Tensor]:
    """(target indices, contextual tokens `[contextual, D]` in the features' dtype): the release's merge
    of every token outside `dominant_idx` into `contextual` targets picked by uniform stride."""
    total, device = features.shape[0], features.device
    is_remaining = torch.ones(total, dtype=torch.bool, device=device)
    is_remaining[dominant_idx] = False
    remaining = is_remaining.nonzero().squeeze(1)
    target_pos = visionzip_targets(remaining.numel(), contextual).to(device)
    is_target = torch.zeros(remaining.numel(), dtype=torch.bool, device=device)
    is_target[target_pos] = True
    targets, others = remaining[target_pos], remaining[~is_target]

    unit_keys = F.normalize(keys.float(), dim=-1)
    assignment = (unit_keys[others] @ unit_keys[targets].T).argmax(dim=-1)
    sums = torch.zeros(contextual, features.shape[1], dtype=torch.float32, device=device)
    sums.index_add_(0, assignment, features[others].float())
    counts = torch.bincount(assignment, minlength=contextual).clamp_min(1).unsqueeze(1)
    contextual_tokens = features[targets].float() + sums / counts
    return targets, contextual_tokens.to(features.dtype)


def visionzip_in_place(
    features: torch.Tensor,
    scores: torch.Tensor,
    keys: torch.Tensor,
    dominant: int,
    contextual: int,
) -> tuple[torch.LongTensor, torch.Tensor]:
    """VisionZip without a CLS token (the authors' port to a tower that has none): `(index, tokens)`,
    the `dominant + contextual` kept token indices ascending and the tokens standing there.

    features: `[n, D]` the tokens the LLM would receive (merged after the tower's last block).
    scores:   `[n]` each token's attention score from the tower (the family's substitute for the CLS
              row; the release: attention the token receives in the last block, summed over queries,
              averaged over heads and over each merge unit).
    keys:     `[n, Dk]` that block's keys averaged over each merge unit and over heads.

    The `dominant` highest-scoring tokens stay as they are (a stable sort: exact ties go to the lower
    index; the release's `topk` leaves them to the device). Contextual targets and the merge are the
    CLS rule's (`visionzip_merge`) over the remaining tokens in raster order, and every contextual
    token stands at its target's place: the release writes it into the target's row, which keeps
    its position, so kept tokens keep their original positions.
    """
    if features.dim() != 2 or keys.dim() != 2 or scores.dim() != 1:
        raise ValueError(
            f"features and keys must be [n, D] and scores [n], got {tuple(features.shape)}, "
            f"{tuple(keys.shape)} and {tuple(scores.shape)}"
        )
    total = features.shape[0]
    if scores.shape[0] != total or keys.shape[0] != total:
        raise ValueError(
            f"token counts differ: features {tuple(features.shape)}, scores {tuple(scores.shape)}, "
            f"keys {tuple(keys.shape)}"
        )
    _check_split(dominant, contextual, total)
    device = features.device
    dominant_idx = top_in_order(scores.float(), dominant).to(device)
    if contextual == 0:
        return dominant_idx, features[dominant_idx]
    targets, contextual_tokens = _contextual_tokens(features, keys, dominant_idx, contextual)
    index = torch.cat([dominant_idx, targets])
    order = index.argsort()
    return index[order], torch.cat([features[dominant_idx], contextual_tokens])[order]


def release_next_order(dominant_idx: torch.Tensor, grid: tuple[int, int], side: int, contextual: int) -> torch.Tensor:
    """Order, as indices into the crops' stacked VisionZip tokens `[c * (d + contextual)]`, in which
    the release (`restore_image_features_sorted`, "spatial_unpad" anyres) hands them to the LLM.

    dominant_idx: `[c, d]` each crop's dominant token indices (CLS = 0 first, then patches
                  ascending, as `visionzip_dominant_indices`); crop 0 is the base image, crops
                  1.. are the tiles of a `grid` = (rows, cols) arrangement, `side` x `side` patches each.
    The release keeps the base crop's tokens as they are ([CLS, dominant patches, contextual]);
    then the tiles' dominant patches at their places on the stitched (rows * side) x (cols * side)
    grid, read in raster order; then every tile's CLS (tile order); then every tile's contextual
    tokens (tile order). No image-newline tokens (the release builds one but never inserts it).
    """
    c, d = dominant_idx.shape
    rows, cols = grid
    if c - 1 != rows * cols:
        raise ValueError(f"{c} crops do not fit a base image + a {rows} x {cols} tile grid")
    per = d + contextual
    device = dominant_idx.device
    base = torch.arange(per, device=device)
    tiles = torch.arange(1, c, device=device)
    patch = dominant_idx[1:, 1:] - 1  # [tiles, d - 1] patch positions within each tile
    tile_row, tile_col = (tiles - 1) // cols, (tiles - 1) % cols
    y = tile_row[:, None] * side + patch // side
    x = tile_col[:, None] * side + patch % side
    raster = (y * cols * side + x).flatten()
    slots = (tiles[:, None] * per + torch.arange(1, d, device=device)).flatten()
    spatial = slots[torch.argsort(raster)]
    cls = tiles * per
    ctx = (tiles[:, None] * per + d + torch.arange(contextual, device=device)).flatten()
    return torch.cat([base, spatial, cls, ctx])
