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

import numpy as np
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


def _coverage_blocks(
    text_emb: torch.Tensor,
    vision_proj: torch.Tensor,
    vision_pre: torch.Tensor,
    alpha: float,
    tau_t: float,
    tau_v: float,
) -> tuple[torch.Tensor | None, torch.Tensor]:
    """The two blocks of C, float32: P `[..., m, n]` (None when m = 0) and alpha * Q `[..., n, n]`.

    The spec's arithmetic operation for operation (`softmax(x / tau) / n`, then `alpha * q`), with
    every elementwise step in place on the fresh matmul / softmax buffers (no copies).
    """
    _check_shapes(text_emb, vision_proj, vision_pre)
    if tau_t <= 0 or tau_v <= 0:
        raise ValueError(f"temperatures must be positive, got tau_t={tau_t}, tau_v={tau_v}")
    m, n = text_emb.shape[-2], vision_proj.shape[-2]
    p = None
    if m:
        t, v = _unit_float32(text_emb), _unit_float32(vision_proj)
        # A 2-D question broadcasts over the crops.
        p = torch.softmax(torch.matmul(t, v.mT).div_(tau_t), dim=-1).div_(m)
    w = _unit_float32(vision_pre)
    q = torch.softmax(torch.matmul(w, w.mT).div_(tau_v), dim=-1).div_(n).mul_(alpha)
    return p, q


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

    Returns `[m + n, n]` for 2-D vision inputs and `[B, m + n, n]` for 3-D ones, equal to the
    textbook `cat([P, alpha * Q])` bit for bit. `m = 0` (a question with no text at all) is
    allowed and leaves only the vision-vision term. `mmtok_select` does not build it on a CPU:
    its greedy reads the two blocks' columns (`_coverage_columns`).
    """
    p, q = _coverage_blocks(text_emb, vision_proj, vision_pre, alpha, tau_t, tau_v)
    return q if p is None else torch.cat([p.expand(*q.shape[:-2], *p.shape[-2:]), q], dim=-2)


def _coverage_columns(p: torch.Tensor | None, q: torch.Tensor) -> np.ndarray:
    """C stored column-major, `Ct[..., j, :]` = column j of C, as one contiguous float32 array
    (`[B, n, m + n]`): each block transposed straight into place, C itself never built."""
    q = q.reshape(-1, *q.shape[-2:])
    batch, n, _ = q.shape
    m = 0 if p is None else p.shape[-2]
    Ct = np.empty((batch, n, m + n), dtype=np.float32)
    if p is not None:
        Ct[:, :, :m] = p.numpy().swapaxes(-1, -2)  # broadcasts a shared question over the crops
    Ct[:, :, m:] = q.numpy().swapaxes(-1, -2)
    return Ct


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


# Lazy greedy: columns rescored together when the best bound's own rescore does not decide.
LAZY_BLOCK = 16
METHODS = ("auto", "dense", "lazy")


def _gains(Ct: np.ndarray, best: np.ndarray) -> np.ndarray:
    """gain[j] = sum_r max(C[r, j] - best[r], 0) for the columns stored as rows of `Ct`
    (`[..., c, R]`, one column or many; `best` `[R]`, or `[B, 1, R]` for `[B, c, R]`).

    The CPU greedy's float arithmetic, shared by both variants. numpy sums each contiguous row
    on its own with one fixed (pairwise) order that depends only on R, not on the row's address
    or on the rows beside it, so a column has the same gain whether it is scored with all n
    columns, a few, or alone. As `best` only grows, every term only shrinks, and float
    subtraction, clamping and a fixed-order sum are monotone: a gain computed earlier is an exact
    upper bound of the same column's gain later (submodularity, holding in float32 too).
    """
    terms = np.subtract(Ct, best)
    np.maximum(terms, 0, out=terms)
    return terms.sum(axis=-1)


def _first_gains(Ct: np.ndarray) -> np.ndarray:
    """`_gains(Ct, 0)` (step 1, `best` = 0), one pass cheaper: x - 0 is x exactly."""
    return np.maximum(Ct, 0).sum(axis=-1)


def _dense_greedy_cpu(Ct: np.ndarray, k: int, forbidden: np.ndarray) -> np.ndarray:
    """The spec's greedy on `Ct` `[B, n, R]`: every step scores every column of every crop."""
    batch, _, rows = Ct.shape
    best = np.zeros((batch, 1, rows), dtype=Ct.dtype)
    dead = forbidden.copy()
    picks = np.empty((batch, k), dtype=np.int64)
    crops = np.arange(batch)
    for step in range(k):
        gain = _gains(Ct, best) if step else _first_gains(Ct)
        gain[dead] = -np.inf
        j = gain.argmax(axis=-1)  # first maximum: ties to the lowest index
        picks[:, step] = j
        dead[crops, j] = True
        np.maximum(best[:, 0], Ct[crops, j], out=best[:, 0])
    return picks


def _lazy_greedy_cpu(Ct: np.ndarray, k: int, forbidden: np.ndarray, first: np.ndarray, block: int) -> list[int]:
    """The dense greedy's picks for one crop (`Ct` `[n, R]`), rescoring few columns per step.

    `first` holds every column's step-1 gain. `bounds` holds, per column, its gain at some
    earlier step: an exact upper bound of its gain now (see `_gains`; -inf once picked or
    excluded), and `fresh` marks the bounds computed since the last pick. Whenever the first
    maximum of the bounds is fresh, no column can beat it on (gain, -index) (one left of it has
    a smaller bound, one right of it at most an equal one): it is the dense greedy's pick. If it
    is stale, it is rescored alone; if that does not settle the step, the `block` columns of
    largest bound are rescored together, and if even that does not, the best fresh gain g is a
    lower bound of the step's winner, so only the columns whose bound reaches g can beat it: all
    of them are rescored, after which the first maximum is fresh. Picks are the dense greedy's,
    bit for bit; most steps score one or a few columns instead of n.
    """
    n = Ct.shape[0]
    bounds = first.copy()
    bounds[forbidden] = -np.inf
    fresh = np.zeros(n, dtype=bool)
    best = np.zeros(Ct.shape[1], dtype=Ct.dtype)
    avail = n - int(forbidden.sum())
    picks: list[int] = []
    j = int(bounds.argmax())  # step 1: every bound is a fresh gain
    while True:
        picks.append(j)
        bounds[j] = -np.inf
        avail -= 1
        if len(picks) == k:
            return picks
        np.maximum(best, Ct[j], out=best)
        fresh[:] = False
        j = int(bounds.argmax())
        bounds[j] = _gains(Ct[j], best)
        fresh[j] = True
        j = int(bounds.argmax())
        if fresh[j]:
            continue
        size = min(block, avail)
        top = np.argpartition(bounds, n - size)[n - size :] if size < n else np.arange(n)
        gains = _gains(Ct[top], best)
        bounds[top] = gains
        fresh[top] = True
        j = int(bounds.argmax())
        if fresh[j]:
            continue
        cand = np.flatnonzero(bounds >= bounds[fresh].max())
        bounds[cand] = _gains(Ct[cand], best)
        fresh[cand] = True
        j = int(bounds.argmax())


def _greedy_cpu(Ct: np.ndarray, k: int, forbidden: np.ndarray, method: str) -> torch.Tensor:
    """CPU greedy picks `[B, k]` on `Ct` `[B, n, R]`, in numpy: no torch dispatch in the small steps."""
    if method == "dense":
        picks = _dense_greedy_cpu(Ct, k, forbidden)
    else:
        first = _first_gains(Ct)  # step 1 of every crop at once
        picks = np.array([_lazy_greedy_cpu(Ct[b], k, forbidden[b], first[b], LAZY_BLOCK) for b in range(len(Ct))])
    return torch.from_numpy(picks.reshape(len(Ct), k))


def _dense_greedy(C: torch.Tensor, k: int, forbidden: torch.Tensor) -> torch.Tensor:
    """The spec's greedy in torch, all crops at once (`C`: `[B, R, n]`): the non-CPU variant.

    The spec's plain operations (gains summed over C's rows), k steps of a handful of large
    kernels and no host synchronisation inside the loop: on a GPU a step costs about its kernel
    launches whatever n is.
    """
    batch, rows, n = C.shape
    penalty = torch.zeros(batch, n, dtype=C.dtype, device=C.device)
    penalty.masked_fill_(forbidden, float("-inf"))
    best = C.new_zeros(batch, rows, 1)
    picks = torch.empty(batch, k, dtype=torch.long, device=C.device)
    for step in range(k):
        j = ((C - best).clamp_min_(0).sum(dim=1) + penalty).argmax(dim=-1)  # first maximum: lowest index
        picks[:, step] = j
        best = torch.maximum(best, C.gather(2, j.view(batch, 1, 1).expand(batch, rows, 1)))
        penalty.scatter_(1, j.unsqueeze(1), float("-inf"))
    return picks


def _check_method(method: str, device: torch.device) -> str:
    """The greedy variant to run: "cpu-dense", "cpu-lazy" or "dense" (torch)."""
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if device.type == "cpu":
        return "cpu-dense" if method == "dense" else "cpu-lazy"
    if method == "lazy":
        raise ValueError(f"method 'lazy' runs on CPU tensors; on {device.type} use 'auto' or 'dense'")
    return "dense"


def _prepare(k: object, exclude: torch.Tensor | None, batch: int, n: int, single: bool, device) -> tuple:
    """Checked (k, forbidden `[batch, n]` boolean mask)."""
    if exclude is not None and single and exclude.dim() != 1:
        raise ValueError(f"exclude must have shape [{n}] for a single crop, got {tuple(exclude.shape)}")
    forbidden = _exclude_mask(exclude, batch, n, device)
    return _check_budget(k, forbidden, n), forbidden


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

    `method`: `"dense"` scores every column at every step, batched over crops; `"lazy"` rescores
    only the columns that can still win (`_lazy_greedy_cpu`, CPU only). On CPU both run in numpy
    with one gain arithmetic (`_gains`: per column a float32 sum in row order), so they return
    the same picks, bit for bit; `"auto"` (default) is lazy there, the faster at every budget.
    On other devices `"auto"` is the torch dense greedy (the spec's operations, k steps of a few
    large kernels: there a step costs its launches, not its size).
    """
    if C.dim() not in (2, 3):
        raise ValueError(f"C must be [R, n] or [B, R, n], got shape {tuple(C.shape)}")
    single = C.dim() == 2
    C3 = C.unsqueeze(0) if single else C
    variant = _check_method(method, C3.device)
    k, forbidden = _prepare(k, exclude, C3.shape[0], C3.shape[2], single, C3.device)
    if variant == "dense":
        picks = _dense_greedy(C3, k, forbidden)
    else:
        if C3.dtype not in (torch.float32, torch.float64):
            C3 = C3.float()  # numpy has no bfloat16
        Ct = np.ascontiguousarray(C3.detach().numpy().swapaxes(-1, -2))
        picks = _greedy_cpu(Ct, k, forbidden.numpy(), variant[4:])
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
    single = vision_proj.dim() == 2
    variant = _check_method(method, vision_proj.device)
    p, q = _coverage_blocks(text_emb, vision_proj, vision_pre, alpha, tau_t, tau_v)
    n = q.shape[-1]
    batch = 1 if single else q.shape[0]
    k, forbidden = _prepare(k, exclude, batch, n, single, vision_proj.device)
    if variant == "dense":
        C = q if p is None else torch.cat([p.expand(*q.shape[:-2], *p.shape[-2:]), q], dim=-2)
        picks = _dense_greedy(C.reshape(batch, -1, n), k, forbidden)
    else:
        picks = _greedy_cpu(_coverage_columns(p, q), k, forbidden.numpy(), variant[4:])
    picks = picks.sort(dim=-1).values
    return picks[0] if single else picks
