"""Per-run aggregates of the per-sample records: the row's latency and token columns."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import numpy as np

from mmtok.store.row import STAGES


def _numbers(values: Iterable[Any]) -> list[float]:
    return [float(v) for v in values if v is not None and not (isinstance(v, float) and math.isnan(v))]


def stats(values: Iterable[Any]) -> dict[str, float | None]:
    """mean / p50 / p90 (numpy's linear-interpolation percentiles) of the non-missing values."""
    xs = _numbers(values)
    if not xs:
        return {"mean": None, "p50": None, "p90": None}
    arr = np.asarray(xs, dtype=float)
    return {"mean": float(arr.mean()), "p50": float(np.percentile(arr, 50)), "p90": float(np.percentile(arr, 90))}


def sample_aggregates(samples: list[dict]) -> dict[str, Any]:
    """The row's latency and token columns, computed from the per-sample records."""
    out: dict[str, Any] = {"n_samples": len(samples)}
    for stage in STAGES:
        for stat, value in stats(s.get(f"{stage}_s") for s in samples).items():
            out[f"{stage}_s_{stat}"] = value
    kept = _numbers(s.get("vision_tokens") for s in samples)
    out["vision_tokens_mean"] = float(np.mean(kept)) if kept else None
    out["vision_tokens_min"] = int(min(kept)) if kept else None
    out["vision_tokens_max"] = int(max(kept)) if kept else None
    full = _numbers(s.get("vision_tokens_full") for s in samples)
    out["vision_tokens_full_mean"] = float(np.mean(full)) if full else None
    # Pre-LLM methods: the LLM sees the kept tokens at every layer, so equivalent = kept.
    eq = _numbers(
        s.get("equivalent_tokens") if s.get("equivalent_tokens") is not None else s.get("vision_tokens")
        for s in samples
    )
    out["equivalent_tokens_mean"] = float(np.mean(eq)) if eq else None
    flops = _numbers(s.get("prefill_flops") for s in samples)
    out["prefill_flops_mean"] = float(np.mean(flops)) if flops else None
    new = _numbers(s.get("new_tokens") for s in samples)
    out["new_tokens_mean"] = float(np.mean(new)) if new else None
    return out
