"""Flat benchmark metrics (the numbers the paper's tables report) from lmms-eval's results.

- POPE: lmms-eval's `pope` pools the three splits into one F1; papers report per split and the
  average of the three per-split F1 (`pope_f1_avg`). Per-split numbers are recomputed here from the
  per-sample answers with lmms-eval's own parsing (`pope_process_results`) and aggregations.
  Parsing: lmms-eval exact-matches `answer.lower().strip()` against "yes"/"no", so "Yes." counts as
  wrong; the original POPE script of the paper's baselines (`eval_pope.py`) instead looked for
  "no"/"not" among the words of the answer and counted everything else as yes, so "Yes." was right there. We keep
  lmms-eval's rule (absolute numbers are then lmms-eval numbers, comparable to its tables).
- GQA: lmms-eval's exact match (case and punctuation ignored).
- MME: perception and cognition scores from lmms-eval (sum over categories of acc + acc+), and the
  paper's MME = perception + cognition (`mme_total`).
- MMStar: lmms-eval's six category scores (each the mean of its three sub-category accuracies) and
  its `average` (the mean over every sub-category), under the paper's column names (`MMSTAR_METRICS`).
- OCRBench: lmms-eval's `ocrbench_accuracy` = correct answers / 1000 (the hub set's size).
"""

from __future__ import annotations

from lmms_eval.tasks.pope import utils as pope_utils

from mmtok.data.local import POPE_SPLITS  # the format's splits, where the datasets are built
from mmtok.eval.protocol import SUMMARIES
from mmtok.eval.records import SampleRecord

# lmms-eval 0.7.3 `mmstar` metric → our flat name (the paper's Table 11 columns; `average` is its Average)
MMSTAR_METRICS = {
    "coarse perception": "mmstar_coarse",
    "fine-grained perception": "mmstar_fine_grained",
    "instance reasoning": "mmstar_instance",
    "logical reasoning": "mmstar_logical",
    "math": "mmstar_math",
    "science & technology": "mmstar_sci_tech",
    "average": "mmstar_average",
}


def infer_summary(task: str) -> str | None:
    """The benchmark a task name belongs to ("mmtok_pope" -> "pope"), or None."""
    found = [s for s in SUMMARIES if s in task.lower()]
    return found[0] if len(found) == 1 else None


def _value(task_results: dict, metric: str):
    """lmms-eval stores metric `m` under "m,<filter>" (filter "none" for these tasks)."""
    for key, value in task_results.items():
        if key.split(",")[0] == metric and not key.endswith("_stderr") and "_stderr," not in key:
            return value
    return None


def _only_task(summary: str, raw_results: dict) -> tuple[str, dict]:
    if len(raw_results) != 1:
        raise ValueError(
            f"summary {summary!r} needs exactly one task's results (the flat metric names would collide), "
            f"got {sorted(raw_results)}"
        )
    return next(iter(raw_results.items()))


def pope_split_metrics(samples: list[SampleRecord]) -> dict[str, float]:
    """Per-split accuracy / precision / recall / F1 and their averages from per-sample records.

    Each record needs `answer`, `target` ("yes"/"no") and `category` (the POPE split)."""
    by_split: dict[str, list[dict]] = {}
    for s in samples:
        if s.category not in POPE_SPLITS:
            raise ValueError(f"POPE sample {s.doc_id} has no split category (got {s.category!r})")
        doc = {"question_id": s.doc_id, "answer": s.target}  # lmms-eval's scorer takes its own dicts
        scored = pope_utils.pope_process_results(doc, [s.answer])["pope_f1_score"]
        by_split.setdefault(s.category, []).append(scored)
    out: dict[str, float] = {}
    for split in POPE_SPLITS:
        if split not in by_split:
            continue
        results = by_split[split]
        out[f"pope_{split}_acc"] = float(pope_utils.pope_aggregate_accuracy(results))
        out[f"pope_{split}_precision"] = float(pope_utils.pope_aggregate_precision(results))
        out[f"pope_{split}_recall"] = float(pope_utils.pope_aggregate_recall(results))
        out[f"pope_{split}_f1"] = float(pope_utils.pope_aggregate_f1_score(results))
        out[f"pope_{split}_n"] = float(len(results))
    present = [s for s in POPE_SPLITS if s in by_split]
    if present:
        # The papers' POPE number: mean over the splits (all three on the full benchmark).
        out["pope_f1_avg"] = sum(out[f"pope_{s}_f1"] for s in present) / len(present)
        out["pope_acc_avg"] = sum(out[f"pope_{s}_acc"] for s in present) / len(present)
    return out


def summarize(summary: str | None, raw_results: dict, samples: list[SampleRecord]) -> dict[str, float]:
    """Flat metrics for one benchmark.

    `raw_results`: lmms-eval's `res["results"]` restricted to the benchmark's task (one task);
    `samples`: that task's per-request records (see `mmtok.eval.EvalOutput.samples`).
    `summary=None`: every numeric lmms-eval metric as "<task>_<metric>" (unknown benchmarks).
    """
    if summary is None:
        out = {}
        for task, res in raw_results.items():
            for key, value in res.items():
                metric = key.split(",")[0]
                if isinstance(value, (int, float)) and not isinstance(value, bool) and "stderr" not in key:
                    out[f"{task}_{metric}"] = float(value)
        return out
    if summary not in SUMMARIES:
        raise ValueError(f"unknown summary {summary!r}; valid: {', '.join(SUMMARIES)}")
    task, res = _only_task(summary, raw_results)
    if summary == "pope":
        out = pope_split_metrics(samples)
        # lmms-eval's pooled numbers, for reference (what its `pope` task prints)
        for name, metric in (("f1_pooled", "pope_f1_score"), ("acc_pooled", "pope_accuracy")):
            value = _value(res, metric)
            if value is not None:
                out[f"pope_{name}"] = float(value)
        return out
    if summary == "gqa":
        value = _value(res, "exact_match")
        if value is None:
            raise ValueError(f"task {task}: no exact_match in lmms-eval's results {sorted(res)}")
        return {"gqa_exact_match": float(value)}
    if summary == "ocrbench":
        value = _value(res, "ocrbench_accuracy")
        if value is None:
            raise ValueError(f"task {task}: no ocrbench_accuracy in lmms-eval's results {sorted(res)}")
        return {"ocrbench_accuracy": float(value)}
    if summary == "mmstar":
        # a category none of the evaluated questions belongs to (a small `limit`) has no score: left out
        values = {ours: _value(res, metric) for metric, ours in MMSTAR_METRICS.items()}
        return {ours: float(v) for ours, v in values.items() if isinstance(v, (int, float))}
    out = {}
    perception, cognition = _value(res, "mme_perception_score"), _value(res, "mme_cognition_score")
    # A category group with no question in the evaluated docs (a small `limit`) has no score: it
    # is left out rather than reported as 0, and then there is no total either.
    if perception is not None:
        out["mme_perception"] = float(perception)
    if cognition is not None:
        out["mme_cognition"] = float(cognition)
    if perception is not None and cognition is not None:
        out["mme_total"] = float(perception) + float(cognition)
    return out
