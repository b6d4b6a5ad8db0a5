"""Runner latencies are honest: the stages of every sample add up to its total.

`total_s` runs from the start of a batch (image preprocessing, tokenisation) to the decoded text;
the four stages cover the pruner's `generate` exactly: vision + select (the pruner's own timers)
+ prefill (the rest up to the first token's logits) + decode (the remaining tokens). What they
leave out is only the host work before `generate` and the text decoding after it. Checked on the
tiny models, where that host work is the *largest* share it can be (the models are tiny), so the
tolerance below also holds, with room, for real ones. The rows' latency columns are the
samples' statistics.
"""

from __future__ import annotations

import numpy as np
import pytest

from mmtok import store
from mmtok.run.compose import compose
from mmtok.run.execute import run

STAGES = ("vision_s", "select_s", "prefill_s", "decode_s")
# Share of total_s that the stages may leave out (preprocessing + decoding to text), for the median
# sample: measured 5-20 % on the tiny models here (2 busy cores). Not a speed limit: it catches a
# stage that is dropped or timed outside `generate` (either moves the share by a whole stage).
UNTIMED_SHARE = 0.5


@pytest.mark.parametrize(
    "model, pruner, budget",
    [("tiny_llava", "mmtok", 8), ("tiny_llava", "fastv", None), ("tiny_llavanext", "divprune", 20)],
)
def test_stages_add_up_to_the_total(mmtok_cache, tiny_llava_path, tiny_llavanext_path, tmp_path, model, pruner, budget):
    overrides = [
        f"cache_dir={mmtok_cache}",
        f"results_dir={tmp_path}",
        "wandb.mode=disabled",
        "progress=false",
        "max_new_tokens=4",
        "limit=4",
        "benchmark=pope_local",
        f"model={model}",
        f"pruner={pruner}",
        "budget=null" if budget is None else f"budget={budget}",
    ]
    outcome = run(compose(overrides))
    assert outcome.samples
    shares = []
    for s in outcome.samples:
        parts = [getattr(s, k) for k in STAGES]
        assert all(p >= 0 for p in parts), s
        covered = sum(parts)
        assert covered <= s.total_s + 1e-9, s  # the stages are inside the total, never beyond it
        shares.append((s.total_s - covered) / s.total_s)
    # the median sample: one sample descheduled on a busy machine must not decide the test
    assert float(np.median(shares)) <= UNTIMED_SHARE, shares
    row = outcome.row.as_dict()
    for stage in (*STAGES, "total_s"):
        values = np.array([getattr(s, stage) for s in outcome.samples])
        assert row[f"{stage}_mean"] == pytest.approx(values.mean(), rel=1e-9)
        assert row[f"{stage}_p50"] == pytest.approx(np.percentile(values, 50), rel=1e-9)
    # and the same numbers reached runs.csv
    (csv_row,) = [r for r in store.read_rows(outcome.csv_path) if r["run_id"] == outcome.run_id]
    parts_mean = sum(float(csv_row[f"{k}_mean"]) for k in STAGES)
    assert parts_mean <= float(csv_row["total_s_mean"]) + 1e-9
