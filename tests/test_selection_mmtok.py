"""MMTok coverage matrix and greedy, checked against plain loops written from the spec."""

from __future__ import annotations

import functools
import itertools
import math
import os
import random
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from mmtok.selection import native
from mmtok.selection.mmtok import (
    _coverage_columns,
    _first_gains,
    _gains,
    build_coverage_matrix,
    coverage,
    greedy_max_coverage,
    mmtok_select,
)

_greedy = greedy_max_coverage

# The CPU greedies that must pick exactly what the dense greedy picks: the incremental one (numpy
# and torch, always there) and the compiled one (built at first use; skipped only where no C
# compiler can build it, with the reason).
COMPILED = pytest.param(
    "compiled", marks=pytest.mark.skipif(native.load() is None, reason=f"compiled greedy: {native.unavailable()}")
)
CPU_GREEDIES = ["incremental", COMPILED]


# ---------------------------------------------------------------- reference (spec, explicit loops)
def _unit_rows(x: torch.Tensor) -> list[list[float]]:
    # The spec normalises in the input dtype; only the arithmetic after that is float64 here.
    return F.normalize(x, dim=-1).double().tolist()


def _softmax(row: list[float]) -> list[float]:
    top = max(row)
    exps = [math.exp(v - top) for v in row]
    total = sum(exps)
    return [e / total for e in exps]


def ref_matrix(t, v, w, alpha, tau_t, tau_v) -> list[list[float]]:
    t, v, w = _unit_rows(t), _unit_rows(v), _unit_rows(w)
    m, n = len(t), len(v)
    rows = []
    for i in range(m):
        sims = [sum(a * b for a, b in zip(t[i], v[j])) / tau_t for j in range(n)]
        rows.append([p / m for p in _softmax(sims)])
    for i in range(n):
        sims = [sum(a * b for a, b in zip(w[i], w[j])) / tau_v for j in range(n)]
        rows.append([alpha * q / n for q in _softmax(sims)])
    return rows


# Gains closer than this (relative to the largest gain of the step) are a tie that float32
# arithmetic may break either way: the float64 reference cannot say which pick is "right". Seed 2
# of test_single_crop_matches_reference is such a case by construction of the maths, not by
# chance: m = 0 and n = 2, so every column of C sums to alpha / n exactly (the two softmax rows of
# a symmetric 2x2 similarity sum to 1 column-wise) and both first gains are equal.
TIE_RTOL = 1e-5


def ref_greedy_all(C: list[list[float]], k: int, excluded: set[int]) -> set[tuple[int, ...]]:
    """Every sorted selection the spec's greedy can return, branching only on near-exact ties."""
    n = len(C[0])
    outcomes: set[tuple[int, ...]] = set()

    def step(chosen: list[int], best: list[float]) -> None:
        if len(chosen) == k:
            outcomes.add(tuple(sorted(chosen)))
            return
        gains = {
            j: sum(max(row[j] - b, 0.0) for row, b in zip(C, best))
            for j in range(n)
            if j not in excluded and j not in chosen
        }
        top = max(gains.values())
        tied = [j for j, g in gains.items() if g >= top - TIE_RTOL * max(top, 1e-12)]
        if top <= 0.0:
            tied = tied[:1]  # no gain left: the spec takes the lowest free index, exactly
        for pick in tied:
            step([*chosen, pick], [max(b, row[pick]) for row, b in zip(C, best)])

    step([], [0.0] * len(C))
    return outcomes


def ref_outcomes(t, v, w, k, alpha=0.5, tau_t=0.02, tau_v=0.2, excluded=()) -> set[tuple[int, ...]]:
    return ref_greedy_all(ref_matrix(t, v, w, alpha, tau_t, tau_v), k, set(excluded))


def ref_select(t, v, w, k, alpha=0.5, tau_t=0.02, tau_v=0.2, excluded=()) -> list[int]:
    """The reference pick where it is unique (no near-tie on the way)."""
    (only,) = ref_outcomes(t, v, w, k, alpha, tau_t, tau_v, excluded)
    return list(only)


def _instance(rng: random.Random, gen: torch.Generator, batch: int | None = None, shared_text=True):
    n, m = rng.randint(1, 24), rng.randint(0, 6)
    d, dv = rng.randint(2, 12), rng.randint(2, 10)
    lead = () if batch is None else (batch,)
    text = torch.randn(*(() if shared_text else lead), m, d, generator=gen)
    vis = torch.randn(*lead, n, d, generator=gen)
    pre = torch.randn(*lead, n, dv, generator=gen)
    return text, vis, pre


def _params(rng: random.Random) -> dict:
    return {
        "alpha": rng.choice([0.0, 0.5, 1.0, 2.0]),
        "tau_t": rng.choice([0.01, 0.02, 0.1]),
        "tau_v": rng.choice([0.05, 0.2, 1.0]),
    }


# ---------------------------------------------------------------- coverage matrix
@pytest.mark.parametrize("seed", range(10))
def test_coverage_matrix_matches_loops(seed):
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    t, v, w = _instance(rng, gen)
    p = _params(rng)
    C = build_coverage_matrix(t, v, w, p["alpha"], p["tau_t"], p["tau_v"])
    assert C.dtype == torch.float32 and C.shape == (t.shape[0] + v.shape[0], v.shape[0])
    expected = torch.tensor(ref_matrix(t, v, w, p["alpha"], p["tau_t"], p["tau_v"]), dtype=torch.float64)
    torch.testing.assert_close(C.double(), expected.reshape(C.shape), rtol=1e-5, atol=1e-7)


def test_coverage_matrix_row_sums():
    gen = torch.Generator().manual_seed(0)
    m, n = 5, 12
    C = build_coverage_matrix(
        torch.randn(m, 8, generator=gen),
        torch.randn(n, 8, generator=gen),
        torch.randn(n, 4, generator=gen),
        alpha=0.5,
    )
    torch.testing.assert_close(C[:m].sum(-1), torch.full((m,), 1 / m))
    torch.testing.assert_close(C[m:].sum(-1), torch.full((n,), 0.5 / n))


def test_coverage_matrix_is_the_textbook_matrix_exactly():
    """The in-place build does the authors' release's operations in their order: bit-identical to
    the plain `cat([softmax(t v^T * (1 / tau_t)) / m, softmax(w w^T * (1 / tau_v)) / n * alpha])`,
    batched or not, and the CPU greedy's column-major copy holds exactly C's columns."""
    gen = torch.Generator().manual_seed(7)
    t = torch.randn(5, 32, generator=gen)
    v, w = torch.randn(3, 40, 32, generator=gen), torch.randn(3, 40, 16, generator=gen)
    C = build_coverage_matrix(t, v, w, 0.7, 0.05, 0.3)
    assert C.shape == (3, 45, 40) and C.is_contiguous()
    tu, vu, wu = (F.normalize(x, dim=-1) for x in (t, v, w))
    P = torch.softmax(torch.matmul(tu, vu.mT) * (1 / 0.05), dim=-1) / 5
    Q = torch.softmax(torch.matmul(wu, wu.mT) * (1 / 0.3), dim=-1) / 40
    assert torch.equal(C, torch.cat([P, Q * 0.7], dim=-2))
    Ct = _coverage_columns(C)
    assert Ct.flags.c_contiguous and Ct.dtype == np.float32
    assert np.array_equal(Ct, C.mT.numpy())
    P = torch.softmax(tu @ vu[1].T * (1 / 0.05), dim=-1) / 5
    Q = torch.softmax(wu[1] @ wu[1].T * (1 / 0.3), dim=-1) / 40
    assert torch.equal(build_coverage_matrix(t, v[1], w[1], 0.7, 0.05, 0.3), torch.cat([P, Q * 0.7]))
    C = build_coverage_matrix(t[:0], v[1], w[1], 0.7, 0.05, 0.3)  # m = 0: the vision-vision block only
    assert torch.equal(C, Q * 0.7)
    assert np.array_equal(_coverage_columns(C)[0], C.T.numpy())


def test_coverage_matrix_normalises_in_input_dtype():
    gen = torch.Generator().manual_seed(1)
    t, v, w = (torch.randn(*s, generator=gen).to(torch.bfloat16) for s in [(3, 16), (7, 16), (7, 8)])
    C = build_coverage_matrix(t, v, w)
    assert C.dtype == torch.float32
    tu, vu, wu = (F.normalize(x, dim=-1).float() for x in (t, v, w))
    P = torch.softmax(tu @ vu.T * (1 / 0.02), dim=-1) / 3
    Q = torch.softmax(wu @ wu.T * (1 / 0.2), dim=-1) / 7
    torch.testing.assert_close(C, torch.cat([P, Q * 0.5]), rtol=0, atol=0)


def test_coverage_value_matches_loops():
    gen = torch.Generator().manual_seed(2)
    C = torch.rand(9, 6, generator=gen)
    S = torch.tensor([4, 1])
    expected = sum(max(C[r, j].item() for j in S.tolist()) for r in range(9))
    assert coverage(C, S).item() == pytest.approx(expected, rel=1e-6)
    assert coverage(C, S[:0]).item() == 0.0
    batched = coverage(C.expand(3, 9, 6), torch.tensor([[4, 1], [1, 4], [0, 0]]))
    assert batched[0].item() == pytest.approx(expected, rel=1e-6)
    assert batched[1].item() == pytest.approx(expected, rel=1e-6)
    assert batched[2].item() == pytest.approx(C[:, 0].sum().item(), rel=1e-6)


# ---------------------------------------------------------------- selection vs reference
def _seeded_case(seed: int):
    """A random instance with (every third seed) excluded tokens, a budget and parameters."""
    rng, gen = random.Random(seed), torch.Generator().manual_seed(seed)
    t, v, w = _instance(rng, gen)
    n = v.shape[0]
    excluded = set(rng.sample(range(n), rng.randint(0, n - 1))) if seed % 3 == 0 else set()
    exclude = torch.tensor([j in excluded for j in range(n)]) if excluded else None
    k = rng.randint(1, n - len(excluded))
    return t, v, w, excluded, exclude, k, _params(rng)


@pytest.mark.parametrize("seed", range(50))
def test_single_crop_matches_reference(seed):
    t, v, w, excluded, exclude, k, p = _seeded_case(seed)
    got = mmtok_select(t, v, w, k, exclude=exclude, **p)
    assert got.dtype == torch.long and got.shape == (k,)
    assert tuple(got.tolist()) in ref_outcomes(t, v, w, k, excluded=excluded, **p)


def test_seed_2_is_an_exact_tie_and_either_pick_is_accepted():
    rng, gen = random.Random(2), torch.Generator().manual_seed(2)
    t, v, w = _instance(rng, gen)
    assert t.shape[0] == 0 and v.shape[0] == 2
    p = _params(rng)
    C = build_coverage_matrix(t, v, w, p["alpha"], p["tau_t"], p["tau_v"]).double()
    torch.testing.assert_close(C.sum(0), torch.full((2,), p["alpha"] / 2, dtype=torch.float64))
    assert ref_outcomes(t, v, w, 1, **p) == {(0,), (1,)}


@pytest.mark.parametrize("seed", range(50))
def test_reference_rejects_a_wrong_pick(seed):
    """The tie tolerance does not make the reference lenient: it accepts only the selections that
    near-tied gains allow, so swapping one picked index for a free one that no tie allows fails."""
    t, v, w, excluded, exclude, k, p = _seeded_case(seed)
    n = v.shape[0]
    got = mmtok_select(t, v, w, k, exclude=exclude, **p).tolist()
    outcomes = ref_outcomes(t, v, w, k, excluded=excluded, **p)
    selectable = n - len(excluded)
    if k == selectable:
        assert outcomes == {tuple(got)}  # only one k-subset exists
        return
    if seed == 2:
        assert outcomes == {(0,), (1,)}  # the exact tie: both answers, nothing else exists
        return
    assert len(outcomes) < math.comb(selectable, k)  # never "anything goes"
    swaps = {tuple(sorted([f, *got[:i], *got[i + 1 :]])) for i in range(k) for f in range(n)}
    swaps -= {tuple(got)}
    swaps = {s for s in swaps if not set(s) & excluded}
    assert swaps - outcomes, "every one-index swap was accepted"


@pytest.mark.parametrize("seed", range(20))
@pytest.mark.parametrize("shared_text", [True, False])
def test_batched_matches_reference_and_per_sample(seed, shared_text):
    rng, gen = random.Random(1000 + seed), torch.Generator().manual_seed(1000 + seed)
    batch = rng.randint(1, 4)
    t, v, w = _instance(rng, gen, batch=batch, shared_text=shared_text)
    n = v.shape[1]
    exclude = None
    if seed % 2:
        exclude = torch.rand(batch, n, generator=gen) < 0.3
        exclude[:, 0] = False  # keep at least one selectable column per crop
    selectable = n - (0 if exclude is None else int(exclude.sum(-1).max()))
    k = rng.randint(1, selectable)
    p = _params(rng)
    got = mmtok_select(t, v, w, k, exclude=exclude, **p)
    assert got.shape == (batch, k)
    for b in range(batch):
        tb = t if shared_text else t[b]
        eb = None if exclude is None else exclude[b]
        excluded = set() if eb is None else set(eb.nonzero().flatten().tolist())
        assert tuple(got[b].tolist()) in ref_outcomes(tb, v[b], w[b], k, excluded=excluded, **p)
        assert torch.equal(got[b], mmtok_select(tb, v[b], w[b], k, exclude=eb, **p))


def test_shared_exclude_mask_broadcasts_over_batch():
    gen = torch.Generator().manual_seed(3)
    t, v, w = (
        torch.randn(4, 8, generator=gen),
        torch.randn(3, 10, 8, generator=gen),
        torch.randn(3, 10, 5, generator=gen),
    )
    exclude = torch.zeros(10, dtype=torch.bool)
    exclude[[0, 2, 4, 6]] = True
    got = mmtok_select(t, v, w, 6, exclude=exclude)
    assert torch.equal(got, torch.tensor([[1, 3, 5, 7, 8, 9]] * 3))


@pytest.mark.parametrize("seed", range(60))
def test_greedy_within_one_minus_inv_e_of_optimum(seed):
    rng, gen = random.Random(5000 + seed), torch.Generator().manual_seed(5000 + seed)
    n, m, k = rng.randint(2, 10), rng.randint(0, 5), rng.randint(1, 4)
    k = min(k, n)
    t, v, w = (
        torch.randn(m, 6, generator=gen),
        torch.randn(n, 6, generator=gen),
        torch.randn(n, 4, generator=gen),
    )
    p = _params(rng)
    C = build_coverage_matrix(t, v, w, p["alpha"], p["tau_t"], p["tau_v"]).double()
    greedy = coverage(C, mmtok_select(t, v, w, k, **p)).item()
    optimum = max(coverage(C, torch.tensor(S)).item() for S in itertools.combinations(range(n), k))
    assert greedy <= optimum + 1e-12
    assert greedy >= (1 - 1 / math.e) * optimum - 1e-12


# ---------------------------------------------------------------- lazy greedy == dense greedy, bit for bit
def _wide_range(gen: torch.Generator, *shape: int) -> np.ndarray:
    # Magnitudes over 30 decades, so any change of summation order shows in the last bits.
    x = torch.rand(*shape, generator=gen) ** 4 * 10.0 ** torch.randint(-30, 2, shape, generator=gen)
    return x.float().numpy()


@pytest.mark.parametrize("m", [0, 1, 3, 6, 9])
def test_gain_of_a_column_does_not_depend_on_its_neighbours(m):
    """What the lazy greedy's exactness rests on: a column's gain has the same bits whether it is
    scored with all columns, a few, or alone, and wherever its copy sits in memory (any shape and
    alignment the two variants use)."""
    gen = torch.Generator().manual_seed(8 + m)
    for rows in (9, 16, 31, 127, 128, 129, 137, 582, 2000):
        Ct = _wide_range(gen, 3, 64, rows)
        best = _wide_range(gen, 3, 1, rows) * 0.5
        full = _gains(Ct, best, m)
        assert full.dtype == np.float32 and full.shape == (3, 64)
        assert np.array_equal(_first_gains(Ct, m)[2], _gains(Ct, np.zeros_like(best), m))
        for b in range(3):
            assert np.array_equal(full[b], _gains(Ct[b], best[b, 0], m))
            for j in (0, 5, 63):
                assert _gains(Ct[b, j], best[b, 0], m) == full[b, j]
                for shift in range(1, 17):  # the same column copied to every 4-byte alignment of a cache line
                    buf = np.zeros(rows + 16, dtype=np.float32)
                    buf[shift : shift + rows] = Ct[b, j]
                    assert _gains(buf[shift : shift + rows], best[b, 0], m) == full[b, j]
            for size in (1, 2, 5, 16, 17, 63):
                idx = torch.randperm(64, generator=gen)[:size].numpy()
                assert np.array_equal(_gains(Ct[b, idx], best[b, 0], m), full[b, idx])


@pytest.mark.parametrize("m", [0, 6])
def test_gains_are_upper_bounds_as_best_grows(m):
    """Submodularity in float32: raising `best` never raises a computed gain, nor the sum of the
    current text part and an earlier vision part (the lazy greedy's tightened bound), bit for bit."""
    gen = torch.Generator().manual_seed(9)
    Ct = _wide_range(gen, 50, 300)
    best = np.zeros(300, dtype=np.float32)
    _, vision, previous = _first_gains(Ct, m)
    for j in torch.randperm(50, generator=gen)[:20].tolist():
        np.maximum(best, Ct[j], out=best)
        now = _gains(Ct, best, m)
        text = np.maximum(Ct[:, :m] - best[:m], 0).sum(axis=-1)
        assert (now <= previous).all()
        assert (now <= text + vision).all()
        previous = now


def _lazy_equals_dense(C, k, exclude=None, block=None, text_rows=0):
    """The lazy greedy's picks equal the torch dense greedy's, in the same order."""
    import mmtok.selection.mmtok as mm

    dense = greedy_max_coverage(C, k, exclude=exclude, method="dense", text_rows=text_rows)
    if block is None:
        lazy = greedy_max_coverage(C, k, exclude=exclude, method="lazy", text_rows=text_rows)
    else:
        saved, mm.LAZY_BLOCK = mm.LAZY_BLOCK, block
        try:
            lazy = greedy_max_coverage(C, k, exclude=exclude, method="lazy", text_rows=text_rows)
        finally:
            mm.LAZY_BLOCK = saved
    assert torch.equal(lazy, dense), (lazy.tolist(), dense.tolist())  # same picks in the same order
    return dense


@pytest.mark.parametrize("seed", range(40))
def test_lazy_equals_dense_on_coverage_matrices(seed):
    rng, gen = random.Random(7000 + seed), torch.Generator().manual_seed(7000 + seed)
    batch = rng.choice([None, 1, 3])
    n, m = rng.randint(1, 80), rng.randint(0, 8)
    d, dv = rng.randint(2, 32), rng.randint(2, 16)
    lead = () if batch is None else (batch,)
    t = torch.randn(m, d, generator=gen)
    v, w = torch.randn(*lead, n, d, generator=gen), torch.randn(*lead, n, dv, generator=gen)
    p = _params(rng)
    C = build_coverage_matrix(t, v, w, p["alpha"], p["tau_t"], p["tau_v"])
    exclude = None
    if seed % 3 == 0 and n > 1:
        exclude = torch.rand(*lead, n, generator=gen) < 0.3
        exclude[..., 0] = False
    selectable = n - (0 if exclude is None else int(exclude.sum(-1).max()))
    k = rng.randint(1, selectable)
    _lazy_equals_dense(C, k, exclude, block=rng.choice([None, 1, 2, 4]), text_rows=m)
    assert torch.equal(
        mmtok_select(t, v, w, k, exclude=exclude, method="lazy", **p),
        mmtok_select(t, v, w, k, exclude=exclude, method="dense", **p),
    )


@pytest.mark.parametrize("seed", range(30))
def test_lazy_equals_dense_with_ties_and_zero_gains(seed):
    """Duplicated columns (exact ties), dominated columns (zero gains), few distinct values
    (ties between bounds at the block's edge): the lowest index must win every time."""
    gen = torch.Generator().manual_seed(8000 + seed)
    rng = random.Random(8000 + seed)
    rows, distinct = rng.randint(1, 12), rng.randint(1, 6)
    base = torch.randint(0, 4, (rows, distinct), generator=gen).float() / 4
    n = rng.randint(distinct, 40)
    cols = torch.cat([torch.arange(distinct), torch.randint(0, distinct, (n - distinct,), generator=gen)])
    C = base[:, cols[torch.randperm(n, generator=gen)]]
    exclude = (torch.rand(n, generator=gen) < 0.2) if seed % 2 else None
    if exclude is not None:
        exclude[0] = False
    k = rng.randint(1, n - (0 if exclude is None else int(exclude.sum())))
    for block in (1, 2, 3, 16):
        for text_rows in {0, rows // 2, rows}:
            _lazy_equals_dense(C, k, exclude, block=block, text_rows=text_rows)


@pytest.mark.parametrize("seed", range(4))
def test_lazy_equals_dense_at_llava_sizes(seed):
    gen = torch.Generator().manual_seed(9000 + seed)
    t = torch.randn(6, 256, generator=gen)
    v, w = torch.randn(2, 576, 256, generator=gen), torch.randn(2, 576, 128, generator=gen)
    # Low-rank structure as in real patch features (similar patches), besides pure noise.
    w = w + 3 * torch.randn(2, 8, 128, generator=gen)[:, torch.randint(0, 8, (576,), generator=gen)]
    for k in (4, 64, 192, 575):
        C = build_coverage_matrix(t, v, w)
        _lazy_equals_dense(C, k, text_rows=6)
        _lazy_equals_dense(C, k)


@pytest.mark.parametrize("seed", range(12))
def test_lazy_equals_dense_on_order_only_ties(seed):
    """Columns holding the same terms in another row order have the same exact gain; which one a
    float32 sum prefers depends on the order of its additions, and numpy's order is not torch's.
    The lazy greedy must still pick what the dense greedy picks (its near-tie rule asks the
    dense arithmetic), including steps where such columns tie after earlier picks."""
    gen = torch.Generator().manual_seed(9500 + seed)
    rows, n = 40 + seed * 37, 30
    base = torch.rand(rows, 6, generator=gen) ** 3 * 10.0 ** torch.randint(-6, 1, (rows, 6), generator=gen)
    cols = [base[:, c % 6][torch.randperm(rows, generator=gen)] for c in range(n)]
    C = torch.stack(cols, dim=1).float() * torch.rand(1, n, generator=gen).round()  # some columns zeroed
    for k in (1, 2, 5, 12, 30):
        for text_rows in (0, 3):
            _lazy_equals_dense(C, k, text_rows=text_rows)
            _lazy_equals_dense(C, k, text_rows=text_rows, block=2)


def _spec_dense(C: torch.Tensor, k: int) -> list[int]:
    """The spec's dense greedy written plainly in torch on [1, R, n] (as scripts/bench_selection.py)."""
    C = C.unsqueeze(0)
    mask = torch.zeros(1, C.shape[2])
    best = C.new_zeros(1, C.shape[1], 1)
    picks = []
    for _ in range(k):
        j = ((C - best).clamp_min(0).sum(dim=1) + mask).argmax(dim=-1)
        picks.append(int(j))
        best = torch.maximum(best, C[:, :, j].reshape(1, -1, 1))
        mask[0, j] = float("-inf")
    return picks


@pytest.mark.parametrize("seed", range(6))
def test_auto_and_lazy_are_the_spec_dense_greedy_on_order_only_ties(seed):
    """Where only rounding separates columns, the default greedy and the lazy one still pick what
    the spec's plain torch code picks (the same operations, so the same rounding)."""
    gen = torch.Generator().manual_seed(9600 + seed)
    rows, n = 60 + seed * 101, 24
    base = torch.rand(rows, 4, generator=gen) ** 3 * 10.0 ** torch.randint(-6, 1, (rows, 4), generator=gen)
    C = torch.stack([base[:, c % 4][torch.randperm(rows, generator=gen)] for c in range(n)], dim=1).float()
    for k in (1, 3, 8, 24):
        want = _spec_dense(C, k)
        assert greedy_max_coverage(C, k).tolist() == want
        assert greedy_max_coverage(C, k, method="lazy").tolist() == want
        assert greedy_max_coverage(C, k, method="incremental").tolist() == want
        if native.load() is not None:
            assert greedy_max_coverage(C, k, method="compiled").tolist() == want


# ---------------------------------------------------------------- incremental and compiled greedies (CPU)
def _cpu_greedy_equals_dense(C, k, method, exclude=None):
    """The CPU greedy's picks equal the torch dense greedy's, in the same order, crop by crop."""
    dense = greedy_max_coverage(C, k, exclude=exclude, method="dense")
    got = greedy_max_coverage(C, k, exclude=exclude, method=method)
    assert torch.equal(got, dense), (got.tolist(), dense.tolist())
    if C.dim() == 2:
        assert torch.equal(greedy_max_coverage(C, k, exclude=exclude), dense)  # auto on CPU is one of them
    return dense


@pytest.mark.parametrize("method", CPU_GREEDIES)
@pytest.mark.parametrize("seed", range(30))
def test_cpu_greedy_equals_dense_on_coverage_matrices(seed, method):
    rng, gen = random.Random(7000 + seed), torch.Generator().manual_seed(7000 + seed)
    lead = rng.choice([(), (1,), (3,)])
    n, m = rng.randint(1, 80), rng.randint(0, 8)
    t = torch.randn(m, rng.randint(2, 32), generator=gen)
    v, w = torch.randn(*lead, n, t.shape[1], generator=gen), torch.randn(*lead, n, rng.randint(2, 16), generator=gen)
    p = _params(rng)
    exclude = None
    if seed % 3 == 0 and n > 1:
        exclude = torch.rand(*lead, n, generator=gen) < 0.3
        exclude[..., 0] = False
    k = rng.randint(1, n - (0 if exclude is None else int(exclude.sum(-1).max())))
    C = build_coverage_matrix(t, v, w, p["alpha"], p["tau_t"], p["tau_v"])
    if lead:  # one crop at a time: the dense greedy on each crop alone (batching may round otherwise)
        for b in range(lead[0]):
            _cpu_greedy_equals_dense(C[b], k, method, None if exclude is None else exclude[b])
    else:
        _cpu_greedy_equals_dense(C, k, method, exclude)
    assert torch.equal(
        mmtok_select(t, v, w, k, exclude=exclude, method=method, **p),
        mmtok_select(t, v, w, k, exclude=exclude, method="auto", **p),
    )


@pytest.mark.parametrize("method", CPU_GREEDIES)
@pytest.mark.parametrize("seed", range(20))
def test_cpu_greedy_equals_dense_with_ties_zero_gains_and_negative_entries(seed, method):
    """Duplicated columns (exact ties), dominated columns (zero gains), few distinct values, and
    (odd seeds) negative entries, which C never holds but the greedy accepts: lowest index wins."""
    gen = torch.Generator().manual_seed(8000 + seed)
    rng = random.Random(8000 + seed)
    rows, distinct = rng.randint(1, 12), rng.randint(1, 6)
    base = torch.randint(-2 if seed % 2 else 0, 4, (rows, distinct), generator=gen).float() / 4
    n = rng.randint(distinct, 40)
    cols = torch.cat([torch.arange(distinct), torch.randint(0, distinct, (n - distinct,), generator=gen)])
    C = base[:, cols[torch.randperm(n, generator=gen)]]
    exclude = (torch.rand(n, generator=gen) < 0.2) if seed % 3 == 0 else None
    if exclude is not None:
        exclude[0] = False
    k = rng.randint(1, n - (0 if exclude is None else int(exclude.sum())))
    _cpu_greedy_equals_dense(C, k, method, exclude)


@pytest.mark.parametrize("method", CPU_GREEDIES)
@pytest.mark.parametrize("seed", range(12))
def test_cpu_greedy_equals_dense_on_order_only_ties(seed, method):
    """Columns holding the same terms in another row order: only the order of the float32 additions
    separates them. The incremental greedy sums with the dense greedy's own reduction; the compiled
    one finds their exact sums equal, so no order is certain, and asks that reduction too."""
    gen = torch.Generator().manual_seed(9500 + seed)
    rows, n = 40 + seed * 37, 30
    base = torch.rand(rows, 6, generator=gen) ** 3 * 10.0 ** torch.randint(-6, 1, (rows, 6), generator=gen)
    cols = [base[:, c % 6][torch.randperm(rows, generator=gen)] for c in range(n)]
    C = torch.stack(cols, dim=1).float() * torch.rand(1, n, generator=gen).round()
    for k in (1, 2, 5, 12, 30):
        assert greedy_max_coverage(C, k, method=method).tolist() == _spec_dense(C, k)
        _cpu_greedy_equals_dense(C, k, method)


@pytest.mark.parametrize("method", CPU_GREEDIES)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float16, torch.bfloat16])
def test_cpu_greedy_takes_float64_and_widens_half(dtype, method):
    gen = torch.Generator().manual_seed(11)
    C = (torch.rand(50, 40, generator=gen) ** 4).to(dtype)
    want = greedy_max_coverage(C.float() if dtype != torch.float64 else C, 12, method="dense")
    assert torch.equal(greedy_max_coverage(C, 12, method=method), want)
    # auto keeps half-precision matrices on the dense greedy (its own arithmetic in that dtype)
    assert torch.equal(greedy_max_coverage(C, 12), greedy_max_coverage(C, 12, method="dense"))


def _llava_matrix(seed: int, clustered: bool) -> torch.Tensor:
    """C of one crop at LLaVA size (6 text rows, 576 tokens): Gaussian features, whose greedy steps
    are mostly float near-ties, or features in 48 tight groups, whose steps mostly are not."""
    gen = torch.Generator().manual_seed(seed)
    t, v = torch.randn(6, 256, generator=gen), torch.randn(576, 256, generator=gen)
    w = torch.randn(576, 128, generator=gen)
    if clustered:
        w = w + 2 * torch.randn(48, 128, generator=gen)[torch.randint(0, 48, (576,), generator=gen)]
    return build_coverage_matrix(t, v, w)


@COMPILED.marks[0]
@pytest.mark.parametrize("clustered", [False, True])
def test_compiled_greedy_decides_certain_steps_itself_and_asks_torch_otherwise(clustered, monkeypatch):
    """Both of the compiled greedy's ways of deciding a step are exercised at LLaVA size, and its
    picks are the dense greedy's: torch's reduction is called only for the steps that are not
    certain (on these Gaussian features 5 of 64, on the clustered ones 1 or 2), never for most."""
    C, k = _llava_matrix(9900, clustered), 64
    want = greedy_max_coverage(C, k, method="dense")
    calls = []
    real_sum = torch.sum

    def counting_sum(*args, **kwargs):
        calls.append(1)
        return real_sum(*args, **kwargs)

    monkeypatch.setattr(torch, "sum", counting_sum)
    got = greedy_max_coverage(C, k, method="compiled")
    monkeypatch.undo()
    assert torch.equal(got, want)
    if clustered:
        assert len(calls) < k // 8
    else:
        assert 0 < len(calls) < k // 4


@COMPILED.marks[0]
@pytest.mark.parametrize("power", [-44, -30, -10, 0, 10, 30])
def test_compiled_greedy_at_any_magnitude(power):
    """The grid's scale follows the matrix: from subnormal float32 entries to 1e30, the compiled
    greedy picks what the dense greedy picks."""
    gen = torch.Generator().manual_seed(13)
    C = ((torch.rand(70, 50, generator=gen) ** 3).double() * 10.0**power).float()
    for k in (1, 5, 25, 50):
        _cpu_greedy_equals_dense(C, k, "compiled")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_compiled_greedy_leaves_nan_and_inf_to_the_incremental_greedy(bad):
    """A matrix holding NaN or infinity (never built by mmtok_select) is not certified on a grid:
    the compiled path hands it to the incremental greedy, whose picks are torch's."""
    lib = native.load()
    if lib is None:
        pytest.skip(f"compiled greedy: {native.unavailable()}")
    from mmtok.selection.mmtok import _compiled_greedy, _incremental_greedy

    C = torch.rand(30, 20, generator=torch.Generator().manual_seed(12))
    C[3, 7] = bad
    forbidden = torch.zeros(20, dtype=torch.bool)
    assert torch.equal(_compiled_greedy(C, 5, forbidden, lib), _incremental_greedy(C, 5, forbidden))


def test_auto_path_by_device_and_dtype():
    """auto: the compiled greedy on CPU float32 (where it builds), the incremental one for float64,
    dense for half precision and off the CPU; an explicit method is kept."""
    from mmtok.selection.mmtok import _variant

    cpu = torch.device("cpu")
    assert _variant("auto", cpu, torch.float32) == ("compiled" if native.load() is not None else "incremental")
    assert _variant("auto", cpu, torch.float64) == "incremental"
    assert _variant("auto", cpu, torch.float16) == "dense"
    assert _variant("auto", torch.device("meta"), torch.float32) == "dense"
    assert _variant("lazy", cpu, torch.float32) == "lazy"


@pytest.fixture
def fresh_native(monkeypatch, tmp_path):
    """native.py looks again for its library under a test's environment, and forgets it afterwards."""
    monkeypatch.setenv("MMTOK_NATIVE_CACHE", str(tmp_path / "native"))
    native.reset()
    yield tmp_path / "native"
    monkeypatch.undo()
    native.reset()


@pytest.mark.parametrize(
    ("env", "reason"), [({"MMTOK_NATIVE": "0"}, "turned off (MMTOK_NATIVE=0)"), ({"CC": "no-such-cc"}, "no C compiler")]
)
def test_without_the_compiled_greedy_auto_is_the_incremental_one(fresh_native, monkeypatch, env, reason):
    """No compiler (or the switch off): auto runs the incremental greedy, same picks; asking for
    "compiled" is a one-line error naming why and the way out."""
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    assert native.load() is None and native.unavailable().startswith(reason)
    C = _llava_matrix(9901, clustered=True)
    assert torch.equal(greedy_max_coverage(C, 32), greedy_max_coverage(C, 32, method="dense"))
    with pytest.raises(ValueError, match=r"^method 'compiled' is not available here \(.*\); use 'auto'$"):
        greedy_max_coverage(C, 4, method="compiled")
    assert not fresh_native.exists()


def test_compiled_greedy_is_built_once_into_its_cache(fresh_native):
    """The first load builds one library in the cache folder; a later process (here: after a reset)
    loads that file instead of building again."""
    if shutil.which(os.environ.get("CC", "cc")) is None:
        pytest.skip("no C compiler")
    assert native.load() is not None, native.unavailable()
    (built,) = fresh_native.glob("coverage_greedy-*.so")
    stamp = built.stat().st_mtime_ns
    native.reset()
    assert native.load() is not None and [p.name for p in fresh_native.iterdir()] == [built.name]
    assert built.stat().st_mtime_ns == stamp


def _authors():
    """scripts/authors_selector.py: our re-implementation of the authors' selector (benchmark reference)."""
    import importlib.util
    import pathlib

    path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / "authors_selector.py"
    spec = importlib.util.spec_from_file_location("authors_selector", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize("method", ["auto", *CPU_GREEDIES])
@pytest.mark.parametrize("seed", range(3))
def test_auto_picks_the_authors_indices_at_llava_sizes(seed, method):
    """On CPU, mmtok_select (auto) returns exactly the authors' selector's indices (their
    operations, TorchScript kernel, one crop per call) at 576 tokens per crop, on features whose
    greedy steps are mostly float near-ties (Gaussian) and on clustered ones, one crop or five."""
    authors = _authors()
    gen = torch.Generator().manual_seed(9700 + seed)
    t = torch.randn(6, 256, generator=gen)
    v, w = torch.randn(5, 576, 256, generator=gen), torch.randn(5, 576, 128, generator=gen)
    if seed:
        w = w + 2 * torch.randn(5, 48, 128, generator=gen)[:, torch.randint(0, 48, (576,), generator=gen)]
    for k in (4, 32, 64, 192):
        want = authors.authors_select_crops(t, v, w, k)
        assert torch.equal(mmtok_select(t, v, w, k, method=method), want)
        assert torch.equal(mmtok_select(t, v[1], w[1], k, method=method), want[1])


# ---------------------------------------------------------------- on the device under test
# `make gpu-check` (scripts/gpu_check.sh) runs this file with MMTOK_TEST_DEVICE=cuda; by default
# these tests run on the CPU like the rest.
DEVICE = torch.device(os.environ.get("MMTOK_TEST_DEVICE", "cpu"))
if DEVICE.type == "cuda" and not torch.cuda.is_available():
    raise RuntimeError("MMTOK_TEST_DEVICE=cuda but torch.cuda.is_available() is False")


@pytest.mark.parametrize("seed", range(50))
def test_on_device_single_crop_matches_reference(seed):
    t, v, w, excluded, exclude, k, p = _seeded_case(seed)
    on = [x.to(DEVICE) for x in (t, v, w)]
    got = mmtok_select(*on, k, exclude=None if exclude is None else exclude.to(DEVICE), **p)
    assert got.device.type == DEVICE.type and got.dtype == torch.long
    assert tuple(got.cpu().tolist()) in ref_outcomes(t, v, w, k, excluded=excluded, **p)


@pytest.mark.parametrize("seed", range(10))
def test_on_device_batched_matches_reference(seed):
    rng, gen = random.Random(1000 + seed), torch.Generator().manual_seed(1000 + seed)
    batch = rng.randint(1, 4)
    t, v, w = _instance(rng, gen, batch=batch, shared_text=bool(seed % 2))
    k, p = rng.randint(1, v.shape[1]), _params(rng)
    got = mmtok_select(t.to(DEVICE), v.to(DEVICE), w.to(DEVICE), k, **p).cpu()
    for b in range(batch):
        tb = t if t.dim() == 2 else t[b]
        assert tuple(got[b].tolist()) in ref_outcomes(tb, v[b], w[b], k, **p)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_on_device_picks_the_authors_indices_at_llava_sizes(dtype):
    """One crop at LLaVA size: our default path on the device picks exactly what the authors'
    selector (re-implemented in scripts/authors_selector.py) picks on the same device; the
    5-crop batch picks what it picks crop by crop, or (a batched kernel may round a near-tie
    differently) a selection of the same coverage to float32 precision."""
    authors = _authors()
    gen = torch.Generator().manual_seed(9800)
    t = torch.randn(6, 512, generator=gen).to(DEVICE, dtype)
    v = torch.randn(5, 576, 512, generator=gen).to(DEVICE, dtype)
    segments = torch.randn(5, 48, 256, generator=gen)[:, torch.arange(576) % 48]
    w = (torch.randn(5, 576, 256, generator=gen) + 2 * segments).to(DEVICE, dtype)
    for k in (4, 32, 64, 192):
        want = authors.authors_select_crops(t, v, w, k)
        assert torch.equal(mmtok_select(t, v[0], w[0], k), want[0])
        got = mmtok_select(t, v, w, k)
        for b in range(5):
            if not torch.equal(got[b], want[b]):
                C = build_coverage_matrix(t, v[b], w[b]).double()
                assert coverage(C, got[b]).item() == pytest.approx(coverage(C, want[b]).item(), rel=1e-5)


def test_method_is_checked():
    with pytest.raises(ValueError, match="method must be one of auto, dense, incremental, lazy, compiled"):
        greedy_max_coverage(torch.rand(3, 4), 1, method="fast")
    for method in ("lazy", "incremental", "compiled"):
        with pytest.raises(ValueError, match=f"method '{method}' runs on CPU tensors"):
            greedy_max_coverage(torch.rand(3, 4, device="meta"), 1, method=method)


@pytest.mark.parametrize("method", ["auto", "dense", "incremental", "lazy", COMPILED])
def test_select_equals_greedy_on_the_built_matrix(method):
    """mmtok_select's blocks path (C never built) picks what the greedy picks on build_coverage_matrix."""
    gen = torch.Generator().manual_seed(10)
    t = torch.randn(4, 32, generator=gen)
    v, w = torch.randn(3, 90, 32, generator=gen), torch.randn(3, 90, 16, generator=gen)
    C = build_coverage_matrix(t, v, w)
    for k in (1, 7, 30, 90):
        want = greedy_max_coverage(C, k, method="dense", text_rows=4).sort(dim=-1).values
        assert torch.equal(mmtok_select(t, v, w, k, method=method), want)
        assert torch.equal(greedy_max_coverage(C, k, method=method, text_rows=4).sort(dim=-1).values, want)
        assert torch.equal(mmtok_select(t, v[2], w[2], k, method=method), want[2])


def test_lazy_stale_bound_equal_to_the_winner_at_a_lower_index_is_rescored():
    """Hand-made exact ties between a stale bound and a fresh gain: the stale column at the lower
    index may still hold that gain (it does here) and must then win, as in the dense argmax.

    Rows r0..r4. Step 1: column 0 (gain 4) wins. Column 1's gain 3 stays 3 (it covers rows that
    column 0 does not); column 2's bound 3.5 drops to exactly 3; column 3's bound 3 drops to 0. In
    step 2 the lazy greedy rescores column 2 (largest bound) to 3, which ties column 1's stale
    bound at a lower index: column 1 must be rescored and win, as in the dense argmax.
    """
    C = torch.tensor(
        [
            [2.0, 0.0, 0.5, 1.5],
            [2.0, 0.0, 0.0, 1.5],
            [0.0, 1.5, 1.5, 0.0],
            [0.0, 1.5, 0.0, 0.0],
            [0.0, 0.0, 1.5, 0.0],
        ]
    )
    for method in ("dense", "lazy"):
        assert greedy_max_coverage(C, 2, method=method).tolist() == [0, 1]
    # The same with the tied stale column to the right of the fresh winner: the winner stays.
    D = C[:, [0, 2, 1, 3]]
    for method in ("dense", "lazy"):
        assert greedy_max_coverage(D, 2, method=method).tolist() == [0, 1]
    import mmtok.selection.mmtok as mm

    for block in (1, 2, 3):
        saved, mm.LAZY_BLOCK = mm.LAZY_BLOCK, block
        try:
            lazy = greedy_max_coverage(C, 4, method="lazy")
            assert lazy.tolist() == greedy_max_coverage(C, 4, method="dense").tolist()
        finally:
            mm.LAZY_BLOCK = saved


# ---------------------------------------------------------------- tie-breaks, edge cases, errors
def test_argmax_returns_first_maximum():
    x = torch.zeros(4097)
    x[[7, 100, 4000]] = 1.0
    assert x.argmax().item() == 7
    assert torch.zeros(3, 513).argmax(dim=-1).tolist() == [0, 0, 0]


@pytest.mark.parametrize("method", ["dense", "incremental", "lazy", COMPILED])
def test_duplicate_columns_pick_lowest_index(method):
    greedy_max_coverage = functools.partial(_greedy, method=method)
    C = torch.tensor([[0.1, 0.5, 0.2, 0.5, 0.5], [0.0, 0.5, 0.1, 0.5, 0.5]])
    assert greedy_max_coverage(C, 1).tolist() == [1]
    # Column 1 dominates every other column, so after it all gains are exactly 0 and the lowest
    # free index wins, not a later duplicate.
    assert greedy_max_coverage(C, 2).tolist() == [1, 0]
    # Duplicates of the best *second* column: gains 0.3 for columns 2 and 4, lowest is taken.
    E = torch.tensor([[0.9, 0.0, 0.0, 0.0, 0.0], [0.0, 0.0, 0.3, 0.1, 0.3]])
    assert greedy_max_coverage(E, 2).tolist() == [0, 2]
    exclude = torch.tensor([False, True, False, False, False])
    assert greedy_max_coverage(C, 1, exclude=exclude).tolist() == [3]


@pytest.mark.parametrize("method", ["dense", "incremental", "lazy", COMPILED])
def test_zero_gain_falls_back_to_lowest_free_index(method):
    greedy_max_coverage = functools.partial(_greedy, method=method)
    C = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    assert greedy_max_coverage(C, 3).tolist() == [1, 0, 2]
    assert greedy_max_coverage(C, 3, exclude=torch.tensor([True, False, False, False])).tolist() == [1, 2, 3]


def test_exclude_is_respected_and_k_equal_n():
    gen = torch.Generator().manual_seed(4)
    t, v, w = (
        torch.randn(3, 8, generator=gen),
        torch.randn(12, 8, generator=gen),
        torch.randn(12, 6, generator=gen),
    )
    assert torch.equal(mmtok_select(t, v, w, 12), torch.arange(12))
    exclude = torch.arange(12) % 3 == 0
    got = mmtok_select(t, v, w, 8, exclude=exclude)
    assert torch.equal(got, torch.arange(12)[~exclude])
    got = mmtok_select(t, v, w, 4, exclude=exclude)
    assert not exclude[got].any() and got.unique().numel() == 4


def test_result_sorted_unique():
    gen = torch.Generator().manual_seed(5)
    t, v, w = (
        torch.randn(6, 16, generator=gen),
        torch.randn(2, 64, 16, generator=gen),
        torch.randn(2, 64, 8, generator=gen),
    )
    got = mmtok_select(t, v, w, 20)
    for row in got:
        assert row.tolist() == sorted(set(row.tolist()))


def test_empty_text_uses_vision_term_only():
    gen = torch.Generator().manual_seed(6)
    v, w = torch.randn(9, 8, generator=gen), torch.randn(9, 5, generator=gen)
    got = mmtok_select(torch.zeros(0, 8), v, w, 3)
    assert got.tolist() == ref_select(torch.zeros(0, 8), v, w, 3)


def _basic(n=5, m=2, d=4, dv=3):
    return torch.randn(m, d), torch.randn(n, d), torch.randn(n, dv)


@pytest.mark.parametrize(
    ("args", "k", "kwargs", "message"),
    [
        (_basic(), 0, {}, "k must be >= 1"),
        (_basic(), 6, {}, "exceeds the number of selectable tokens"),
        (
            _basic(),
            4,
            {"exclude": torch.tensor([True, True, False, False, False])},
            "exceeds the number of selectable",
        ),
        (_basic(), 2.0, {}, "k must be an integer"),
        (_basic(), True, {}, "k must be an integer"),
        ((torch.randn(2, 4), torch.randn(5, 3), torch.randn(5, 3)), 1, {}, "share the LLM embedding width"),
        ((torch.randn(2, 4), torch.randn(5, 4), torch.randn(6, 3)), 1, {}, "same number of tokens"),
        ((torch.randn(2, 4), torch.randn(5, 4), torch.randn(1, 5, 3)), 1, {}, "same rank"),
        ((torch.randn(1, 2, 4), torch.randn(5, 4), torch.randn(5, 3)), 1, {}, "text_emb must be [m, D]"),
        ((torch.randn(3, 2, 4), torch.randn(2, 5, 4), torch.randn(2, 5, 3)), 1, {}, "batch sizes differ"),
        ((torch.randn(2, 4), torch.randn(2, 5, 4), torch.randn(3, 5, 3)), 1, {}, "batch sizes differ"),
        ((torch.randn(2, 4), torch.randn(0, 4), torch.randn(0, 3)), 1, {}, "n = 0"),
        (_basic(), 1, {"exclude": torch.zeros(5)}, "boolean mask"),
        (_basic(), 1, {"exclude": torch.zeros(4, dtype=torch.bool)}, "exclude must have shape"),
        (_basic(), 1, {"exclude": torch.zeros(1, 5, dtype=torch.bool)}, "for a single crop"),
        (_basic(), 1, {"tau_t": 0.0}, "temperatures must be positive"),
    ],
)
def test_errors(args, k, kwargs, message):
    with pytest.raises(ValueError) as info:
        mmtok_select(*args, k, **kwargs)
    assert message in str(info.value)


def test_numpy_integer_budget_accepted():
    np = pytest.importorskip("numpy")
    t, v, w = _basic()
    assert mmtok_select(t, v, w, np.int64(2)).shape == (2,)
