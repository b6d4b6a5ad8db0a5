"""MMTok: greedy multimodal coverage maximisation over vision tokens.

The objective (spec, "Objective") rewards a subset of vision tokens for covering both the question
(text-vision softmax similarities) and the image itself (vision-vision softmax similarities). Both
terms are facility-location functions, hence monotone submodular, so the greedy below is within
(1 - 1/e) of the optimum. Everything here is pure tensor code; model wiring lives elsewhere.

Shapes: a single crop uses 2-D inputs; a batch of crops uses 3-D vision inputs with either one
shared question `[m, D]` or one per crop `[B, m, D]`. The batch is processed in one vectorised
greedy (only the k steps loop), because LLaVA-NeXT selects on up to five crops per request.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F

__all__ = ["build_coverage_matrix", "coverage", "greedy_max_coverage", "mmtok_select"]


def _check_shapes(text_emb: torch.Tensor, vision_proj: torch.Tensor, vision_pre: torch.Tensor) -> None:
    if vision_proj.dim() not in (2, 3):
        raise ValueError(f"vision_proj must be [n, D] or [B, n, D], got shape {tuple(vision_proj.shape)}")
    if vision_pre.dim() != vision_proj.dim():
        raise ValueError(
            f"vision_pre must have the same rank as vision_proj: got {tuple(vision_pre.shape)} "
            f"and {tuple(vision_proj.shape)}"
        )
    if text_emb.dim() not in (2, vision_proj.dim()):
        raise ValueError(
            f"text_emb must be [m, D]{' or [B, m, D]' if vision_proj.dim() == 3 else ''} for vision_proj "
            f"of shape {tuple(vision_proj.shape)}, got {tuple(text_emb.shape)}"
        )
    if vision_proj.shape[-2] != vision_pre.shape[-2]:
        raise ValueError(
            f"vision_proj and vision_pre must hold the same number of tokens n: "
            f"{vision_proj.shape[-2]} vs {vision_pre.shape[-2]}"
        )
    if vision_proj.shape[-2] < 1:
        raise ValueError("there are no vision tokens to select from (n = 0)")
    if text_emb.shape[-1] != vision_proj.shape[-1]:
        raise ValueError(
            f"text_emb and vision_proj must share the LLM embedding width D: "
            f"{text_emb.shape[-1]} vs {vision_proj.shape[-1]}"
        )
    if vision_proj.dim() == 3:
        batch = vision_proj.shape[0]
        if vision_pre.shape[0] != batch or (text_emb.dim() == 3 and text_emb.shape[0] != batch):
            raise ValueError(
                f"batch sizes differ: text_emb {tuple(text_emb.shape)}, vision_proj "
                f"{tuple(vision_proj.shape)}, vision_pre {tuple(vision_pre.shape)}"
            )


def _unit_float32(x: torch.Tensor) -> torch.Tensor:
    # The spec normalises in the input dtype (what the authors' fp16 pipeline does) and only then
    # widens, so half-precision runs see the same rounding as the original release.
    return F.normalize(x, dim=-1).float()


def build_coverage_matrix(
    text_emb: torch.Tensor,
    vision_proj: torch.Tensor,
    vision_pre: torch.Tensor,
    alpha: float = 0.5,
    tau_t: float = 0.02,
    tau_v: float = 0.2,
) -> torch.Tensor:
    """The float32 matrix C = [P; alpha * Q] whose column-subset coverage MMTok maximises.

    P = softmax(cos(t, v) / tau_t over vision tokens) / m   -> rows 0..m-1
    Q = softmax(cos(v', v') / tau_v over vision tokens) / n -> rows m..m+n-1 (diagonal included)

    Returns `[m + n, n]` for 2-D vision inputs and `[B, m + n, n]` for 3-D ones. `m = 0` (a
    question with no text at all) is allowed and leaves only the vision-vision term.
    """
    _check_shapes(text_emb, vision_proj, vision_pre)
    if tau_t <= 0 or tau_v <= 0:
        raise ValueError(f"temperatures must be positive, got tau_t={tau_t}, tau_v={tau_v}")
    m, n = text_emb.shape[-2], vision_proj.shape[-2]
    t = _unit_float32(text_emb)
    v = _unit_float32(vision_proj)
    w = _unit_float32(vision_pre)
    text_vision = torch.matmul(t, v.transpose(-1, -2))
    if text_vision.dim() < v.dim():  # 2-D text against a 3-D batch broadcasts only via matmul
        text_vision = text_vision.expand(v.shape[0], m, n)
    p = torch.softmax(text_vision / tau_t, dim=-1) / max(m, 1)
    q = torch.softmax(torch.matmul(w, w.transpose(-1, -2)) / tau_v, dim=-1) / n
    return torch.cat([p, alpha * q], dim=-2)


def coverage(C: torch.Tensor, S: torch.Tensor) -> torch.Tensor:
    """Objective value sum_r max_{j in S} C[r, j] (0 for an empty S).

    `C` is `[R, n]` with `S` `[k]`, or `[B, R, n]` with `S` `[B, k]` (result `[B]`).
    """
    S = S.to(device=C.device, dtype=torch.long)
    if S.shape[-1] == 0:
        return C.new_zeros(C.shape[:-2])
    if C.dim() == 2:
        return C[:, S].amax(dim=-1).sum(dim=-1)
    index = S.unsqueeze(1).expand(C.shape[0], C.shape[1], S.shape[-1])
    return C.gather(2, index).amax(dim=-1).sum(dim=-1)


def _as_budget(k: object) -> int:
    # Accept numpy / 0-d tensor integers from config code, but not bools or floats.
    if isinstance(k, bool):
        raise ValueError(f"k must be an integer, got {k!r}")
    try:
        return operator.index(k)
    except TypeError:
        raise ValueError(f"k must be an integer, got {k!r}") from None


def _exclude_mask(exclude: torch.Tensor | None, batch: int, n: int, device: torch.device) -> torch.Tensor:
    """`[batch, n]` boolean mask of forbidden columns (all False when `exclude` is None)."""
    if exclude is None:
        return torch.zeros(batch, n, dtype=torch.bool, device=device)
    if exclude.dtype != torch.bool:
        raise ValueError(f"exclude must be a boolean mask, got dtype {exclude.dtype}")
    if exclude.shape not in (torch.Size([n]), torch.Size([batch, n])):
        raise ValueError(f"exclude must have shape [{n}] or [{batch}, {n}], got {tuple(exclude.shape)}")
    return exclude.to(device).expand(batch, n)


def greedy_max_coverage(C: torch.Tensor, k: int, *, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Greedy maximisation of `coverage(C, S)` over k columns; indices in *pick order*.

    Exactly the spec's pseudo-code: gain[j] = sum_r max(C[r, j] - best[r], 0), excluded and
    already chosen columns get -inf, argmax breaks ties towards the lowest index (torch.argmax
    returns the first maximum). `C` is `[R, n]` (result `[k]`) or `[B, R, n]` (result `[B, k]`).
    """
    if C.dim() not in (2, 3):
        raise ValueError(f"C must be [R, n] or [B, R, n], got shape {tuple(C.shape)}")
    single = C.dim() == 2
    Cb = C.unsqueeze(0) if single else C
    batch, rows, n = Cb.shape
    if exclude is not None and single and exclude.dim() != 1:
        raise ValueError(f"exclude must have shape [{n}] for a single crop, got {tuple(exclude.shape)}")
    forbidden = _exclude_mask(exclude, batch, n, Cb.device)
    k = _as_budget(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    selectable = n - int(forbidden.sum(dim=-1).max().item())
    if k > selectable:
        raise ValueError(f"k={k} exceeds the number of selectable tokens ({selectable} of n={n})")

    penalty = torch.zeros(batch, n, dtype=Cb.dtype, device=Cb.device)
    penalty.masked_fill_(forbidden, float("-inf"))
    best = Cb.new_zeros(batch, rows, 1)
    picks = torch.empty(batch, k, dtype=torch.long, device=Cb.device)
    for step in range(k):
        gain = (Cb - best).clamp_min_(0).sum(dim=1) + penalty
        j = gain.argmax(dim=-1)
        picks[:, step] = j
        chosen = Cb.gather(2, j.view(batch, 1, 1).expand(batch, rows, 1))
        best = torch.maximum(best, chosen)
        penalty.scatter_(1, j.unsqueeze(1), float("-inf"))
    return picks[0] if single else picks


def mmtok_select(
    text_emb: torch.Tensor,
    vision_proj: torch.Tensor,
    vision_pre: torch.Tensor,
    k: int,
    *,
    alpha: float = 0.5,
    tau_t: float = 0.02,
    tau_v: float = 0.2,
    exclude: torch.Tensor | None = None,
) -> torch.LongTensor:
    """Indices of the k vision tokens MMTok keeps, sorted ascending (original spatial order).

    text_emb:    `[m, D]` (shared) or `[B, m, D]`: rows of the LLM input-embedding table for the
                 cleaned question's sub-words.
    vision_proj: `[n, D]` or `[B, n, D]`: projected vision tokens (what the LLM would receive).
    vision_pre:  `[n, Dv]` or `[B, n, Dv]`: the pre-projector CLIP features, CLS removed.
    exclude:     optional boolean `[n]` or `[B, n]`; True columns are never chosen.

    Returns `[k]` for 2-D vision inputs and `[B, k]` for 3-D ones (long, on the input device).
    Defaults are the LLaVA settings (alpha 0.5, tau_t 0.02, tau_v 0.2).
    """
    C = build_coverage_matrix(text_emb, vision_proj, vision_pre, alpha, tau_t, tau_v)
    picks = greedy_max_coverage(C, k, exclude=exclude)
    return picks.sort(dim=-1).values
