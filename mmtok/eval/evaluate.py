"""`evaluate`: one loaded model + pruner through lmms-eval's `simple_evaluate`, metrics and per-sample records out.

    out = evaluate(model, processor, build_pruner("mmtok", budget=64), tasks=["mmtok_pope"],
                   include_path=dataset_dir, protocol=RunProtocol(batch_size=1))
    out.metrics["pope_f1_avg"], out.samples[0].prefill_s, out.wall_s

`include_path` is the folder holding our task YAMLs (`mmtok.data.tasks.write_task_yaml`,
`mmtok.data.build_dataset`). Metrics are flat (`mmtok.eval.metrics`); `samples` has one
record per answered request with its latency split and token counts (`mmtok.eval.wrapper`).
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass, field

from mmtok.eval.metrics import infer_summary, summarize
from mmtok.eval.prompts import check_multi_image, check_options
from mmtok.eval.protocol import DEFAULT_PROTOCOL, SUMMARIES, RunProtocol, mme_limit_problem
from mmtok.eval.records import SampleRecord
from mmtok.eval.wrapper import PrunedLM
from mmtok.timing import device_name, peak_memory_bytes, reset_peak_memory


@dataclass
class EvalOutput:
    """What one evaluation produced.

    `samples`: one `mmtok.eval.records.SampleRecord` per answered request, in lmms-eval's request
        order.
    """

    metrics: dict[str, float]  # flat: pope_f1_avg, pope_random_f1, gqa_exact_match, mme_total, ...
    samples: list[SampleRecord]
    wall_s: float  # the whole simple_evaluate call: dataset loading, generation, scoring
    device: str
    peak_memory_bytes: int | None  # CUDA peak allocated during the evaluation; None on CPU
    raw: dict = field(repr=False)  # lmms-eval's res["results"]


@functools.lru_cache(maxsize=8)
def _task_manager(include_path: str | None, defaults: bool):
    from lmms_eval.tasks import TaskManager

    return TaskManager(include_path=include_path, include_defaults=defaults)


def task_manager(include_path: str | None, tasks: list[str]):
    """lmms-eval's TaskManager for `tasks`, cached per folder.

    Indexing lmms-eval's ~2000 built-in YAMLs takes seconds, so when every requested task is in
    `include_path` only that folder is indexed (our names are unique, so nothing is shadowed);
    otherwise the full index (built-ins + folder) is used, where lmms-eval's rule "the built-in
    wins a name clash" applies. A task missing from a cached folder index triggers one re-index
    (its YAML may have been written after the folder was first indexed).
    """
    if include_path is not None:
        local = _task_manager(str(include_path), False)
        if all(t in local.all_tasks for t in tasks):
            return local
        _task_manager.cache_clear()  # the folder may have changed since it was indexed
        local = _task_manager(str(include_path), False)
        if all(t in local.all_tasks for t in tasks):
            return local
    return _task_manager(None if include_path is None else str(include_path), True)


def evaluate(
    model,
    processor,
    pruner,
    *,
    tasks: list[str],
    include_path: str | None,
    protocol: RunProtocol = DEFAULT_PROTOCOL,
) -> EvalOutput:
    """Evaluate `model` + `pruner` on lmms-eval `tasks` under `protocol`; see the module docstring.

    `protocol.summary`: one of SUMMARIES (pope, gqa, mme, mmstar, ocrbench) for every task, or None to
    infer each task's benchmark from its name (a task whose name names none gets lmms-eval's metrics
    as "<task>_<metric>").
    `protocol.multi_image`: "error" | "first" | "middle", for documents with several images
    (`mmtok.eval.prompts.pick_image`). Generation errors propagate (never an empty answer).
    """
    from lmms_eval import evaluator

    check_options(protocol.prompt_format, protocol.image_preprocess, str(getattr(model.config, "model_type", None)))
    check_multi_image(protocol.multi_image)
    summary, limit = protocol.summary, protocol.limit
    if summary is not None and summary not in SUMMARIES:
        raise ValueError(f"unknown summary {summary!r}; valid: {', '.join(SUMMARIES)}")
    tasks = list(tasks)
    if not tasks:
        raise ValueError("no tasks given")
    kinds = {t: summary if summary is not None else infer_summary(t) for t in tasks}
    if "mme" in kinds.values() and mme_limit_problem(limit):
        # an odd limit splits the last pair and lmms-eval's aggregation then fails deep inside
        raise ValueError(mme_limit_problem(limit))
    lm = PrunedLM(model, processor, pruner, protocol)
    manager = task_manager(include_path, tasks)
    device = model.device
    reset_peak_memory(device)
    start = time.perf_counter()
    res = evaluator.simple_evaluate(
        model=lm,
        tasks=tasks,
        task_manager=manager,
        batch_size=protocol.batch_size,
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,  # no stderr resampling: it is slow and we report per-sample data instead
        verbosity="INFO" if protocol.progress else "WARNING",
    )
    wall_s = time.perf_counter() - start
    peak = peak_memory_bytes(device)

    samples = lm.records
    _attach_targets(samples, res.get("samples", {}))
    raw = res["results"]
    metrics: dict[str, float] = {}
    for kind in dict.fromkeys(kinds.values()):
        names = [t for t in tasks if kinds[t] == kind]
        metrics.update(summarize(kind, {t: raw[t] for t in names}, [s for s in samples if s.task in names]))
    return EvalOutput(
        metrics=metrics, samples=samples, wall_s=wall_s, device=device_name(device), peak_memory_bytes=peak, raw=raw
    )


def _attach_targets(samples: list[SampleRecord], logged: dict) -> None:
    """Each record's `target`: the target lmms-eval itself scored it against (its logged sample)."""
    targets = {(task, s["doc_id"]): s.get("target") for task, rows in logged.items() for s in rows}
    for s in samples:
        s.target = targets.get((s.task, s.doc_id))


__all__ = ["EvalOutput", "PrunedLM", "evaluate", "summarize", "task_manager"]
