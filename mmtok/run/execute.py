"""Executing one run (or a job's cells): a composed config in, a run folder and one runs.csv row out.

Order of work (every check that can fail on user input comes before the model loads):
1. validate the config and build the pruner (its parameters are checked);
2. resume: a completed run with the same config hash (its folder's row.json, or runs.csv) -> skip
   (unless force=true);
3. check the device and the budget against the checkpoint's config, build the local dataset or tiny
   checkpoint if needed, load the model (one per process, reused by the next run with the same
   model settings: a Hydra multirun executes its jobs in one process with the basic launcher);
4. evaluate through lmms-eval (`mmtok.eval.evaluate`) with the pruner injected;
5. write the run folder (samples.jsonl, config.yaml, metrics.json, row.json), log to wandb, and
   append the row to runs.csv (last, so a row marks a finished run). A run that raises during the
   evaluation appends a row with status=failed and the error, then re-raises.

It knows nothing about a particular pruner or benchmark: they are names in the config.
"""

from __future__ import annotations

import dataclasses
import gc
import random
import sys
import time
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from mmtok import store
from mmtok.data import build_dataset, dataset_format
from mmtok.eval.protocol import RunProtocol
from mmtok.eval.records import SampleRecord
from mmtok.models.source import ModelSourceError
from mmtok.run.cells import cell_config
from mmtok.run.identity import config_hash, identity, new_run_id
from mmtok.run.pruner import build_pruner_from, canonical
from mmtok.run.schema import ROOT, ConfigError
from mmtok.run.validate import check_family, model_family, validate
from mmtok.store import RunRow

_LOADED: dict[tuple, tuple] = {}


@dataclass
class RunOutcome:
    status: str  # completed | skipped
    run_id: str
    config_hash: str
    row: RunRow
    row_number: int  # 1-based data row in runs.csv (of the earlier row when skipped)
    csv_path: Path
    run_dir: Path | None = None
    samples: list[SampleRecord] = field(default_factory=list)
    metrics: dict[str, float] = field(default_factory=dict)


def log(msg: str) -> None:
    print(f"[mmtok] {msg}", flush=True)


def _family(cfg: DictConfig) -> str:
    """The checkpoint's model_type: from disk, else from its config (a download run fetches config.json)."""
    from mmtok.models.loading import load_config  # defers transformers

    m = cfg.model
    return model_family(m) or load_config(str(m.path), download=bool(m.download), tiny=m.tiny).model_type


def check_device(device: str) -> None:
    import torch

    if device.startswith("cuda"):
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} is not available here (no CUDA GPU visible); "
                "pass device=cpu (with model.dtype=float32)"
            )
        index = int(device.split(":")[1]) if ":" in device else 0
        if index >= torch.cuda.device_count():
            raise ConfigError(
                f"device {device!r} does not exist; "
                f"valid: {', '.join(f'cuda:{i}' for i in range(torch.cuda.device_count()))}"
            )
    elif device == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(
            "device 'mps' is not available here; valid: cpu" + (", cuda" if torch.cuda.is_available() else "")
        )


def check_budget_fits(pruner, cfg: DictConfig) -> None:
    """A budget the model cannot honour (a tiling family: below one token per crop; FastV: below its
    reachable equivalent count), in-LLM prune layers the LLM does not have, or a pruner / option the
    family does not have, fails from the checkpoint's config (`Pruner.check_config`), before the
    weights load and before the run folder exists."""
    from mmtok.models.loading import load_config  # defers transformers

    m = cfg.model
    config = load_config(str(m.path), download=bool(m.download), tiny=m.tiny)
    check_family(cfg, config.model_type)  # preflight read it from disk; a download run learns it here
    try:
        pruner.check_config(config)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


def seed_everything(seed: int) -> None:
    import numpy as np
    import torch

    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)


def resolve_tasks(cfg: DictConfig) -> tuple[list[str], str | None]:
    """(lmms-eval task names, include_path). A testbed benchmark is built on first use into
    `<cache_dir>/testbed/<format>-n<N>` (under a lock, so concurrent runs build it once)."""
    bench = cfg.benchmark
    if bench.testbed is None:
        return list(bench.tasks), bench.include_path
    from filelock import FileLock

    folder = Path(cfg.cache_dir) / "testbed" / f"{bench.testbed}-n{bench.testbed_n}"
    task = dataset_format(bench.testbed).task
    done = folder / ".complete"
    folder.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(folder) + ".lock"):
        if not done.exists():
            log(f"building the {bench.testbed} testbed ({bench.testbed_n} rows) in {folder}")
            tb = build_dataset(folder, bench.testbed, n=int(bench.testbed_n), seed=0)
            task = tb.task
            done.write_text(task + "\n")
    tasks = list(bench.tasks) or [task]
    return tasks, str(folder.resolve())


def load(cfg: DictConfig):
    """(model, processor, LoadedInfo), reusing this process's last model if the settings match."""
    from mmtok.models.loading import load_model  # defers torch and transformers

    m = cfg.model
    key = (str(m.path), m.tiny, m.dtype, m.attn_implementation, str(cfg.device), bool(m.download))
    key += (m.min_pixels, m.max_pixels)
    if key in _LOADED:
        return _LOADED[key]
    _LOADED.clear()
    gc.collect()
    t = time.perf_counter()
    loaded = load_model(
        str(m.path),
        dtype=m.dtype,
        attn_implementation=m.attn_implementation,
        device=str(cfg.device),
        download=bool(m.download),
        tiny=m.tiny,
        min_pixels=m.min_pixels,
        max_pixels=m.max_pixels,
    )
    log(f"loaded {m.name} ({loaded[2].family}, {m.dtype}) from {loaded[2].source} in {time.perf_counter() - t:.1f} s")
    _LOADED[key] = loaded
    return loaded


def add_prefill_flops(samples: list[SampleRecord], model_config) -> None:
    """Per sample: the analytic `prefill_flops` of the LLM (`mmtok.timing`), from the wrapper's
    `text_tokens` (the prompt as tokenised for the model, without image placeholders and padding).

    In-LLM methods that report `layer_vision_tokens` (the vision tokens in each decoder layer's
    input): the sum over layers of one layer's FLOPs at text + that layer's vision tokens (exact).
    Otherwise every layer is charged text + `equivalent_tokens` (rounded; an in-LLM method without
    the per-layer list) or text + `vision_tokens` (what the LLM received; pre-LLM methods).
    """
    from mmtok.timing import prefill_flops, prefill_flops_per_layer  # defers torch

    for s in samples:
        if s.prefill_flops is not None:
            continue
        text = int(s.text_tokens)
        if s.layer_vision_tokens is not None:
            s.prefill_flops = prefill_flops_per_layer(model_config, [text + int(v) for v in s.layer_vision_tokens])
        else:
            vision = s.vision_tokens if s.equivalent_tokens is None else s.equivalent_tokens
            s.prefill_flops = prefill_flops(model_config, int(round(text + float(vision))))


def protocol_of(cfg: DictConfig) -> RunProtocol:
    """The evaluation protocol the config asks for (handed to `evaluate` as one record)."""
    return RunProtocol(
        batch_size=int(cfg.batch_size),
        max_new_tokens=int(cfg.max_new_tokens),
        prompt_format=cfg.prompt_format,
        image_preprocess=cfg.image_preprocess,
        multi_image=cfg.multi_image,
        limit=cfg.limit,
        summary=cfg.benchmark.summary,
        progress=bool(cfg.progress),
        image_scale=float(cfg.pruner.image_scale),
    )


def start_row(cfg: DictConfig, run_id: str, key: str, pruner, tasks: list[str], run_dir: Path) -> RunRow:
    """The row of a run that is about to evaluate: what runs, on which code and libraries."""
    commit, dirty = store.git_info(ROOT)
    return RunRow(
        time=datetime.now(timezone.utc).isoformat(timespec="seconds"),
        run_id=run_id,
        config_hash=key,
        model=cfg.model.name,
        model_path=str(cfg.model.path),
        dtype=cfg.model.dtype,
        pruner=cfg.pruner.name,
        pruner_params=pruner.params(),
        budget=cfg.budget,
        image_scale=float(cfg.pruner.image_scale),
        benchmark=cfg.benchmark.name,
        tasks=";".join(tasks),
        limit=cfg.limit,
        seed=cfg.seed,
        batch_size=cfg.batch_size,
        max_new_tokens=cfg.max_new_tokens,
        prompt_format=cfg.prompt_format,
        image_preprocess=cfg.image_preprocess,
        multi_image=cfg.multi_image,
        score_metric=cfg.benchmark.score,
        wandb_mode=cfg.wandb.mode,
        run_dir=str(run_dir),
        git_commit=commit,
        git_dirty=dirty,
        **store.library_versions(),
    )


def run(cfg: DictConfig) -> RunOutcome:
    validate(cfg)
    cfg = canonical(cfg)  # budget 0: every pre-LLM pruner's text-only run is `pruner=none budget=0`
    resolved = OmegaConf.to_container(cfg, resolve=True)
    pruner = build_pruner_from(cfg, model_type=_family(cfg))
    key = config_hash(identity(resolved, pruner))
    results_dir = Path(cfg.results_dir)
    csv_path = results_dir / "runs.csv"

    found = None if cfg.force else store.find_completed(csv_path, key)
    if found is not None:
        number, record = found
        row = RunRow.from_record(record)
        where = f"{csv_path} row {number}" if number else f"{row.run_dir}/row.json"
        if not number:  # a run killed between its row.json and its runs.csv line: complete the index
            number = store.append_row(csv_path, row)
            where += f" (runs.csv lacked it: added as row {number})"
        log(
            f"skipped: this config (hash {key}) already has a completed row: {where} "
            f"(run {row.run_id}, folder {row.run_dir}); pass force=true to run it again"
        )
        return RunOutcome("skipped", row.run_id, key, row, number, csv_path, Path(row.run_dir))

    check_device(str(cfg.device))
    import torch

    threads = torch.get_num_threads()
    if cfg.threads is not None:
        torch.set_num_threads(int(cfg.threads))
    try:
        return _execute(cfg, resolved, pruner, key, csv_path, results_dir)
    finally:
        torch.set_num_threads(threads)  # in-process callers get their setting back


def _execute(cfg: DictConfig, resolved: dict, pruner, key: str, csv_path: Path, results_dir: Path) -> RunOutcome:
    seed_everything(int(cfg.seed))
    tasks, include_path = resolve_tasks(cfg)
    check_budget_fits(pruner, cfg)
    model, processor, info = load(cfg)

    run_id = new_run_id(cfg, key)
    run_dir = results_dir / "runs" / run_id
    run_dir.mkdir(parents=True, exist_ok=False)
    OmegaConf.save(cfg, run_dir / "config.yaml", resolve=True)
    row = start_row(cfg, run_id, key, pruner, tasks, run_dir)
    row.model_family = info.family
    log(f"run {run_id}: {cfg.benchmark.name} ({', '.join(tasks)}) limit={cfg.limit} on {cfg.device}")

    from mmtok.eval.evaluate import evaluate  # defers lmms-eval and torch

    try:
        out = evaluate(
            model,
            processor,
            pruner,
            tasks=tasks,
            include_path=include_path,
            protocol=protocol_of(cfg),
        )
    except BaseException as exc:
        row.status = "failed"
        row.error = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
        store.write_json(run_dir / "row.json", row.as_dict())
        number = store.append_row(csv_path, row)
        log(f"FAILED: {row.error} (row {number} of {csv_path})")
        raise

    samples = [dataclasses.replace(s) for s in out.samples]
    add_prefill_flops(samples, model.config)
    lines = [s.as_dict() for s in samples]  # the store keeps plain JSON records
    metrics = {k: float(v) for k, v in out.metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    if out.peak_memory_bytes is not None:
        peak, peak_source = int(out.peak_memory_bytes), "torch.cuda.max_memory_allocated"
    else:
        from mmtok.timing import process_peak_rss_bytes  # defers torch

        peak, peak_source = process_peak_rss_bytes(), "process_max_rss"
    row = dataclasses.replace(
        row,
        **store.sample_aggregates(lines),
        **{col: metrics.get(col) for col in store.METRIC_COLUMNS},
        metrics_json=metrics,
        score=metrics.get(cfg.benchmark.score) if cfg.benchmark.score else None,
        wall_s=float(out.wall_s),
        device=out.device,
        peak_memory_bytes=peak,
        peak_memory_source=peak_source,
        status="completed",
    )

    store.write_samples(run_dir / "samples.jsonl", lines)
    store.write_json(run_dir / "metrics.json", metrics)
    summary = {k: v for k, v in row.as_dict().items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
    try:
        store.log_wandb(
            run_dir,
            mode=cfg.wandb.mode,
            project=cfg.wandb.project,
            entity=cfg.wandb.entity,
            tags=list(cfg.wandb.tags),
            name=run_id,
            config={**resolved, "config_hash": key, "pruner_params": pruner.params()},
            metrics=metrics,
            summary={**summary, **metrics},
        )
    except Exception as exc:  # the results are on disk already; do not lose the row over wandb
        print(
            f"[mmtok] warning: wandb logging failed ({type(exc).__name__}: {exc}); the run folder and row are written",
            file=sys.stderr,
        )
    store.write_json(run_dir / "row.json", row.as_dict())
    number = store.append_row(csv_path, row)

    score = f"{cfg.benchmark.score}={row.score:.4g}" if row.score is not None else "no score"
    log(
        f"done: {score}; {row.n_samples} samples, vision tokens {row.vision_tokens_mean:.1f} "
        f"(full {row.vision_tokens_full_mean:.1f}), total {row.total_s_mean * 1000:.1f} ms/sample mean, "
        f"wall {row.wall_s:.1f} s on {row.device}"
    )
    log(f"row {number} of {csv_path}; samples and config in {run_dir}")
    return RunOutcome("completed", run_id, key, row, number, csv_path, run_dir, samples, metrics)


@dataclass
class CellResult:
    cell: str
    status: str  # completed | skipped | failed
    error: str | None = None
    outcome: RunOutcome | None = None


def run_cells(cfg: DictConfig) -> list[CellResult]:
    """Run the job's cells in turn on one loaded model (the load cache keeps it between cells). A
    failing cell is recorded (its failed row, when it got that far) and the next cell still runs."""
    out = []
    for cell in cfg.cells:
        log(f"cell {cell} ({cfg.model.name}, {cfg.benchmark.name})")
        try:
            outcome = run(cell_config(cfg, cell))
            out.append(CellResult(cell, outcome.status, outcome=outcome))
        except Exception as exc:
            msg = f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}"
            print(f"[mmtok] cell {cell} failed: {msg}", file=sys.stderr, flush=True)
            out.append(CellResult(cell, "failed", msg))
    done = sum(r.status != "failed" for r in out)
    log(f"job done: {done}/{len(out)} cells completed or already done")
    return out


def main_job(cfg: DictConfig) -> None:
    """hydra.main's task: user errors → one line on stderr and exit code 2. A job of cells returns
    normally even when a cell failed (its failed row is written): exiting would stop the basic
    launcher's remaining jobs; run.py's end-of-sweep status (from the cells' files) exits 1 instead."""
    try:
        if cfg.cells:
            run_cells(cfg)
        else:
            run(cfg)
    except (ConfigError, ModelSourceError, store.ResultsError) as exc:
        print(f"error: {exc}", file=sys.stderr, flush=True)
        sys.exit(2)
