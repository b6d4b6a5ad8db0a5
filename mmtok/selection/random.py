"""Random baseline: a uniform, seeded subset of the vision tokens in original order.

A baseline every budget table compares against, so it must be exactly reproducible: the same
seed gives the same subset on any machine because the permutation is drawn on a CPU generator.
"""

from __future__ import annotations

import torch

__all__ = ["random_select"]


def random_select(
    n: int,
    k: int,
    *,
    generator: torch.Generator | None = None,
    seed: int | None = None,
    device: torch.device | str | None = None,
) -> torch.LongTensor:
    """k distinct indices drawn uniformly from range(n), sorted ascending.

    Pass either a `generator` (its state advances, for a stream of draws) or a `seed` (a fresh
    CPU generator, for a draw reproducible on its own); with neither, torch's global RNG is used.
    The result is moved to `device` (default: CPU).
    """
    if generator is not None and seed is not None:
        raise ValueError("pass either generator or seed, not both")
    if isinstance(n, bool) or isinstance(k, bool) or not isinstance(n, int) or not isinstance(k, int):
        raise ValueError(f"n and k must be integers, got n={n!r}, k={k!r}")
    if not 1 <= k <= n:
        raise ValueError(f"k must satisfy 1 <= k <= n, got n={n}, k={k}")
    if seed is not None:
        generator = torch.Generator(device="cpu").manual_seed(seed)
    gen_device = generator.device if generator is not None else torch.device("cpu")
    perm = torch.randperm(n, generator=generator, device=gen_device)
    return perm[:k].sort().values.to(device if device is not None else "cpu")
