"""Selection-module latency at the paper's sizes (Table 13), MMTok beside DivPrune (per crop) and random.

Inputs have the real shapes (LLaVA-7B: D=4096 projected, CLIP-L Dv=1024 pre-projector, 576 tokens
per crop; NeXT: 5 or 3 crops selected together) with random values: selection cost does not
depend on the values. All methods are timed in one process, interleaved, on the same device, so
the printed ratios are like-for-like; the paper's A6000 numbers are printed beside, not compared
as ratios (different hardware).

    python scripts/bench_selection.py [--device cuda] [--repeats 100]
"""

from __future__ import annotations

import argparse
import csv
import statistics
import time
from pathlib import Path

import torch

from mmtok.selection.divprune import divprune_select
from mmtok.selection.mmtok import mmtok_select
from mmtok.selection.random import random_select

PAPER = Path(__file__).resolve().parents[1] / "results" / "paper" / "selector_latency.csv"
# (crops, tokens per crop, kept in total) as in Table 13
CASES = [(5, 576, 160), (5, 576, 80), (3, 576, 96), (3, 576, 48), (1, 576, 32), (1, 576, 16)]


def timed(fn, device, repeats):
    for _ in range(3):  # warm-up (kernels, allocator)
        fn()
    times = []
    for _ in range(repeats):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1e3)
    return statistics.mean(times)


def paper_ms():
    if not PAPER.exists():
        return {}
    with PAPER.open() as f:
        return {(int(r["n_in"]), int(r["k_out"])): float(r["latency_ms"]) for r in csv.DictReader(f)}


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", default="float16" if torch.cuda.is_available() else "float32")
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--words", type=int, default=8, help="question sub-word tokens (text rows)")
    args = ap.parse_args()
    device, dtype = torch.device(args.device), getattr(torch, args.dtype)
    gen = torch.Generator().manual_seed(0)
    paper = paper_ms()
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device: {name}, dtype: {args.dtype}, repeats: {args.repeats}, text rows: {args.words}")
    print(
        f"{'n_in':>5} {'k_out':>5} {'mmtok ms':>9} {'divprune ms':>11} {'random ms':>9}"
        f" {'mmtok/divprune':>14} {'paper A6000 ms':>14}"
    )
    for crops, n, k_total in CASES:
        k = k_total // crops
        text = torch.randn(args.words, 4096, generator=gen).to(device, dtype)
        proj = torch.randn(crops, n, 4096, generator=gen).to(device, dtype)
        pre = torch.randn(crops, n, 1024, generator=gen).to(device, dtype)
        t_mm = timed(lambda: mmtok_select(text, proj, pre, k), device, args.repeats)
        t_dp = timed(lambda: divprune_select(proj, k), device, args.repeats)
        t_rn = timed(lambda: [random_select(n, k, seed=c, device=device) for c in range(crops)], device, args.repeats)
        ref = paper.get((crops * n, k_total))
        print(
            f"{crops * n:>5} {k_total:>5} {t_mm:>9.2f} {t_dp:>11.2f} {t_rn:>9.3f} {t_mm / t_dp:>14.2f} "
            f"{'' if ref is None else f'{ref:.2f}':>14}"
        )


if __name__ == "__main__":
    main()
