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

__all__ = ["build_coverage_matrix", "coverage", "coverage_columns", "greedy_max_coverage", "mmtok_select"]


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


def coverage_columns(
    text_emb: torch.Tensor,
    vision_proj: torch.Tensor,
    vision_pre: torch.Tensor,
    alpha: float = 0.5,
    tau_t: float = 0.02,
    tau_v: float = 0.2,
) -> torch.Tensor:
    """The coverage matrix stored column-major: `Ct[j]` = column j of C, contiguous.

    `[n, m + n]` for 2-D vision inputs, `[B, n, m + n]` for 3-D ones; `Ct.mT` is
    `build_coverage_matrix`. The greedy reads one candidate column per row of `Ct`, so a gain is a
    contiguous inner sum whose float result does not depend on which other columns are evaluated
    beside it (what makes the lazy greedy equal to the dense one bit for bit).

    One pass per term, written straight into the output: the divisions run in place on fresh
    buffers and the vision-vision block is scaled by alpha while it is transposed into place. The
    arithmetic is the spec's, operation for operation (`softmax(x / tau) / n`, then `alpha * q`),
    so `Ct.mT` equals the textbook `cat([P, alpha * Q])` exactly, not just closely.
    """
    _check_shapes(text_emb, vision_proj, vision_pre)
    if tau_t <= 0 or tau_v <= 0:
        raise ValueError(f"temperatures must be positive, got tau_t={tau_t}, tau_v={tau_v}")
    m, n = text_emb.shape[-2], vision_proj.shape[-2]
    t = _unit_float32(text_emb)
    v = _unit_float32(vision_proj)
    w = _unit_float32(vision_pre)
    out = torch.empty(*vision_proj.shape[:-2], n, m + n, dtype=torch.float32, device=vision_proj.device)
    if m:
        text_vision = torch.matmul(t, v.mT).div_(tau_t)  # a 2-D question broadcasts over the crops
        out[..., :m] = torch.softmax(text_vision, dim=-1).div_(m).mT
    q = torch.softmax(torch.matmul(w, w.mT).div_(tau_v), dim=-1).div_(n)
    torch.mul(q.mT, alpha, out=out[..., m:])
    return out


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

    Returns `[m + n, n]` for 2-D vision inputs and `[B, m + n, n]` for 3-D ones (a transposed view
    of `coverage_columns`, which is how the greedy reads it). `m = 0` (a question with no text at
    all) is allowed and leaves only the vision-vision term.
    """
    return coverage_columns(text_emb, vision_proj, vision_pre, alpha, tau_t, tau_v).mT


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


# Lazy greedy: candidates rescored together per round (one small [LAZY_BLOCK, m + n] op).
LAZY_BLOCK = 16
# "auto" on CPU takes the lazy greedy from this many picks per crop on. Below it the dense steps
# are few and cheap (CPU, LLaVA sizes: 576 -> 16 dense 1.1 ms vs lazy 1.8 ms; 576 -> 192 dense
# 17 ms vs lazy 6 ms; one thread, scripts/bench_selection.py has both side by side).
LAZY_MIN_K = 48
METHODS = ("auto", "dense", "lazy")


def _gains(cols: torch.Tensor, best: torch.Tensor) -> torch.Tensor:
    """gain[j] = sum_r max(C[r, j] - best[r], 0) for the columns stored as rows of `cols`.

    The one place the greedy's float arithmetic lives, shared by both greedy variants. Each gain
    is an independent inner sum over one contiguous row (torch's CPU sum reduces each output
    separately), so a column's gain has the same bits whether it is evaluated with all n columns
    or with a few. As `best` only grows, every term only shrinks, and float subtraction, clamping
    and a fixed-order sum are monotone: a gain computed earlier is an exact upper bound of the
    same column's gain later (submodularity, holding in float32 too).
    """
    return (cols - best).clamp_min_(0).sum(dim=-1)


def _dense_greedy(Ct: torch.Tensor, k: int, forbidden: torch.Tensor) -> torch.Tensor:
    """The spec's greedy, all crops at once: every step scores every column (`Ct`: `[B, n, R]`).

    k steps of a handful of large kernels and no host synchronisation inside the loop: the fast
    variant on a GPU, where a step costs about its kernel launches whatever n is.
    """
    batch, n, rows = Ct.shape
    penalty = torch.zeros(batch, n, dtype=Ct.dtype, device=Ct.device)
    penalty.masked_fill_(forbidden, float("-inf"))
    best = Ct.new_zeros(batch, 1, rows)
    picks = torch.empty(batch, k, dtype=torch.long, device=Ct.device)
    for step in range(k):
        j = (_gains(Ct, best) + penalty).argmax(dim=-1)  # first maximum: ties to the lowest index
        picks[:, step] = j
        best = torch.maximum(best, Ct.gather(1, j.view(batch, 1, 1).expand(batch, 1, rows)))
        penalty.scatter_(1, j.unsqueeze(1), float("-inf"))
    return picks


def _lazy_greedy(Ct: torch.Tensor, k: int, forbidden: torch.Tensor, block: int | None = None) -> list[int]:
    """The dense greedy's picks for one crop (`Ct`: `[n, R]`), scoring few columns per step.

    Stale gains are exact upper bounds (see `_gains`). Step 1 scores every column. Then each round
    sorts the bounds (stable: equal bounds keep index order), scores the `block` best columns with
    fresh gains and picks the best of them (lowest index among equal gains) as long as it beats
    every column outside the block on (gain, -index): a fresh gain above their largest bound, or
    equal to it with a lower index than the first column holding that bound. The dense greedy
    would pick it too. When the block cannot decide, its best fresh gain g is a lower bound of
    the step's winner, so only the columns whose bound reaches g can win: exactly those are
    scored (their fresh gains become their bounds) and the best of them is picked. Picks are the
    dense greedy's, bit for bit, and most steps cost O(block * R) instead of O(n * R).
    """
    n, _ = Ct.shape
    block = LAZY_BLOCK if block is None else block
    neg = float("-inf")
    best = Ct.new_zeros(Ct.shape[1])
    dead = forbidden.clone()
    bounds = _gains(Ct, best).masked_fill_(dead, neg)
    avail = n - int(dead.sum())
    picks: list[int] = []
    pending: list[int] = []  # picked since `bounds` and `dead` were last updated

    def take(j: int, col: torch.Tensor) -> None:
        nonlocal avail
        picks.append(j)
        pending.append(j)
        avail -= 1
        torch.maximum(best, col, out=best)

    def flush() -> None:
        if pending:
            gone = torch.tensor(pending, device=Ct.device)
            bounds.index_fill_(0, gone, neg)
            dead.index_fill_(0, gone, True)
            pending.clear()

    j = int(bounds.argmax())  # step 1 is a dense step: every bound is a fresh gain
    take(j, Ct[j])
    while len(picks) < k:
        flush()
        size = min(block, avail)
        values, order = torch.sort(bounds, descending=True, stable=True)
        head = order[: size + 1].tolist()
        members = head[:size]
        first_out, bound_out = (head[size], float(values[size])) if avail > size else (n, neg)
        cols = Ct[members]
        alive = [True] * size
        while len(picks) < k:
            gains = _gains(cols, best).tolist()
            top = -1  # best alive member on (gain, -index); members are in bound order, not index order
            for p in range(size):
                if alive[p] and (
                    top < 0 or gains[p] > gains[top] or (gains[p] == gains[top] and members[p] < members[top])
                ):
                    top = p
            if top < 0:
                break  # every member picked: new round
            g, j = gains[top], members[top]
            if g > bound_out or (g == bound_out and j < first_out):
                alive[top] = False
                take(j, cols[top])
                continue
            # Undecided. Only columns whose bound reaches g can beat the member holding g.
            flush()
            reach = int((values >= g).sum())
            cand = order[:reach].sort().values  # index order, so argmax breaks ties to the lowest
            fresh = _gains(Ct[cand], best).masked_fill_(dead[cand], neg)
            bounds.index_copy_(0, cand, fresh)
            p = int(fresh.argmax())
            j = int(cand[p])
            take(j, Ct[j])
            break
    return picks


def _greedy_columns(Ct: torch.Tensor, k: int, forbidden: torch.Tensor, method: str) -> torch.Tensor:
    """Greedy picks in pick order for `Ct` `[B, n, R]`; `method` as in `greedy_max_coverage`."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method == "auto":
        method = "lazy" if Ct.device.type == "cpu" and k >= LAZY_MIN_K else "dense"
    if method == "dense":
        return _dense_greedy(Ct, k, forbidden)
    picks = [_lazy_greedy(Ct[b], k, forbidden[b]) for b in range(Ct.shape[0])]
    return torch.tensor(picks, dtype=torch.long, device=Ct.device)


def _check_budget(k: object, forbidden: torch.Tensor, n: int) -> int:
    k = _as_budget(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    selectable = n - int(forbidden.sum(dim=-1).max().item())
    if k > selectable:
        raise ValueError(f"k={k} exceeds the number of selectable tokens ({selectable} of n={n})")
    return k


def greedy_max_coverage(
    C: torch.Tensor, k: int, *, exclude: torch.Tensor | None = None, method: str = "auto"
) -> torch.Tensor:
    """Greedy maximisation of `coverage(C, S)` over k columns; indices in *pick order*.

    Exactly the spec's pseudo-code: gain[j] = sum_r max(C[r, j] - best[r], 0), excluded and
    already chosen columns get -inf, argmax breaks ties towards the lowest index (torch.argmax
    returns the first maximum). `C` is `[R, n]` (result `[k]`) or `[B, R, n]` (result `[B, k]`).

    `method`: `"dense"` scores every column at every step, batched over crops (few large kernels
    per step: the fast one on a GPU); `"lazy"` rescores only the columns that can still win
    (`_lazy_greedy`; the fast one on a CPU, where a step's cost is its arithmetic). Both return
    the same picks, bit for bit. `"auto"` (default) takes lazy on CPU for k >= `LAZY_MIN_K` and
    dense otherwise (always on GPUs: there a dense step costs its kernel launches, not its size).
    """
    if C.dim() not in (2, 3):
        raise ValueError(f"C must be [R, n] or [B, R, n], got shape {tuple(C.shape)}")
    single = C.dim() == 2
    Ct = (C.unsqueeze(0) if single else C).mT.contiguous()  # a no-op for build_coverage_matrix's view
    batch, n, _ = Ct.shape
    if exclude is not None and single and exclude.dim() != 1:
        raise ValueError(f"exclude must have shape [{n}] for a single crop, got {tuple(exclude.shape)}")
    forbidden = _exclude_mask(exclude, batch, n, Ct.device)
    k = _check_budget(k, forbidden, n)
    picks = _greedy_columns(Ct, k, forbidden, method)
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
    method: str = "auto",
) -> torch.LongTensor:
    """Indices of the k vision tokens MMTok keeps, sorted ascending (original spatial order).

    text_emb:    `[m, D]` (shared) or `[B, m, D]`: rows of the LLM input-embedding table for the
                 cleaned question's sub-words.
    vision_proj: `[n, D]` or `[B, n, D]`: projected vision tokens (what the LLM would receive).
    vision_pre:  `[n, Dv]` or `[B, n, Dv]`: the pre-projector CLIP features, CLS removed.
    exclude:     optional boolean `[n]` or `[B, n]`; True columns are never chosen.

    Returns `[k]` for 2-D vision inputs and `[B, k]` for 3-D ones (long, on the input device).
    Defaults are the LLaVA settings (alpha 0.5, tau_t 0.02, tau_v 0.2). `method` picks the greedy
    variant (`greedy_max_coverage`); every method returns the same tokens.
    """
    Ct = coverage_columns(text_emb, vision_proj, vision_pre, alpha, tau_t, tau_v)
    return greedy_max_coverage(Ct.mT, k, exclude=exclude, method=method).sort(dim=-1).values
