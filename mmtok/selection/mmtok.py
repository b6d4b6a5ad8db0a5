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

The paper's ablations are variants of the one objective (`Objective`, docs/mmtok.md "Variants"): which
coverage terms, raw or softmax-calibrated similarities, an adaptive tau_v, word pooling of the text rows;
MMTok++'s padding exclusion is `exclude` with `fill_excluded`. The defaults are the main text's MMTok, and at
the defaults every function here runs the very same operations as before the variants existed.
"""

from __future__ import annotations

import math
import operator
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from mmtok.selection import native

__all__ = [
    "ADAPTIVE_TAU_V_GRID",
    "Objective",
    "adaptive_tau_v",
    "build_coverage_matrix",
    "coverage",
    "greedy_max_coverage",
    "mmtok_select",
    "pool_words",
]


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


# -- variants of the objective (docs/mmtok.md, "Variants") ------------------------------------------------
TERMS = ("both", "tv", "vv")
SIMILARITIES = ("softmax", "raw")
WORD_POOLINGS = ("none", "mean", "max", "first")
POOLING_STAGES = ("pre", "post")
# The paper's grid for the adaptive tau_v (App. B.1, Table 9), searched inside (tau_t, tau_v].
ADAPTIVE_TAU_V_GRID = (0.05, 0.1, 0.15, 0.2)


@dataclass(frozen=True)
class Objective:
    """Which coverage objective MMTok maximises; the defaults are the paper's main text (Eq. 2).

    - `terms`: "both" (text-vision + alpha * vision-vision), "tv" or "vv" alone (Table 6).
    - `similarity`: "softmax" (each row calibrated over the n vision tokens) or "raw" cosines (Table 6).
      Raw rows are stored as 1 + cosine: for a non-empty S the coverage is Eq. 1's plus a constant, so
      the greedy is Eq. 1's (first pick: the largest row-mean), not the max(0, cosine) that a
      coverage starting at 0 would compute on negative cosines.
    - `adaptive_tau_v`: tau_v chosen per crop from `ADAPTIVE_TAU_V_GRID` (Table 9, `adaptive_tau_v`).
    - `word_pooling`: "none", or one text row per word: "mean", "max" (element-wise) or "first" of its
      sub-word rows (Table 10), at `pooling_stage` "pre" (the embeddings, before the cosine) or
      "post" (the cosine rows, before the softmax).
    """

    terms: str = "both"
    similarity: str = "softmax"
    adaptive_tau_v: bool = False
    word_pooling: str = "none"
    pooling_stage: str = "pre"

    def __post_init__(self) -> None:
        for key, value, valid in (
            ("terms", self.terms, TERMS),
            ("similarity", self.similarity, SIMILARITIES),
            ("word_pooling", self.word_pooling, WORD_POOLINGS),
            ("pooling_stage", self.pooling_stage, POOLING_STAGES),
        ):
            if value not in valid:
                raise ValueError(f"unknown {key} {value!r}; valid: {', '.join(valid)}")
        if not isinstance(self.adaptive_tau_v, bool):
            raise ValueError(f"adaptive_tau_v must be true or false, got {self.adaptive_tau_v!r}")
        if self.pooling_stage != "pre" and self.word_pooling == "none":
            raise ValueError(
                f"pooling_stage={self.pooling_stage!r} pools words: set word_pooling to one of "
                f"{', '.join(WORD_POOLINGS[1:])}"
            )
        if self.adaptive_tau_v and (self.similarity != "softmax" or self.terms == "tv"):
            raise ValueError(
                "adaptive_tau_v chooses the vision-vision softmax temperature: it needs similarity='softmax' "
                f"and terms 'both' or 'vv' (got similarity={self.similarity!r}, terms={self.terms!r})"
            )

    @property
    def text_term(self) -> bool:
        return self.terms != "vv"

    @property
    def vision_term(self) -> bool:
        return self.terms != "tv"


MAIN = Objective()  # the paper's main-text MMTok


def pool_words(rows: torch.Tensor, words: torch.Tensor, how: str) -> torch.Tensor:
    """One row per word: the rows `[m, ...]` of each word pooled by `how` ("mean", "max" element-wise,
    "first"). `words[i]` is row i's word: 0, 1, 2, ... in order, a word's rows contiguous (what a
    word-split tokenisation gives). A mean is computed in float32 and returned in the rows' dtype;
    "max" and "first" are exact in any dtype."""
    if how not in WORD_POOLINGS[1:]:
        raise ValueError(f"unknown word_pooling {how!r}; valid: {', '.join(WORD_POOLINGS[1:])}")
    if words.dim() != 1 or words.shape[0] != rows.shape[0]:
        raise ValueError(f"words must be [{rows.shape[0]}] (one word index per row), got {tuple(words.shape)}")
    if rows.shape[0] == 0:
        return rows
    steps = torch.diff(words.cpu(), prepend=torch.tensor([-1]))
    if int(words[0]) != 0 or not bool(((steps == 0) | (steps == 1)).all()):
        raise ValueError(f"words must count 0, 1, 2, ... with each word's rows contiguous, got {words.tolist()}")
    counts = torch.unique_consecutive(words.cpu(), return_counts=True)[1].tolist()
    groups = rows.split(counts)
    if how == "first":
        return torch.stack([g[0] for g in groups])
    if how == "max":
        return torch.stack([g.amax(dim=0) for g in groups])
    return torch.stack([g.float().mean(dim=0) for g in groups]).to(rows.dtype)


def _text_cosines(text, vision_proj, objective: Objective, words) -> torch.Tensor:
    """The text-vision cosines of one crop `[m', n]` in float32, after the objective's word pooling."""
    pools = objective.word_pooling != "none"
    if pools and words is None:
        raise ValueError("word_pooling needs each text row's word (`words`)")
    if pools and objective.pooling_stage == "pre":
        text = pool_words(text, words, objective.word_pooling)
    cos = torch.matmul(_unit_float32(text), _unit_float32(vision_proj).mT)
    if pools and objective.pooling_stage == "post":
        cos = pool_words(cos, words, objective.word_pooling)
    return cos


def _tau_grid(tau_t: float, tau_v: float) -> tuple[float, ...]:
    grid = tuple(g for g in ADAPTIVE_TAU_V_GRID if tau_t < g <= tau_v)
    if not grid:
        raise ValueError(
            f"adaptive_tau_v searches the grid {', '.join(map(str, ADAPTIVE_TAU_V_GRID))} inside "
            f"(tau_t, tau_v] = ({tau_t}, {tau_v}], which holds none of it"
        )
    return grid


def _choose_tau_v(text_cos: torch.Tensor, vision_cos: torch.Tensor, tau_t: float, tau_v: float) -> float:
    """Table 9's rule on one crop's cosines (see `adaptive_tau_v`)."""
    grid = _tau_grid(tau_t, tau_v)
    text_cos, vision_cos = text_cos.detach(), vision_cos.detach()  # a choice, not a differentiable value
    m, n = text_cos.shape[0], vision_cos.shape[0]
    if m == 0 or n < 2:
        return tau_v  # no text to match, or no second-largest entry: the fixed temperature
    target = torch.softmax(text_cos * (1.0 / tau_t), dim=-1).amax(dim=-1).mean()
    gaps = []
    for tau in grid:
        probs = torch.softmax(vision_cos * (1.0 / tau), dim=-1)
        gaps.append(float((target - probs.topk(2, dim=-1).values[:, 1].mean()).abs()))
    return grid[min(range(len(grid)), key=gaps.__getitem__)]  # the first smallest gap


def adaptive_tau_v(
    text_emb: torch.Tensor,
    vision_proj: torch.Tensor,
    vision_pre: torch.Tensor,
    *,
    tau_t: float,
    tau_v: float = 0.2,
    objective: Objective = MAIN,
    words: torch.Tensor | None = None,
) -> float:
    """Table 9's per-example tau_v for one crop (2-D inputs): the value of `ADAPTIVE_TAU_V_GRID` inside
    (tau_t, tau_v] whose vision-vision softmax has the mean second-largest row entry (the largest
    off-diagonal one) closest to f(N; M^tv'), the mean over the text rows of each softmaxed
    text-vision row's maximum; ties go to the smaller tau (grid order). The text rows are the
    objective's (word pooling applied). With no text rows or a single vision token: `tau_v`."""
    _check_shapes(text_emb, vision_proj, vision_pre)
    if vision_proj.dim() != 2:
        raise ValueError(f"adaptive_tau_v takes one crop ([n, D]), got shape {tuple(vision_proj.shape)}")
    w = _unit_float32(vision_pre)
    return _choose_tau_v(_text_cosines(text_emb, vision_proj, objective, words), w @ w.mT, tau_t, tau_v)


def _variant_matrix(text, vision_proj, vision_pre, alpha, tau_t, tau_v, objective: Objective, words):
    """C of one crop under a non-default objective: the text rows (if the objective has the term),
    then the vision rows (likewise), scaled as in the main objective (1/m, alpha/n)."""
    blocks = []
    text_cos = (
        _text_cosines(text, vision_proj, objective, words) if objective.text_term or objective.adaptive_tau_v else None
    )
    if objective.text_term and text_cos.shape[0]:
        m = text_cos.shape[0]
        if objective.similarity == "raw":
            blocks.append(text_cos.clamp(min=-1).add_(1).div_(m))
        else:
            blocks.append(torch.softmax(text_cos * (1.0 / tau_t), dim=-1).div_(m))
    if objective.vision_term:
        w = _unit_float32(vision_pre)
        vision_cos = torch.matmul(w, w.mT)
        n = vision_cos.shape[0]
        if objective.similarity == "raw":
            blocks.append(vision_cos.clamp(min=-1).add_(1).div_(n).mul_(alpha))
        else:
            if objective.adaptive_tau_v:
                tau_v = _choose_tau_v(text_cos, vision_cos, tau_t, tau_v)
            blocks.append(torch.softmax(vision_cos * (1.0 / tau_v), dim=-1).div_(n).mul_(alpha))
    if not blocks:  # text-vision only and no text at all: no row covers anything
        return torch.zeros(0, vision_proj.shape[-2], dtype=torch.float32, device=vision_proj.device)
    return torch.cat(blocks)


def text_row_count(text_emb: torch.Tensor, objective: Objective = MAIN, words: torch.Tensor | None = None) -> int:
    """Rows of C that come from the text (the first ones): m, the number of words when pooling, 0 for "vv"."""
    if not objective.text_term:
        return 0
    if objective.word_pooling != "none" and words is not None and words.numel():
        return int(words.max()) + 1
    return text_emb.shape[-2]


def build_coverage_matrix(
    text_emb: torch.Tensor,
    vision_proj: torch.Tensor,
    vision_pre: torch.Tensor,
    alpha: float = 0.5,
    tau_t: float = 0.02,
    tau_v: float = 0.2,
    *,
    objective: Objective = MAIN,
    words: torch.Tensor | None = None,
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

    `objective` (default: the main text's) selects a variant (`Objective`); `words` maps each text
    row to its word when the objective pools words. Under a variant the rows are the objective's
    terms in the same order (text rows, then vision rows) with the same scales, built per crop.
    """
    _check_shapes(text_emb, vision_proj, vision_pre)
    if tau_t <= 0 or tau_v <= 0:
        raise ValueError(f"temperatures must be positive, got tau_t={tau_t}, tau_v={tau_v}")
    if objective != MAIN:
        if vision_proj.dim() == 2:
            return _variant_matrix(text_emb, vision_proj, vision_pre, alpha, tau_t, tau_v, objective, words)
        crops = [
            _variant_matrix(
                text_emb if text_emb.dim() == 2 else text_emb[b],
                vision_proj[b],
                vision_pre[b],
                alpha,
                tau_t,
                tau_v,
                objective,
                words,
            )
            for b in range(vision_proj.shape[0])
        ]
        return torch.stack(crops)
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


def _prepare(
    k: object, exclude: torch.Tensor | None, batch: int, n: int, single: bool, device, fill: bool = False
) -> tuple:
    """Checked (k, forbidden `[batch, n]` boolean mask)."""
    if exclude is not None and single and exclude.dim() != 1:
        raise ValueError(f"exclude must have shape [{n}] for a single crop, got {tuple(exclude.shape)}")
    forbidden = _exclude_mask(exclude, batch, n, device)
    return _check_budget(k, None if exclude is None else forbidden, n, fill), forbidden


def _check_budget(k: object, forbidden: torch.Tensor | None, n: int, fill: bool = False) -> int:
    k = _as_budget(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if fill:  # the excluded columns are picked last, after every other one
        if k > n:
            raise ValueError(f"k={k} exceeds the number of tokens n={n}")
        return k
    selectable = n if forbidden is None else n - int(forbidden.sum(dim=-1).max().item())
    if k > selectable:
        raise ValueError(f"k={k} exceeds the number of selectable tokens ({selectable} of n={n})")
    return k


def _fill_excluded(C: torch.Tensor, head: torch.Tensor, k: int, forbidden: torch.Tensor) -> torch.Tensor:
    """One crop (`C` `[R, n]`) whose `head` picks took every allowed column: the greedy goes on over
    the excluded columns (the dense greedy's step, from the coverage of `head`) up to k picks."""
    rows, n = C.shape
    best = C[:, head].amax(dim=1, keepdim=True) if head.numel() else C.new_zeros(rows, 1)
    penalty = torch.zeros(n, dtype=C.dtype, device=C.device)
    penalty.masked_fill_(~forbidden, float("-inf"))  # the allowed columns are all in `head` already
    picks = [head]
    for _ in range(k - head.numel()):
        j = ((C - best).clamp_min_(0).sum(dim=0) + penalty).argmax()  # first maximum: lowest index
        picks.append(j.view(1))
        best = torch.maximum(best, C[:, j].unsqueeze(1))
        penalty[j] = float("-inf")
    return torch.cat(picks)


def greedy_max_coverage(
    C: torch.Tensor,
    k: int,
    *,
    exclude: torch.Tensor | None = None,
    method: str = "auto",
    text_rows: int = 0,
    fill_excluded: bool = False,
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

    `fill_excluded` (MMTok++'s overflow rule): where k exceeds a crop's allowed columns, that crop
    takes all of them (the greedy as above) and then goes on greedily over its excluded columns,
    so it always returns k distinct columns. Where k fits, it changes nothing.
    """
    if C.dim() not in (2, 3):
        raise ValueError(f"C must be [R, n] or [B, R, n], got shape {tuple(C.shape)}")
    if not 0 <= text_rows <= C.shape[-2]:
        raise ValueError(f"text_rows must be in [0, {C.shape[-2]}], got {text_rows}")
    single = C.dim() == 2
    C3 = C.unsqueeze(0) if single else C
    _check_method(method, C3.device)
    k, forbidden = _prepare(k, exclude, C3.shape[0], C3.shape[2], single, C3.device, fill_excluded)
    allowed = (~forbidden).sum(dim=-1).tolist() if fill_excluded else []
    if allowed and min(allowed) < k:
        picks = []
        for b, count in enumerate(allowed):
            head = C3.new_zeros(0, dtype=torch.long)
            if count:
                head = greedy_max_coverage(
                    C3[b], min(k, count), exclude=forbidden[b], method=method, text_rows=text_rows
                )
            picks.append(_fill_excluded(C3[b], head.to(C3.device), k, forbidden[b]) if count < k else head)
        picks = torch.stack(picks)
        return picks[0] if single else picks
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
    objective: Objective = MAIN,
    words: torch.Tensor | None = None,
    fill_excluded: bool = False,
) -> torch.LongTensor:
    """Indices of the k vision tokens MMTok keeps, sorted ascending (original spatial order).

    text_emb:    `[m, D]` (shared) or `[B, m, D]`: rows of the LLM input-embedding table for the
                 cleaned question's sub-words.
    vision_proj: `[n, D]` or `[B, n, D]`: projected vision tokens (what the LLM would receive).
    vision_pre:  `[n, Dv]` or `[B, n, Dv]`: the pre-projector CLIP features, CLS removed.
    exclude:     optional boolean `[n]` or `[B, n]`; True columns are never chosen (with
                 `fill_excluded`: only once every other column is, `greedy_max_coverage`).
    objective:   the coverage objective (`Objective`; default the paper's main text), and `words`
                 (`[m]`, each text row's word) when it pools words.

    Returns `[k]` for 2-D vision inputs and `[B, k]` for 3-D ones (long, on the input device).
    Defaults are the paper's one-crop settings (alpha 0.5, tau_t 0.02, tau_v 0.2). `method` picks the greedy
    variant (`greedy_max_coverage`). On a CPU the numpy variants build C one crop at a time, as
    the authors' selector does (one 2-D matmul per crop, not one batched matmul: the same BLAS
    calls, so the same bits as theirs, and no slower); the dense variant builds all crops at once.
    """
    _check_method(method, vision_proj.device)
    m = text_row_count(text_emb, objective, words)
    fill = fill_excluded
    if vision_proj.dim() == 3 and vision_proj.device.type == "cpu" and method in ("auto", *_CPU_ONLY):
        _check_shapes(text_emb, vision_proj, vision_pre)
        batch, n = vision_proj.shape[:2]
        k, forbidden = _prepare(k, exclude, batch, n, False, vision_proj.device, fill)
        picks = []
        for b in range(batch):
            text = text_emb if text_emb.dim() == 2 else text_emb[b]
            C = build_coverage_matrix(
                text, vision_proj[b], vision_pre[b], alpha, tau_t, tau_v, objective=objective, words=words
            )
            variant = _variant(method, C.device, C.dtype)
            if variant in ("compiled", "incremental") and not fill:  # straight to the crop's greedy
                picks.append(_greedy_crop(C.detach().contiguous(), k, forbidden[b], variant))
            else:
                picks.append(
                    greedy_max_coverage(C, k, exclude=forbidden[b], method=method, text_rows=m, fill_excluded=fill)
                )
        return torch.stack(picks).sort(dim=-1).values
    C = build_coverage_matrix(text_emb, vision_proj, vision_pre, alpha, tau_t, tau_v, objective=objective, words=words)
    picks = greedy_max_coverage(C, k, exclude=exclude, method=method, text_rows=m, fill_excluded=fill)
    return picks.sort(dim=-1).values
