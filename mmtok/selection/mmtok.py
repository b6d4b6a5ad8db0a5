"""MMTok: greedy multimodal coverage maximisation over vision tokens.

The objective (docs/mmtok.md, "The objective") rewards a subset of vision tokens for covering both the question
(text-vision softmax similarities) and the image itself (vision-vision softmax similarities). Both
terms are facility-location functions, hence monotone submodular, so the greedy below is within
(1 - 1/e) of the optimum. Everything here is pure array code; model wiring lives elsewhere.

Shapes: a single crop uses 2-D inputs; a batch of crops uses 3-D vision inputs with either one
shared question `[m, D]` or one per crop `[B, m, D]` (a tiling family selects on up to five crops per
request). The similarity matmuls and softmaxes run in torch with the authors' release's arithmetic.
The greedy has four variants with identical picks: the reference dense greedy (docs/mmtok.md) in torch (batched over
crops; the default off the CPU), and on CPUs, one crop at a time, an incremental one that rewrites
only the rows a pick changes and sums them with the dense greedy's own reduction, the same in C
(coverage_greedy.c, built at first use by `native.py`; the default where a C compiler is, the
incremental one elsewhere), and an exact lazy greedy in numpy (opt-in). docs/speed.md has the
measurements behind the choice.
"""

from __future__ import annotations

import math
import operator

import numpy as np
import torch
import torch.nn.functional as F

from mmtok.selection import native

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
    # The reference definition normalises in the input dtype (what the authors' fp16 pipeline does) and only then
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

    One pass per block, straight into the output (no `cat`): each softmax writes its rows of C
    and the divisions and the alpha scale run in place there. The arithmetic is the authors'
    release's, operation for operation (similarities times the float `1 / tau`, softmax, divided by
    m or n, then times alpha), so on the same machine C equals their `cat([P, Q * alpha])` bit for
    bit, not just closely: `x * (1 / 0.02)` and `x / 0.02` can differ in the last bit, and on
    features whose greedy steps are near-ties such a bit can change a pick.
    """
    _check_shapes(text_emb, vision_proj, vision_pre)
    if tau_t <= 0 or tau_v <= 0:
        raise ValueError(f"temperatures must be positive, got tau_t={tau_t}, tau_v={tau_v}")
    m, n = text_emb.shape[-2], vision_proj.shape[-2]
    out = torch.empty(*vision_proj.shape[:-2], m + n, n, dtype=torch.float32, device=vision_proj.device)
    if m:
        t, v = _unit_float32(text_emb), _unit_float32(vision_proj)
        text_vision = torch.matmul(t, v.mT).mul_(1.0 / tau_t)  # a 2-D question broadcasts over the crops
        torch.softmax(text_vision, dim=-1, out=out[..., :m, :]).div_(m)
    w = _unit_float32(vision_pre)
    torch.softmax(torch.matmul(w, w.mT).mul_(1.0 / tau_v), dim=-1, out=out[..., m:, :]).div_(n).mul_(alpha)
    return out


def _coverage_columns(C: torch.Tensor) -> np.ndarray:
    """C (`[R, n]` or `[B, R, n]`, CPU) stored column-major as one contiguous array `[B, n, R]`:
    `Ct[b, j]` = column j of crop b's C. float32 and float64 are kept, others widened to float32."""
    if C.dtype not in (torch.float32, torch.float64):
        C = C.float()  # numpy has no bfloat16
    C = C.detach().reshape(-1, *C.shape[-2:])
    return np.ascontiguousarray(C.numpy().swapaxes(-1, -2))


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


# Lazy greedy: columns rescored together per step (one [LAZY_BLOCK, R] gather).
LAZY_BLOCK = 16
# The greedy variants (`greedy_max_coverage`); "auto" chooses by device (`_variant`). The measured
# reasons are in docs/speed.md ("Path choice").
METHODS = ("auto", "dense", "incremental", "lazy", "compiled")
# The variants that run in numpy or C on the CPU, and the dtypes they take as they are.
_CPU_ONLY = ("incremental", "lazy", "compiled")
_NUMPY_DTYPES = (torch.float32, torch.float64)


def _split_sum(terms: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(text part, vision part, gain) of gain terms `[..., c, R]`: the sums over the m text rows
    and over the n vision rows, and the gain, their float32 sum."""
    vision = terms[..., m:].sum(axis=-1)
    if not m:
        return np.zeros_like(vision), vision, vision.copy()
    text = terms[..., :m].sum(axis=-1)
    return text, vision, text + vision


def _gains(Ct: np.ndarray, best: np.ndarray, m: int) -> np.ndarray:
    """gain[j] = sum_r max(C[r, j] - best[r], 0) for the columns stored as rows of `Ct`
    (`[..., c, R]`, one column or many; `best` `[R]`, or `[B, 1, R]` for `[B, c, R]`); the
    first m rows of C are the text rows.

    The CPU greedy's float arithmetic, shared by both variants: the text rows and the vision rows
    are summed separately, each by numpy's pairwise sum over its contiguous segment (an order
    that depends only on the segment's length, not on its address or on the rows beside it), and
    the two sums added. So a column has the same gain whether it is scored with all n columns, a
    few, or alone. As `best` only grows, every term only shrinks, and float subtraction,
    clamping, fixed-order sums and the final addition are monotone: a gain computed earlier is an
    exact upper bound of the same column's gain later (submodularity, holding in float32 too), and
    so is the sum of its current text part and an earlier vision part.
    """
    terms = np.subtract(Ct, best)
    np.maximum(terms, 0, out=terms)
    return _split_sum(terms, m)[2]


def _first_gains(Ct: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(text part, vision part, gain) at step 1 (`best` = 0) of every column; x - 0 is x exactly."""
    return _split_sum(np.maximum(Ct, 0), m)


def _tie_ratio(terms: int) -> float:
    """rho such that no summation order can make a gain below rho * g beat a gain g (float32).

    Each gain is a sum of the same float32 terms, which are >= 0 (the subtraction and clamping
    are elementwise, identical in numpy and torch); only the order of the additions differs. Any
    order of `terms` additions of non-negative floats is within a factor 1 +- gamma of the exact
    sum (gamma = (N - 1) u / (1 - (N - 1) u), u = 2^-24), so two gains in another order can swap
    only if they are within ((1 - gamma) / (1 + gamma))^2 of each other. A further 1e-6 covers
    the rounding of the threshold itself.
    """
    lin = max(terms - 1, 1) * 2.0**-24
    gamma = lin / (1 - lin)
    return ((1 - gamma) / (1 + gamma)) ** 2 * (1 - 1e-6)


def _lazy_greedy_cpu(
    Ct: np.ndarray,
    k: int,
    forbidden: np.ndarray,
    m: int,
    first: tuple[np.ndarray, ...],
    best: np.ndarray,
    exact,
    block: int,
) -> list[int]:
    """The dense greedy's picks for one crop (`Ct` `[n, R]`), rescoring few columns per step.

    Gains are scored in numpy (`_gains`); they equal the torch dense greedy's up to the order of
    the additions. `first` holds every column's step-1 (text part, vision part, gain); `best`
    (`[R]`, updated in place) is this crop's row of the coverage so far; `exact()` returns this
    crop's gains for every column computed exactly as `_dense_greedy` computes them at this step.

    `bounds` holds, per column, an upper bound of its numpy gain now (see `_gains`; -inf once
    picked or excluded), and `stamp` the step at which it was last computed as the gain itself.
    Each step rescores the `block` columns of largest bound together. While the first maximum
    of the bounds is stale, the bounds are tightened for all columns at once (current text part,
    a cheap m-row pass, plus the vision part of its last scoring: after the first picks the
    question's rows are covered and every step-1 bound is loose by its text part) and the
    columns that can still win are rescored in rounds of doubling size, largest bound first (or
    all in one pass once that is most of them). Once the first maximum g is fresh, every column
    whose bound reaches `_tie_ratio` * g is rescored too: if g's column is then alone in that
    band, no order of the additions could make another column win and it is the dense greedy's
    pick; otherwise (a near-tie, where rounding decides) the step is decided by `exact()`, the
    dense greedy's own arithmetic. Picks are the torch dense greedy's, bit for bit; most steps
    score `block` columns, not n.
    """
    n, rows = Ct.shape
    rho = _tie_ratio(rows)
    vision, bounds = first[1].copy(), first[2].copy()
    bounds[forbidden] = -np.inf
    stamp = np.zeros(n, dtype=np.int64)
    buf = np.empty((n, rows), dtype=Ct.dtype)  # reused: large fresh arrays cost page faults
    avail = n - int(forbidden.sum())
    dead = forbidden.copy()

    def score(cols: np.ndarray, step: int) -> None:
        terms = buf[: len(cols)]
        np.take(Ct, cols, axis=0, out=terms)
        np.subtract(terms, best, out=terms)
        np.maximum(terms, 0, out=terms)
        _, v, g = _split_sum(terms, m)
        bounds[cols] = g
        vision[cols] = v
        stamp[cols] = step

    def settle(step: int) -> int:
        """The dense greedy's pick at this step, from bounds whose first maximum is fresh."""
        j = int(bounds.argmax())
        near = (bounds >= bounds[j] * rho) & (stamp != step)
        if near.any():
            score(np.flatnonzero(near), step)
            j = int(bounds.argmax())  # every column that could reach the maximum is fresh now
        if bounds[j] == 0 or np.count_nonzero(bounds >= bounds[j] * rho) == 1:
            return j  # a unique winner in any order of additions (all-zero gains: lowest index)
        gains = exact()
        gains[dead] = -np.inf
        return int(gains.argmax())

    picks: list[int] = []
    for step in range(k):
        if step:
            size = min(block, avail)
            score(np.argpartition(bounds, n - size)[n - size :], step)
            if stamp[bounds.argmax()] != step:
                if m:
                    live = (bounds > -np.inf) & (stamp != step)
                    t = np.maximum(Ct[:, :m] - best[:m], 0).sum(axis=-1)
                    bounds[live] = np.minimum(bounds[live], t[live] + vision[live])
                order = np.argsort(bounds)[::-1][:avail]  # live columns, largest bound first
                pos = 0
                while stamp[bounds.argmax()] != step:
                    if 2 * (pos + size) >= avail:  # most columns can still win: score them all, no gather
                        np.subtract(Ct, best, out=buf)
                        np.maximum(buf, 0, out=buf)
                        _, v, g = _split_sum(buf, m)
                        live = bounds > -np.inf
                        bounds[live], vision[live], stamp[live] = g[live], v[live], step
                        break
                    score(order[pos : pos + size], step)
                    pos += size
                    size *= 2
        j = settle(step)
        picks.append(j)
        bounds[j] = -np.inf
        dead[j] = True
        avail -= 1
        np.maximum(best, Ct[j], out=best)
    return picks


def _lazy_greedy(C: torch.Tensor, k: int, forbidden: torch.Tensor, m: int) -> torch.Tensor:
    """`_lazy_greedy_cpu` for every crop of `C` (`[B, R, n]`, CPU, float32 or float64): `[B, k]`."""
    Ct = _coverage_columns(C)
    batch, n, rows = Ct.shape
    best = np.zeros((batch, rows, 1), dtype=Ct.dtype)  # the layout of `_dense_greedy`'s `best`
    best_t = torch.from_numpy(best)

    def exact(b: int):
        # `_dense_greedy`'s gain expression on the same tensors (same shapes, same kernels), so
        # its bits; the other crops' rows of `best` do not enter crop b's sums.
        return lambda: (C - best_t).clamp_min_(0).sum(dim=1)[b].numpy()

    first = _first_gains(Ct, m)  # step 1 of every crop at once
    dead = forbidden.numpy()
    picks = [
        _lazy_greedy_cpu(Ct[b], k, dead[b], m, [x[b] for x in first], best[b, :, 0], exact(b), LAZY_BLOCK)
        for b in range(batch)
    ]
    return torch.tensor(picks, dtype=torch.long)


def _dense_greedy(C: torch.Tensor, k: int, forbidden: torch.Tensor) -> torch.Tensor:
    """The reference greedy (docs/mmtok.md) in torch, all crops at once (`C`: `[B, R, n]`): the non-CPU variant.

    The reference's plain operations (gains summed over C's rows), k steps of a handful of large
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


# The incremental greedy rewrites the whole term matrix (torch, all threads) instead of gathering
# rows (numpy) when more than 1 / FULL_REWRITE of the rows change: per row, a gather costs about
# what 1 / 5 of a whole-matrix pass does at 576 tokens on a 2-core CPU (docs/speed.md).
FULL_REWRITE = 5


def _incremental_greedy(C: torch.Tensor, k: int, forbidden: torch.Tensor) -> torch.Tensor:
    """The dense greedy's picks for one crop (`C` `[R, n]`, CPU, float32 or float64), computed
    with the same reduction, but without rewriting every term at every step.

    A dense step computes the terms `relu(C - best)` `[R, n]` afresh and sums them over the rows
    (three passes over R x n floats, the cost of a dense step on a CPU). Only the rows whose
    coverage `best[r]` a pick raises change their terms, and after the first picks those are few
    (a row's coverage rises when the pick is its best column so far). This greedy keeps the
    terms in one buffer, rewrites only those rows (the same float32 subtraction and clamp,
    elementwise, so the same bits), and sums the buffer with the very torch reduction the dense
    greedy calls (`torch.sum` over dim 0 of a contiguous `[R, n]` tensor: the same kernel, the
    same split over threads, the same order of additions per column). So every gain has the
    dense greedy's bits and the argmax is the same first maximum: the picks equal the dense
    greedy's (and the authors' kernel's) exactly, near-ties included, with no tie logic at all.
    Per step: one reduction pass and a few small numpy calls; in the first steps, where most
    rows change, the whole buffer is rewritten in torch instead (`FULL_REWRITE`), which is the
    dense step minus its allocation.
    """
    Cn = C.numpy()
    rows, n = Cn.shape
    terms_t = torch.clamp_min(C, 0)  # step 1: best = 0, and relu(x - 0) = relu(x)
    terms = terms_t.numpy()
    gain_t = torch.empty(n, dtype=C.dtype)
    gain = gain_t.numpy()
    mask = np.where(forbidden.numpy(), -np.inf, 0).astype(Cn.dtype)
    best_t = torch.zeros(rows, 1, dtype=C.dtype)
    best = best_t.numpy()[:, 0]  # the same memory, as numpy
    picks = np.empty(k, dtype=np.int64)
    for step in range(k):
        torch.sum(terms_t, 0, out=gain_t)
        gain += mask  # -inf on excluded and chosen columns; x + 0 is x
        j = int(gain.argmax())  # the first maximum, as torch.argmax
        picks[step] = j
        mask[j] = -np.inf
        if step + 1 == k:
            break
        column = Cn[:, j]
        raised = np.flatnonzero(column > best)  # best = maximum(best, column) changes these rows only
        if raised.size * FULL_REWRITE > rows:  # many rows (the first picks): the dense step's two
            np.maximum(best, column, out=best)  # passes, multithreaded, beat row gathers
            torch.sub(C, best_t, out=terms_t)
            terms_t.clamp_min_(0)
        elif raised.size:
            best[raised] = column[raised]
            block = Cn[raised]
            np.subtract(block, best[raised, None], out=block)
            np.maximum(block, 0, out=block)
            terms[raised] = block
    return torch.from_numpy(picks)


def _compiled_greedy(C: torch.Tensor, k: int, forbidden: torch.Tensor, lib) -> torch.Tensor:
    """The dense greedy's picks for one crop (`C` `[R, n]`, CPU, float32, contiguous), by the
    compiled kernel `coverage_greedy.c` (`lib`, from `native.load()`).

    The incremental greedy's bookkeeping (a term matrix rewritten only in the rows a pick
    changes), plus exact integer column sums on a fixed grid, also updated only there. A step
    whose winner is certain in any float32 order of the additions (`_tie_ratio`) is decided in C
    without summing anything; any other step returns here and is decided as the incremental
    greedy decides it: the term matrix summed with the dense greedy's own torch reduction, first
    maximum. So the picks are the dense greedy's (and the authors') bit for bit, near-ties
    included. The first step is the incremental greedy's (torch's clamp and sum, on all threads:
    the grid sums are built during the first pick). A matrix holding NaN or infinity goes to
    `_incremental_greedy`.
    """
    rows, n = C.shape
    Cn = C.numpy()
    terms_t = torch.clamp_min(C, 0)  # step 1: best = 0, and relu(x - 0) = relu(x); torch, all threads
    gain_t = torch.sum(terms_t, 0)  # step 1's gains: the dense greedy's own, so step 1 is its pick
    gain = gain_t.numpy()
    if not np.isfinite(gain).all():  # NaN or +inf in C, or sums past float32: not for the grid
        return _incremental_greedy(C, k, forbidden)
    # The grid: every exact column sum is below 2 * max(gain) (float32 sums are within 1e-4 of
    # exact), so with 2^e > 2 * max(gain) every term and grid sum stays below 2^50 + R / 2.
    scale = math.ldexp(1.0, 51 - math.frexp(2.0 * float(gain.max()) or 1.0)[1])
    dead = forbidden.numpy().astype(np.uint8)
    picks = np.empty(k, dtype=np.int64)
    best, sums = np.zeros(rows, dtype=np.float32), np.empty(n, dtype=np.float64)  # sums: the grid sums
    fixed = (Cn.ctypes.data, terms_t.data_ptr(), best.ctypes.data, sums.ctypes.data, dead.ctypes.data)
    fixed += (picks.ctypes.data, gain_t.data_ptr(), rows, n)
    rho = _tie_ratio(rows)
    step = lib.mmtok_run(*fixed, 0, k, scale, rho, 1)
    while step < k:  # a step that rounding could decide: the dense greedy's own sums decide it
        torch.sum(terms_t, 0, out=gain_t)
        step = lib.mmtok_run(*fixed, step, k, scale, rho, 1)
    return torch.from_numpy(picks)


def _check_method(method: str, device: torch.device) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {', '.join(METHODS)}, got {method!r}")
    if method in _CPU_ONLY and device.type != "cpu":
        raise ValueError(f"method {method!r} runs on CPU tensors; on {device.type} use 'auto' or 'dense'")
    if method == "compiled" and native.load() is None:
        raise ValueError(f"method 'compiled' is not available here ({native.unavailable()}); use 'auto'")


def _variant(method: str, device: torch.device, dtype: torch.dtype) -> str:
    """The greedy to run for a checked method on a C of this device and dtype.

    "auto" on a CPU is the compiled greedy (`_compiled_greedy`) for float32 where the kernel could
    be built (`native.load()`), else the incremental greedy (float64 too), one crop at a time:
    the dense greedy's picks bit for bit at a fraction of its passes over memory (on 5 x 576
    crops, batching them into one [5, R, n] dense greedy is slower than crop by crop); for dtypes
    numpy lacks (half, bfloat16) it is the dense greedy, whose picks the others could only match
    after widening to float32. On any other device it is the dense greedy batched over crops (few
    large kernels per step and no host synchronisation: a step costs about its kernel launches).
    docs/speed.md ("Path choice") has the measurements.
    """
    if method != "auto":
        return method
    if device.type != "cpu" or dtype not in _NUMPY_DTYPES:
        return "dense"
    return "compiled" if dtype == torch.float32 and native.load() is not None else "incremental"


def _greedy_crop(C: torch.Tensor, k: int, forbidden: torch.Tensor, variant: str) -> torch.Tensor:
    """One crop (`C` `[R, n]`, CPU, float32 / float64, contiguous) by the compiled or the incremental
    greedy; the compiled kernel is float32 only, so float64 takes the incremental one."""
    lib = native.load() if variant == "compiled" and C.dtype == torch.float32 else None
    return _incremental_greedy(C, k, forbidden) if lib is None else _compiled_greedy(C, k, forbidden, lib)


def _prepare(k: object, exclude: torch.Tensor | None, batch: int, n: int, single: bool, device) -> tuple:
    """Checked (k, forbidden `[batch, n]` boolean mask)."""
    if exclude is not None and single and exclude.dim() != 1:
        raise ValueError(f"exclude must have shape [{n}] for a single crop, got {tuple(exclude.shape)}")
    forbidden = _exclude_mask(exclude, batch, n, device)
    return _check_budget(k, None if exclude is None else forbidden, n), forbidden


def _check_budget(k: object, forbidden: torch.Tensor | None, n: int) -> int:
    k = _as_budget(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    selectable = n if forbidden is None else n - int(forbidden.sum(dim=-1).max().item())
    if k > selectable:
        raise ValueError(f"k={k} exceeds the number of selectable tokens ({selectable} of n={n})")
    return k


def greedy_max_coverage(
    C: torch.Tensor, k: int, *, exclude: torch.Tensor | None = None, method: str = "auto", text_rows: int = 0
) -> torch.Tensor:
    """Greedy maximisation of `coverage(C, S)` over k columns; indices in *pick order*.

    Exactly the reference pseudo-code (docs/mmtok.md): gain[j] = sum_r max(C[r, j] - best[r], 0), excluded and
    already chosen columns get -inf, argmax breaks ties towards the lowest index (torch.argmax
    returns the first maximum). `C` is `[R, n]` (result `[k]`) or `[B, R, n]` (result `[B, k]`).

    `method`:
    - `"dense"`: the reference greedy in torch, batched over crops (every step scores every column;
      few large kernels per step, no host synchronisation: the choice on GPUs). On one crop its
      operations are the authors' TorchScript kernel's, so are its picks.
    - `"incremental"` (CPU only): the dense greedy one crop at a time, rewriting only the rows of
      the term matrix a pick changes and summing it with the dense greedy's own reduction
      (`_incremental_greedy`): the same gains bit for bit, so the same picks, per crop.
    - `"lazy"` (CPU only): rescores only the columns that can still win (`_lazy_greedy_cpu`), in
      numpy, and returns exactly `"dense"`'s picks in the same order: where its own float sums
      leave a near-tie that rounding could decide, it asks the dense greedy's arithmetic.
      `text_rows` (MMTok's m; `mmtok_select` passes it) only helps its bounds.
    - `"compiled"` (CPU only, where a C compiler is: `native.py`): the incremental greedy's
      bookkeeping in C, deciding in C every step whose winner no float32 order of additions could
      change and asking the dense greedy's own torch reduction for the others (`_compiled_greedy`):
      the same picks, per crop. Its kernel is float32; a float64 C runs the incremental greedy.
    - `"auto"` (default): compiled on CPU float32 where it can be built, else incremental; dense
      elsewhere (`_variant`).
    The CPU-only variants take float32 / float64 as they are and widen other dtypes to float32.
    """
    if C.dim() not in (2, 3):
        raise ValueError(f"C must be [R, n] or [B, R, n], got shape {tuple(C.shape)}")
    if not 0 <= text_rows <= C.shape[-2]:
        raise ValueError(f"text_rows must be in [0, {C.shape[-2]}], got {text_rows}")
    single = C.dim() == 2
    C3 = C.unsqueeze(0) if single else C
    _check_method(method, C3.device)
    k, forbidden = _prepare(k, exclude, C3.shape[0], C3.shape[2], single, C3.device)
    variant = _variant(method, C3.device, C3.dtype)
    if variant == "dense":
        picks = _dense_greedy(C3, k, forbidden)
    else:
        if C3.dtype not in _NUMPY_DTYPES:
            C3 = C3.float()  # numpy has no half precision types torch's kernels would match
        if variant == "lazy":
            picks = _lazy_greedy(C3, k, forbidden, text_rows)
        else:
            C3 = C3.detach().contiguous()
            picks = torch.stack([_greedy_crop(C3[b], k, forbidden[b], variant) for b in range(C3.shape[0])])
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
    Defaults are the paper's one-crop settings (alpha 0.5, tau_t 0.02, tau_v 0.2). `method` picks the greedy
    variant (`greedy_max_coverage`). On a CPU the numpy variants build C one crop at a time, as
    the authors' selector does (one 2-D matmul per crop, not one batched matmul: the same BLAS
    calls, so the same bits as theirs, and no slower); the dense variant builds all crops at once.
    """
    _check_method(method, vision_proj.device)
    m = text_emb.shape[-2]
    if vision_proj.dim() == 3 and vision_proj.device.type == "cpu" and method in ("auto", *_CPU_ONLY):
        _check_shapes(text_emb, vision_proj, vision_pre)
        batch, n = vision_proj.shape[:2]
        k, forbidden = _prepare(k, exclude, batch, n, False, vision_proj.device)
        variant = _variant(method, vision_proj.device, torch.float32)  # C is built in float32
        picks = []
        for b in range(batch):
            text = text_emb if text_emb.dim() == 2 else text_emb[b]
            C = build_coverage_matrix(text, vision_proj[b], vision_pre[b], alpha, tau_t, tau_v)
            if variant == "lazy":
                picks.append(greedy_max_coverage(C, k, exclude=forbidden[b], method=method, text_rows=m))
            else:
                picks.append(_greedy_crop(C, k, forbidden[b], variant))
        return torch.stack(picks).sort(dim=-1).values
    C = build_coverage_matrix(text_emb, vision_proj, vision_pre, alpha, tau_t, tau_v)
    return greedy_max_coverage(C, k, exclude=exclude, method=method, text_rows=m).sort(dim=-1).values
