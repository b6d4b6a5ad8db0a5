"""Where a run's results go: one row in `<results_dir>/runs.csv`, a per-run folder, and wandb.

- `runs.csv` has the fixed columns of `COLUMNS` (documented in README.md, "Results"). Rows are
  appended under a file lock (`runs.csv.lock`) by rewriting the file to a temporary name and
  renaming it over the old one, so concurrent runs (several processes, SLURM array jobs on a shared
  filesystem) each add one intact row and a reader never sees half a row.
- `<results_dir>/runs/<run_id>/`: `config.yaml` (the resolved config), `samples.jsonl` (one record
  per answered question), `metrics.json` (every metric lmms-eval produced), `row.json` (the CSV row),
  and `wandb/` (the offline wandb run, when wandb.mode=offline).
- The run folders are the source of truth: `runs.csv` is an index of their row.json files, rebuilt
  by `rebuild_index` (`make index`); a column added later widens the index instead of orphaning it.
- Resume: `config_hash` hashes the resolved config without the operational keys (force, progress,
  results_dir, cache_dir, wandb) and with the pruner's full parameters; `find_completed` finds a
  completed run with that hash (in a run folder or the index).
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
import os
import subprocess
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

STAGES = ("vision", "select", "prefill", "decode", "total")
STATS = ("mean", "p50", "p90")

# The paper's metrics plus the per-split / per-part numbers behind them. Every run fills the ones of
# its benchmark; the others stay empty. `metrics_json` keeps every metric the evaluation produced.
METRIC_COLUMNS = (
    "pope_f1_avg",
    "pope_acc_avg",
    "pope_f1_pooled",
    "pope_random_f1",
    "pope_random_acc",
    "pope_popular_f1",
    "pope_popular_acc",
    "pope_adversarial_f1",
    "pope_adversarial_acc",
    "gqa_exact_match",
    "mme_perception",
    "mme_cognition",
    "mme_total",
    "scienceqa_img_exact_match",
    "mmbench_en_dev_gpt_eval_score",
    "textvqa_val_exact_match",
    "seedbench_seed_all",
    "seedbench_seed_image",
    "mmmu_val_mmmu_acc",
    "vqav2_val_exact_match",
)

LATENCY_COLUMNS = tuple(f"{stage}_s_{stat}" for stage in STAGES for stat in STATS)

COLUMNS = (
    # when and what code
    "time",
    "run_id",
    "config_hash",
    "status",
    "error",
    "git_commit",
    "git_dirty",
    # what ran
    "model",
    "model_path",
    "model_family",
    "dtype",
    "pruner",
    "pruner_params",
    "budget",
    "benchmark",
    "tasks",
    "limit",
    "seed",
    "batch_size",
    "max_new_tokens",
    "prompt_format",
    "image_preprocess",
    "multi_image",
    # what it scored
    "n_samples",
    "score_metric",
    "score",
    *METRIC_COLUMNS,
    "metrics_json",
    # what it cost
    *LATENCY_COLUMNS,
    "wall_s",
    "device",
    "peak_memory_bytes",
    "peak_memory_source",
    "vision_tokens_mean",
    "vision_tokens_min",
    "vision_tokens_max",
    "vision_tokens_full_mean",
    "equivalent_tokens_mean",
    "prefill_flops_mean",
    "new_tokens_mean",
    # environment and where the rest is
    "torch_version",
    "transformers_version",
    "lmms_eval_version",
    "wandb_mode",
    "run_dir",
)

# Columns that are legitimately empty in a completed row: the other benchmarks' metrics, `error`,
# a `limit` / `budget` of null (whole benchmark / keep all).
OPTIONAL_COLUMNS = frozenset({"error", "limit", "budget", *METRIC_COLUMNS})


class ResultsError(RuntimeError):
    """runs.csv cannot be used as it is (one-line message)."""


# -- hashing and provenance ------------------------------------------------------------------------
def config_hash(identity: dict) -> str:
    blob = json.dumps(identity, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def git_info(root: str | Path) -> tuple[str, bool | None]:
    """(HEAD commit or 'unknown', whether tracked files differ from it or None if unknown)."""
    try:
        commit = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()
        status = subprocess.run(
            ["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=30,
            check=True,
        ).stdout
        return commit, bool(status.strip())
    except Exception:
        return "unknown", None


def library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for col, dist in (
        ("torch_version", "torch"),
        ("transformers_version", "transformers"),
        ("lmms_eval_version", "lmms_eval"),
    ):
        try:
            out[col] = version(dist)
        except PackageNotFoundError:
            out[col] = "not installed"
    return out


# -- aggregates ------------------------------------------------------------------------------------
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


# -- runs.csv --------------------------------------------------------------------------------------
def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value).replace("\r", " ").replace("\n", " ")


def _csv_line(values: Iterable[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(list(values))
    return buf.getvalue()


def _header_line() -> str:
    return _csv_line(COLUMNS)


def index_columns(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """This version's COLUMNS, then any other column an older/newer index or row carried (sorted)."""
    return (*COLUMNS, *sorted(set(extra) - set(COLUMNS)))


def _write_index(csv_path: Path, header: tuple[str, ...], rows: Iterable[dict]) -> None:
    tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(_csv_line(header))
        for row in rows:
            f.write(_csv_line(_cell(row.get(c)) for c in header))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, csv_path)


def append_row(csv_path: str | Path, row: dict) -> int:
    """Append `row` (keys ⊆ COLUMNS) to runs.csv under its lock; returns its 1-based data-row number.

    runs.csv is an index of the run folders (each holds its own row.json), not the source of truth:
    a file written by a version with other columns is rewritten under the union of both headers
    (old rows keep their values, new columns stay empty for them), never refused or dropped."""
    from filelock import FileLock

    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ResultsError(f"row has columns that runs.csv does not document: {', '.join(sorted(unknown))}")
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(csv_path) + ".lock", timeout=600):
        existing = csv_path.read_text(encoding="utf-8") if csv_path.exists() else ""
        header_line = existing.split("\n", 1)[0] if existing else ""
        if existing and header_line.strip() == _header_line().strip():
            if not existing.endswith("\n"):
                existing += "\n"
            n_rows = sum(1 for _ in csv.DictReader(io.StringIO(existing))) + 1
            tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(existing + _csv_line(_cell(row.get(c)) for c in COLUMNS))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, csv_path)
            return n_rows
        old = list(csv.DictReader(io.StringIO(existing))) if existing else []
        old_header = next(csv.reader(io.StringIO(header_line)), []) if existing else []
        if existing and not {"run_id", "config_hash", "status"} <= set(old_header):
            raise ResultsError(
                f"{csv_path} is not a runs index (no run_id/config_hash/status columns); "
                f"move it aside or pass results_dir=<another folder>"
            )
        _write_index(csv_path, index_columns(old_header), [*old, row])
        return len(old) + 1


def rebuild_index(results_dir: str | Path) -> tuple[Path, int]:
    """Rewrite `<results_dir>/runs.csv` from the run folders' row.json files (`make index`).

    Rows of the old index whose folder is gone are kept (nothing is lost); the header is the union
    of this version's columns and every column any row carries. Returns (path, number of rows)."""
    from filelock import FileLock

    results_dir = Path(results_dir)
    csv_path = results_dir / "runs.csv"
    results_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(csv_path) + ".lock", timeout=600):
        folder_rows = folder_row_list(results_dir)
        seen = {r.get("run_id") for r in folder_rows}
        kept = [r for r in read_rows(csv_path) if r.get("run_id") not in seen]
        rows = sorted([*kept, *folder_rows], key=lambda r: (str(r.get("time") or ""), str(r.get("run_id") or "")))
        extra = {k for r in rows for k in r}
        _write_index(csv_path, index_columns(extra), rows)
    return csv_path, len(rows)


def read_rows(csv_path: str | Path) -> list[dict[str, str]]:
    csv_path = Path(csv_path)
    if not csv_path.exists():
        return []
    with open(csv_path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def folder_row_list(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every run folder's row.json under `<results_dir>/runs/` (the source of truth), oldest first.
    A completed row counts only when its folder also holds metrics.json and samples.jsonl."""
    out = []
    for path in sorted(Path(results_dir).glob("runs/*/row.json")):
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a half-copied folder: not a result
        if row.get("status") == "completed" and not all(
            (path.parent / f).exists() for f in ("metrics.json", "samples.jsonl")
        ):
            continue
        out.append(row)
    return sorted(out, key=lambda r: (str(r.get("time") or ""), str(r.get("run_id") or "")))


def all_rows(results_dir: str | Path) -> list[dict[str, Any]]:
    """The run folders' rows plus index rows that have no folder (older or copied-in results)."""
    results_dir = Path(results_dir)
    rows = folder_row_list(results_dir)
    seen = {r.get("run_id") for r in rows}
    return [*(r for r in read_rows(results_dir / "runs.csv") if r.get("run_id") not in seen), *rows]


def find_completed(csv_path: str | Path, key: str) -> tuple[int, dict[str, Any]] | None:
    """(1-based row number in runs.csv, or 0 when the index lacks it; row) of the latest completed
    run whose config_hash is `key`, from the run folders next to `csv_path` and the index itself
    (so a rebuilt, reordered or stale index never makes a finished run look missing)."""
    csv_path = Path(csv_path)
    positions = {r.get("run_id"): i for i, r in enumerate(read_rows(csv_path), start=1)}
    found, best = None, None
    for row in all_rows(csv_path.parent):
        if row.get("config_hash") != key or row.get("status") != "completed":
            continue
        pos = positions.get(row.get("run_id"), 0)
        order = (0, pos, "") if pos else (1, 0, str(row.get("time") or ""))
        if best is None or order >= best:
            found, best = (pos, row), order
    return found


# -- the run folder --------------------------------------------------------------------------------
def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_samples(path: Path, samples: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_samples(path: str | Path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# -- wandb -----------------------------------------------------------------------------------------
def log_wandb(
    run_dir: Path,
    *,
    mode: str,
    project: str,
    entity: str | None,
    tags: list[str],
    name: str,
    config: dict,
    metrics: dict[str, float],
    summary: dict[str, Any],
) -> Path | None:
    """Log one run (metrics as step 0, metrics + row aggregates in the summary); returns the wandb
    run folder (offline: `run_dir/wandb/offline-run-*`), or None when disabled."""
    if mode == "disabled":
        return None
    import wandb

    run = wandb.init(
        mode=mode,
        project=project,
        entity=entity,
        tags=list(tags) or None,
        name=name,
        dir=str(run_dir),
        config=config,
        settings=wandb.Settings(console="off", silent=True),
    )
    try:
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        run.log(numeric)
        run.summary.update({k: v for k, v in summary.items() if v is not None})
        folder = Path(run.dir).parent if run.dir else None
    finally:
        run.finish()
    if mode == "offline" and folder is not None:
        _wait_for_offline_file(folder)
    return folder


def _offline_record_kinds(run_folder: Path) -> set[str]:
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    kinds: set[str] = set()
    for path in sorted(Path(run_folder).glob("run-*.wandb")):
        ds = datastore.DataStore()
        try:
            ds.open_for_scan(str(path))
            while (data := ds.scan_data()) is not None:
                rec = pb.Record()
                rec.ParseFromString(data)
                kinds.add(rec.WhichOneof("record_type"))
        except Exception:  # a file still being written: read again later
            continue
    return kinds


def _wait_for_offline_file(run_folder: Path, patience_s: float = 60.0) -> None:
    """wandb's writer (wandb-core) may still be writing the run file when `finish()` returns; wait
    until it holds the run's exit record, so the folder is complete (syncable, readable) on return."""
    import time
    import warnings

    deadline = time.monotonic() + patience_s
    while "exit" not in _offline_record_kinds(run_folder):
        if time.monotonic() > deadline:
            warnings.warn(
                f"wandb offline run file in {run_folder} is still incomplete after {patience_s:.0f} s", stacklevel=2
            )
            return
        time.sleep(0.05)


def wandb_offline_records(run_folder: str | Path) -> dict[str, dict[str, Any]]:
    """What an offline run file holds: {"config": {...}, "history": {...}, "summary": {...}} (last values)."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    files = sorted(Path(run_folder).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_folder}")
    out: dict[str, dict[str, Any]] = {"config": {}, "history": {}, "summary": {}}
    ds = datastore.DataStore()
    ds.open_for_scan(str(files[0]))
    while True:
        data = ds.scan_data()
        if data is None:
            break
        rec = pb.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        items = {
            "history": lambda: rec.history.item,
            "summary": lambda: rec.summary.update,
            "config": lambda: rec.config.update,
            "run": lambda: rec.run.config.update,
        }.get(kind)
        if items is None:
            continue
        target = out["config" if kind == "run" else kind]
        for item in items():
            key = item.key or "/".join(item.nested_key)
            try:
                target[key] = json.loads(item.value_json)
            except ValueError:
                target[key] = item.value_json
    return out
