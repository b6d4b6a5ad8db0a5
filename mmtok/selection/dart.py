"""DART (duplication-aware token reduction, arXiv 2502.11494) on plain tensors: pivot tokens and
the tokens least similar to them. The wiring into the decoder lives in `mmtok.pruners.dart`.

The release's rule (`get_retained_image_token`), for one prompt at decoder layer K:
  * pivots: the `pivot_image` image tokens and the `pivot_text` text tokens (every token after the
    image) with the largest L1 norm of their keys in layer K-1 (RoPE applied, heads concatenated);
  * `per_pivot = retain // (pivot_image + pivot_text)`, `retain` = the budget (its
    `max_num_trunction`; on a multi-crop image `min(retain, n - pivot_image)`);
  * for each pivot in turn, the `per_pivot` image tokens of the still unclaimed pool (image tokens
    that are not image pivots) with the LOWEST cosine similarity to the pivot, on layer K-1's
    output passed through the LLM's final norm, are claimed and leave the pool;
  * the image pivots and every claimed token are kept (text pivots only guide): at most
    pivot_image + (pivot_image + pivot_text) * per_pivot tokens, e.g. 4 + 8 * 16 = 132 for 128.
The pivots are visited in the order in which CPython iterates the set of their sequence indices,
exactly as the release does (that order decides which pivot claims a token two pivots would want),
so this module uses the same set operations on the same indices (relative to the unpadded prompt).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = ["dart_kept_count", "dart_per_pivot", "dart_select"]


def dart_per_pivot(retain: int, n: int, pivot_image: int, pivot_text: int) -> int:
    """Tokens each pivot claims: `min(retain, n - pivot_image) // (pivot_image + pivot_text)`."""
    return max(0, min(retain, n - pivot_image)) // (pivot_image + pivot_text)


def dart_kept_count(retain: int, n: int, pivot_image: int, pivot_text: int) -> int:
    """Image tokens DART keeps for an image of `n` tokens (pool permitting)."""
    pivot_image = min(pivot_image, n)
    claimed = (pivot_image + pivot_text) * dart_per_pivot(retain, n, pivot_image, pivot_text)
    return pivot_image + min(claimed, n - pivot_image)


def dart_select(
    keys: torch.Tensor,
    states: torch.Tensor,
    start: int,
    length: int,
    retain: int,
    pivot_image: int = 4,
    pivot_text: int = 4,
) -> torch.Tensor:
    """Kept image-token indices (ascending, into the image span) for one unpadded prompt.

    keys:   [S, Dk] layer K-1 keys per token (RoPE applied, heads concatenated)
    states: [S, D] layer K-1 output through the final norm
    start, length: the image span in the prompt; every later token is text.
    Ties (of key norms or similarities) go to the earlier candidate in the order the release
    enumerates them; its `topk` leaves them to the device.
    """
    end = start + length
    n_text = keys.shape[0] - end
    pivot_image, pivot_text = min(pivot_image, length), min(pivot_text, n_text)
    per_pivot = dart_per_pivot(retain, length, pivot_image, pivot_text) if pivot_image + pivot_text else 0

    def top(values: torch.Tensor, k: int) -> list[int]:
        return torch.sort(values, descending=True, stable=True).indices[:k].tolist()

    image_norm = keys[start:end].norm(p=1, dim=-1)  # in the keys' dtype, as the release
    text_norm = keys[end:].norm(p=1, dim=-1)
    image_pivots = [start + i for i in top(image_norm, pivot_image)]
    text_pivots = [end + i for i in top(text_norm, pivot_text)]
    chosen = set(image_pivots + text_pivots)
    pool = set(range(start, end)) - set(image_pivots)
    for pivot in list(chosen):
        candidates = list(pool)
        if not candidates or per_pivot == 0:
            break
        sim = F.cosine_similarity(states[pivot], states[candidates], dim=-1)
        claimed = [candidates[i] for i in top(-sim, per_pivot)]
        chosen.update(claimed)
        pool.difference_update(claimed)
    chosen.difference_update(text_pivots)
    return torch.tensor(sorted(chosen), dtype=torch.long, device=keys.device) - start
