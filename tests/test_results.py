"""runs.csv (fixed columns, locked atomic appends), resume lookup, aggregates, wandb offline files."""

from __future__ import annotations

import csv
import dataclasses
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from mmtok import store
from mmtok.run.identity import config_hash
from tests._wandb import wandb_offline_records

ROOT = Path(__file__).resolve().parent.parent


def _row(i: int, **kw) -> dict:
    row = {c: f"v{i}" for c in ("run_id", "model", "pruner", "benchmark")}
    row.update(config_hash=f"h{i % 3}", status="completed", budget=i, score=i / 7, pruner_params={"alpha": 0.5, "i": i})
    row.update(kw)
    return row


def test_columns_are_the_run_row_fields_and_documented():
    """runs.csv's columns are RunRow's fields, in order, and docs/results.md documents each one."""
    assert store.COLUMNS == tuple(f.name for f in dataclasses.fields(store.RunRow))
    assert len(store.COLUMNS) == len(set(store.COLUMNS))
    readme = (ROOT / "docs" / "results.md").read_text()
    table = readme.split("| column | meaning |", 1)[1].split("\n\n", 1)[0]
    documented = set(re.findall(r"^\| `([a-z0-9_]+)` \|", table, re.M))
    latency = {c for c in store.COLUMNS if c in store.LATENCY_COLUMNS}
    # latency columns are documented as one pattern row: `<stage>_s_<stat>`
    assert "| `<stage>_s_<stat>` |" in table
    assert set(store.COLUMNS) - latency == documented, set(store.COLUMNS) - latency ^ documented


def test_append_writes_header_once_and_keeps_types(tmp_path):
    path = tmp_path / "runs.csv"
    assert store.append_row(path, _row(1)) == 1
    assert store.append_row(path, _row(2, error="x\ny")) == 2
    with open(path, newline="") as f:
        reader = csv.reader(f)
        header = next(reader)
        rows = list(reader)
    assert tuple(header) == store.COLUMNS
    assert len(rows) == 2 and all(len(r) == len(header) for r in rows)
    got = store.read_rows(path)
    assert got[1]["error"] == "x y"  # one physical line per row
    assert float(got[0]["score"]) == 1 / 7
    assert json.loads(got[1]["pruner_params"]) == {"alpha": 0.5, "i": 2}
    assert got[0]["limit"] == ""


def test_append_rejects_unknown_columns_and_foreign_files(tmp_path):
    path = tmp_path / "runs.csv"
    with pytest.raises(store.ResultsError, match="does not document: accuracy"):
        store.append_row(path, {"accuracy": 1})
    path.write_text("a,b\n1,2\n")
    with pytest.raises(store.ResultsError, match="move it aside"):
        store.append_row(path, _row(1))
    assert path.read_text() == "a,b\n1,2\n"


_WRITER = """
import sys
from mmtok import store
tag, n = sys.argv[2], int(sys.argv[3])
for i in range(n):
    store.append_row(sys.argv[1], {"run_id": f"{tag}-{i}", "status": "completed", "error": "z" * 2000,
                                      "metrics_json": {"k": list(range(200))}})
"""


def test_concurrent_appends_from_processes_are_all_intact(tmp_path):
    path = tmp_path / "runs.csv"
    env = {"PYTHONPATH": str(ROOT)}
    import os

    procs = [
        subprocess.Popen([sys.executable, "-c", _WRITER, str(path), tag, "25"], env={**os.environ, **env})
        for tag in ("a", "b", "c")
    ]
    assert [p.wait(timeout=120) for p in procs] == [0, 0, 0]
    rows = store.read_rows(path)
    assert sorted(r["run_id"] for r in rows) == sorted(f"{t}-{i}" for t in "abc" for i in range(25))
    assert all(r["error"] == "z" * 2000 and json.loads(r["metrics_json"]) == {"k": list(range(200))} for r in rows)
    assert not list(tmp_path.glob(".runs.csv.*.tmp"))


def test_find_completed_ignores_failed_and_other_configs(tmp_path):
    path = tmp_path / "runs.csv"
    assert store.find_completed(path, "h1") is None
    store.append_row(path, _row(1, config_hash="h1", status="failed"))
    store.append_row(path, _row(2, config_hash="h2"))
    assert store.find_completed(path, "h1") is None
    store.append_row(path, _row(3, config_hash="h1"))
    store.append_row(path, _row(4, config_hash="h1"))
    number, row = store.find_completed(path, "h1")
    assert number == 4 and row["run_id"] == "v4"


def test_config_hash_is_order_independent_and_sensitive():
    a = {"model": {"name": "m", "dtype": "float16"}, "budget": 64}
    b = {"budget": 64, "model": {"dtype": "float16", "name": "m"}}
    assert config_hash(a) == config_hash(b)
    assert config_hash(a) != config_hash({**a, "budget": 128})
    assert re.fullmatch(r"[0-9a-f]{16}", config_hash(a))


def test_sample_aggregates_match_numpy():
    rng = np.random.default_rng(0)
    samples = [
        {
            "vision_s": float(rng.random()),
            "select_s": float(rng.random()),
            "prefill_s": float(rng.random()),
            "decode_s": float(rng.random()),
            "total_s": float(rng.random()),
            "vision_tokens": int(k),
            "vision_tokens_full": 36,
            "equivalent_tokens": None if i % 2 else 10.5,
            "prefill_flops": 1000 + i,
            "new_tokens": i % 4 + 1,
        }
        for i, k in enumerate(rng.integers(4, 30, size=11))
    ]
    agg = store.sample_aggregates(samples)
    for stage in store.STAGES:
        xs = np.array([s[f"{stage}_s"] for s in samples])
        assert agg[f"{stage}_s_mean"] == pytest.approx(xs.mean())
        assert agg[f"{stage}_s_p50"] == pytest.approx(np.median(xs))
        assert agg[f"{stage}_s_p90"] == pytest.approx(np.quantile(xs, 0.9))
    kept = [s["vision_tokens"] for s in samples]
    assert (agg["vision_tokens_min"], agg["vision_tokens_max"]) == (min(kept), max(kept))
    assert agg["vision_tokens_mean"] == pytest.approx(np.mean(kept))
    eq = [10.5 if i % 2 == 0 else s["vision_tokens"] for i, s in enumerate(samples)]
    assert agg["equivalent_tokens_mean"] == pytest.approx(np.mean(eq))
    assert agg["n_samples"] == 11 and agg["prefill_flops_mean"] == pytest.approx(1005)
    assert store.stats([None, None]) == {"mean": None, "p50": None, "p90": None}


def test_wandb_offline_roundtrip(tmp_path):
    folder = store.log_wandb(
        tmp_path,
        mode="offline",
        project="mmtok-test",
        entity=None,
        tags=["t"],
        name="roundtrip",
        config={"budget": 16, "model": {"name": "tiny"}},
        metrics={"pope_f1_avg": 0.75, "pope_random_acc": 0.5},
        summary={"total_s_mean": 0.125, "pope_f1_avg": 0.75, "budget": 16},
    )
    assert folder is not None and folder.is_relative_to(tmp_path / "wandb")
    rec = wandb_offline_records(folder)
    assert rec["history"]["pope_f1_avg"] == 0.75 and rec["history"]["pope_random_acc"] == 0.5
    assert rec["summary"]["total_s_mean"] == 0.125 and rec["summary"]["pope_f1_avg"] == 0.75
    assert rec["config"]["budget"] == {"value": 16} or rec["config"]["budget"] == 16
    assert (
        store.log_wandb(
            tmp_path, mode="disabled", project="x", entity=None, tags=[], name="n", config={}, metrics={}, summary={}
        )
        is None
    )


# -- run folders are the source of truth; runs.csv is an index ------------------------------------
def _folder(results_dir: Path, run_id: str, *, complete: bool = True, **row) -> Path:
    d = results_dir / "runs" / run_id
    d.mkdir(parents=True)
    row = {"run_id": run_id, "status": "completed", "config_hash": f"h-{run_id}", "time": run_id, **row}
    if complete:
        store.write_samples(d / "samples.jsonl", [{"answer": "yes"}])
        store.write_json(d / "metrics.json", {"m": 1.0})
    store.write_json(d / "row.json", row)
    return d


def test_an_index_written_with_other_columns_is_widened_not_refused(tmp_path):
    """An older version wrote runs.csv without `multi_image` and with a column this one dropped:
    appending keeps every old row and value under the union of both headers."""
    path = tmp_path / "runs.csv"
    old_header = [c for c in store.COLUMNS if c != "multi_image"] + ["retired_metric"]
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, old_header)
        w.writeheader()
        w.writerow({"run_id": "old", "config_hash": "h0", "status": "completed", "score": "0.5", "retired_metric": "7"})
    assert store.append_row(path, _row(1, multi_image="first")) == 2
    rows = store.read_rows(path)
    assert [r["run_id"] for r in rows] == ["old", "v1"]
    assert rows[0]["retired_metric"] == "7" and rows[0]["multi_image"] == "" and rows[0]["score"] == "0.5"
    assert rows[1]["multi_image"] == "first" and rows[1]["retired_metric"] == ""
    assert next(csv.reader(open(path)))[-1] == "retired_metric"
    assert store.find_completed(path, "h0")[1]["run_id"] == "old"  # the old row still resumes
    assert store.append_row(path, _row(2)) == 3  # and the widened file takes further rows


def test_the_index_is_rebuilt_from_the_run_folders(tmp_path):
    _folder(tmp_path, "r1", score=0.25)
    _folder(tmp_path, "r2", new_column="x")  # a column a later version added
    _folder(tmp_path, "r3", complete=False)  # row.json without samples/metrics: not a result
    _folder(tmp_path, "r4", status="failed", complete=False)
    store.append_row(tmp_path / "runs.csv", _row(9, run_id="copied-in", time="r0"))  # no folder: kept
    path, n = store.rebuild_index(tmp_path)
    rows = store.read_rows(path)
    assert n == 4 and [r["run_id"] for r in rows] == ["copied-in", "r1", "r2", "r4"]
    assert rows[1]["score"] == "0.25" and rows[2]["new_column"] == "x" and rows[3]["status"] == "failed"
    (tmp_path / "runs.csv").unlink()  # a lost index does not make finished runs look missing
    r1 = json.loads((tmp_path / "runs/r1/row.json").read_text())
    assert store.find_completed(tmp_path / "runs.csv", "h-r1") == (0, r1)
    assert store.find_completed(tmp_path / "runs.csv", "h-r3") is None


def test_a_run_row_reads_back_from_the_index_with_its_types(tmp_path):
    """runs.csv holds strings; RunRow.from_record parses each back to its field's type, and a row of
    an older index (fewer columns) reads with the missing ones as None."""
    row = store.RunRow(
        time="2026-12-02T15:00:00+00:00", run_id="r1", config_hash="h", status="completed", git_commit="abc",
        git_dirty=False, model="m", model_path="p", dtype="float32", pruner="mmtok", pruner_params={"alpha": 0.5},
        budget=64, benchmark="pope", tasks="a;b", limit=None, seed=0, batch_size=1, max_new_tokens=16,
        prompt_format="hf", image_preprocess="crop", multi_image="error", score_metric="pope_f1_avg", score=0.8125,
        wall_s=1.5, n_samples=4, vision_tokens_min=64, torch_version="t", transformers_version="t",
        lmms_eval_version="l", wandb_mode="disabled", run_dir="d",
    )  # fmt: skip
    store.append_row(tmp_path / "runs.csv", row)
    (record,) = store.read_rows(tmp_path / "runs.csv")
    assert record["budget"] == "64" and record["git_dirty"] == "false"  # strings on disk
    assert store.RunRow.from_record(record) == row
    old = store.RunRow.from_record({"run_id": "r0", "budget": "8", "status": "completed"})
    assert old.budget == 8 and old.score is None and old.model is None
