"""PyramidDrop (CVPR 2025) schedule math on plain numbers: rank layers, per-stage kept counts, and
the ratio lambda that a layer-averaged budget implies. The wiring into the decoder lives in
`mmtok.pruners.pdrop`.

The release (`--layer_list '[8,16,24]' --image_token_ratio_list '[0.5,0.25,0.125]'`, lambda = 0.5)
splits the 32-layer LLM into 4 stages: after layer 8, 16 and 24 the image tokens are re-ranked by
the last instruction token's attention in that layer and `int(N * lambda^s)` stay, N being the
image's ORIGINAL token count. "Rank layer" r means: layer r scores (from its input) and layers
>= r see the shorter sequence, i.e. the drop is at the output of layer r - 1.
"""

from __future__ import annotations

import math
from fractions import Fraction

__all__ = ["RELEASE_RATIO", "default_rank_layers", "solve_ratio", "stage_counts", "stage_lengths"]

RELEASE_RATIO = 0.5  # lambda of the release's scripts


def default_rank_layers(num_layers: int) -> tuple[int, ...]:
    """L/4, L/2, 3L/4 (floored): the release's 8, 16, 24 for a 32-layer LLM."""
    return tuple(num_layers * s // 4 for s in (1, 2, 3))


def stage_lengths(rank_layers: tuple[int, ...], num_layers: int) -> list[int]:
    """Layers per stage: [r1, r2 - r1, ..., L - r_last]."""
    bounds = [0, *rank_layers, num_layers]
    return [b - a for a, b in zip(bounds, bounds[1:])]


def stage_counts(n: int, ratio, stages: int) -> tuple[int, ...]:
    """Kept image tokens after each of the `stages` drops for an image of `n` tokens:
    `int(n * ratio^s)` (as the release's `int(N * ratio_list[s])`), at least 1 and at most n.
    `ratio` is a float (the release's arithmetic) or an exact Fraction (a solved budget)."""
    if isinstance(ratio, Fraction):
        counts = [math.floor(n * ratio**s) for s in range(1, stages + 1)]
    else:
        counts = [int(n * ratio**s) for s in range(1, stages + 1)]
    return tuple(min(n, max(1, c)) for c in counts)


def solve_ratio(fraction: Fraction, rank_layers: tuple[int, ...], num_layers: int) -> Fraction:
    """The lambda in (0, 1] whose schedule keeps `fraction` of the image tokens on layer average:
    sum_s len_s * lambda^s / L = fraction (before integer rounding of the counts), by exact
    bisection (an exact root such as 1/2 is found exactly). Raises if `fraction` is at or below
    what the first stage alone costs (those layers always see every token)."""
    lengths = stage_lengths(rank_layers, num_layers)
    if fraction >= 1:
        return Fraction(1)
    floor = Fraction(lengths[0], num_layers)
    if fraction <= floor:
        raise ValueError(f"below the first stage's share {floor}")

    def average(lam: Fraction) -> Fraction:
        return sum((length * lam**s for s, length in enumerate(lengths)), Fraction(0)) / num_layers

    lo, hi = Fraction(0), Fraction(1)
    for _ in range(48):
        mid = (lo + hi) / 2
        value = average(mid)
        if value == fraction:
            return mid
        lo, hi = (mid, hi) if value < fraction else (lo, mid)
    return lo
