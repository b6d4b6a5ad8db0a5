"""A re-implementation of the MMTok authors' selector, for benchmarking only (not used by mmtok).

What it re-implements: `SemanticTokenSelector.mm_coverage_selection` and its TorchScript kernel
`greedy_merged_jit_kernel` in `mmtok/core/semantic_selector.py` of the authors' release
(github.com/Ironieser/MMTok, Apache-2.0). Their release cannot be installed or fetched when the
benchmark runs, so this file redoes the same tensor operations in the same order, written here
from reading it: L2 normalisation as `x / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)` in the
input dtype, then float32; the two similarity matmuls; softmaxes of `sims * (1 / tau)` divided
by m and n; `cat([P, Q * alpha])`; then a TorchScript dense greedy over that [m + n, n] matrix,
one crop per call. Their selector runs the TorchScript kernel whenever n >= 500 or k >= 20
(environment-tunable thresholds) and an eager loop of the same operations otherwise; at LLaVA
sizes (n = 576) that is always the kernel, which is all this file keeps. Padding exclusion (their
`padding_patch_indices`) is kept as `exclude`.

It returns the sorted kept indices (their selector also returns the kept tokens, one gather,
which the benchmark leaves out of both sides). `scripts/bench_selection.py` checks that our
`mmtok_select` returns the same indices; the check of this file against the release itself (same
indices, time within a few percent) is recorded in results/bench/notes.md.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


@torch.jit.script
def authors_greedy(C: torch.Tensor, k: int, exclude: torch.Tensor) -> torch.Tensor:
    """Their kernel's loop: k dense steps over C = [P; alpha * Q] (`[m + n, n]`), picks in order."""
    rows, n = C.shape
    best = torch.zeros(rows, device=C.device, dtype=C.dtype)
    mask = torch.zeros(n, device=C.device, dtype=C.dtype)
    minus_inf = torch.tensor(float("-inf"), dtype=C.dtype, device=C.device)
    if exclude.numel() > 0:
        mask.index_fill_(0, exclude, minus_inf.item())
    picks = torch.zeros(k, dtype=torch.long, device=C.device)
    for step in range(k):
        gain = (C - best.unsqueeze(1)).clamp_min_(0).sum(dim=0)
        gain.add_(mask)
        j = torch.argmax(gain)
        j1 = j.view(1)
        picks[step] = j
        column = C.index_select(1, j1).squeeze(1)
        mask.scatter_(0, j1, minus_inf)
        best = torch.maximum(best, column)
    return picks


def _unit(x: torch.Tensor) -> torch.Tensor:
    return x / x.norm(dim=-1, keepdim=True).clamp(min=1e-8)


def authors_select(
    text: torch.Tensor,
    vision_proj: torch.Tensor,
    vision_pre: torch.Tensor,
    k: int,
    alpha: float = 0.5,
    tau_t: float = 0.02,
    tau_v: float = 0.2,
    exclude: list[int] | None = None,
) -> torch.Tensor:
    """Sorted kept indices of one crop (`text` `[m, D]`, `vision_proj` `[n, D]`, `vision_pre` `[n, Dv]`)."""
    v = _unit(vision_proj).float()
    w = _unit(vision_pre).float()
    t = _unit(text).float()
    P = t @ v.T
    Q = w @ w.T
    m, n = P.shape
    P = F.softmax(P * (1.0 / tau_t), dim=1) / m
    Q = F.softmax(Q * (1.0 / tau_v), dim=1) / n
    C = torch.cat([P, Q * alpha], dim=0)
    excl = torch.tensor(exclude if exclude is not None else [], dtype=torch.long, device=C.device)
    picks = authors_greedy(C, min(k, n), excl)
    return picks.sort().values


def authors_select_crops(text, vision_proj, vision_pre, k: int, **kw) -> torch.Tensor:
    """LLaVA-NeXT as their release runs it: one call per crop, same question (`[B, k]`)."""
    return torch.stack([authors_select(text, vision_proj[b], vision_pre[b], k, **kw) for b in range(len(vision_proj))])
