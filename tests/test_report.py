"""Paper tables from the run folders: a tiny sweep → rows → results/tables/<table>.md/.csv in the
paper's layout; a killed sweep reruns only its missing cells; a column added later orphans nothing."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mmtok import report, store
from mmtok.report import specs
from mmtok.report.averages import NINE
from mmtok.run import sweep
from mmtok.run.compose import compose

from .conftest import offline_env

ROOT = Path(__file__).resolve().parent.parent
TINY = ["max_new_tokens=2", "limit=2", "cells=[none,mmtok@4,random@4]", "wandb.mode=disabled", "progress=false"]


def completed_folders(results_dir: Path) -> list[Path]:
    return [p.parent for p in results_dir.glob("runs/*/row.json") if json.loads(p.read_text())["status"] == "completed"]


def test_paper_average_is_reproduced_from_the_papers_own_cells(tmp_path):
    """Rows holding exactly the paper's Table-1 numbers (none + mmtok@192 on all nine benchmarks) give
    diff 0 in every cell, retained % per cell, and the paper's own Avg. (98.7) in the average column."""
    paper = {(r["method"], r["budget"], r["benchmark"]): float(r["score"]) for r in report.paper_rows("table1")}
    overrides = [f"results_dir={tmp_path}", "model=tiny_llava"]  # any model: the layout is the paper's
    cells = sweep.experiment_cells("table1", overrides)
    assert len(cells) == 9 * 19
    wanted = {("none", None): "576", ("mmtok", 192): "192"}
    for c in cells:
        if (c.pruner, c.budget) not in wanted:
            continue
        col = c.benchmark
        score = paper[(c.pruner, wanted[(c.pruner, c.budget)], col)]
        metric = specs.METRIC[col]
        stored = score if metric in specs.RAW_UNITS else score / 100
        d = tmp_path / "runs" / f"r-{c.pruner}-{c.benchmark}"
        d.mkdir(parents=True)
        store.write_samples(d / "samples.jsonl", [])
        store.write_json(d / "metrics.json", {metric: stored})
        store.write_json(
            d / "row.json",
            {
                "run_id": d.name,
                "config_hash": c.config_hash,
                "status": "completed",
                "time": "t",
                "metrics_json": {metric: stored},
            },
        )
    out = report.build("table1", overrides)
    assert len(out.missing) == 9 * 19 - 18
    recs = {(r.method, r.budget, r.column): r for r in out.records}
    for col in NINE:
        assert recs[("mmtok", 192, col)].diff == pytest.approx(0, abs=1e-9)
        ret = 100 * paper[("mmtok", "192", col)] / paper[("none", "576", col)]
        assert recs[("mmtok", 192, col)].retained_pct == pytest.approx(ret)
        assert recs[("fastv", 192, col)].ours is None and recs[("fastv", 192, col)].paper is not None
    average = recs[("mmtok", 192, "avg_retained_pct")]
    assert round(average.ours, 1) == 98.7 == average.paper
    assert recs[("divprune", 192, "avg_retained_pct")].ours is None  # no run → missing, not filled
    md = out.markdown.splitlines()
    assert "| 192 | mmtok | **60.1** / 60.1 (+0.0) [97.0%] |" in "\n".join(md)
    assert any(ln.startswith("| 192 | fastv | missing / 52.7 |") for ln in md)


def _sweep(tmp_path: Path, mmtok_cache: Path, *extra: str) -> subprocess.Popen:
    env = offline_env(MMTOK_CACHE=str(mmtok_cache))
    return subprocess.Popen(
        [sys.executable, str(ROOT / "run.py"), "experiment=tiny", *TINY, "results_dir=res", *extra],
        cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True,
    )  # fmt: skip


def test_tiny_sweep_to_table_kill_rerun_and_a_column_added_later(tmp_path, mmtok_cache, tiny_llava_path, monkeypatch):
    res = tmp_path / "res"
    total = 3 * 3  # three local benchmarks (one job each) x three cells
    # 1. kill the sweep once two cells have finished
    proc = _sweep(tmp_path, mmtok_cache)
    while len(completed_folders(res)) < 2 and proc.poll() is None:
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.communicate(timeout=60)
    done_before = len(completed_folders(res))
    assert 2 <= done_before < total, "the sweep finished before it could be killed"
    # 2. the rerun completes exactly the missing cells and skips the others
    proc = _sweep(tmp_path, mmtok_cache)
    log, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, log[-3000:]
    assert log.count("[mmtok] done: ") == total - done_before and log.count("[mmtok] skipped: ") == done_before
    assert f"[mmtok] {total - done_before} missing cell(s) in " in log  # planned from the run folders
    assert len(completed_folders(res)) == total

    # 3. the table: the paper's Table-1 layout, paper numbers in place, our cells filled, the rest missing
    monkeypatch.chdir(tmp_path)
    overrides = [*TINY, "results_dir=res"]
    assert report.main(["tables", "--only", "tiny", *overrides]) == 0
    md = (res / "tables" / "tiny.md").read_text().splitlines()
    table = [ln for ln in md if ln.startswith("| ")]
    assert (
        table[0]
        == "| budget | method | gqa | mmbench | mme | pope | sqa | vqav2 | textvqa | mmmu | seed | avg retained % |"
    )
    assert [ln.split(" | ")[:2] for ln in table[1:]] == [["| 576", "none"], ["| 4", "mmtok"], ["| 4", "random"]]
    none = table[1].split(" | ")
    assert none[2].startswith("**") and none[2].endswith(" / 61.9" if "(" not in none[2] else ")")  # gqa: ours / paper
    assert " / 61.9" in none[2] and " / 85.9" in none[5]
    assert none[3] == "missing / 64.7"  # mmbench: no run exists
    assert table[2].split(" | ")[3] == "missing / —"  # mmtok@4 has neither a run nor a paper number there
    with open(res / "tables" / "tiny.csv", newline="") as f:
        recs = list(csv.DictReader(f))
    gqa = [r for r in recs if r["column"] == "gqa"]
    assert len(gqa) == 3 and all(r["run_id"] for r in gqa) and gqa[0]["paper"] == "61.9"
    assert report.main(["plots", "--only", "tiny", *overrides]) == 0
    for png in ("tiny_budget.png", "tiny_latency.png"):
        assert (res / "plots" / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # 4. a column added after these runs: an older version wrote runs.csv and row.json without
    # `multi_image`; a new run widens the index, old rows still resume and still fill the table.
    old_header = [c for c in store.COLUMNS if c != "multi_image"]
    rows = store.read_rows(res / "runs.csv")
    with open(res / "runs.csv", "w", newline="") as f:
        w = csv.DictWriter(f, old_header, extrasaction="ignore")
        w.writeheader()
        w.writerows(rows)
    for folder in completed_folders(res):
        row = json.loads((folder / "row.json").read_text())
        del row["multi_image"]
        store.write_json(folder / "row.json", row)
    from mmtok.run.execute import run_cells

    base = [f"cache_dir={mmtok_cache}", "experiment=tiny", *overrides, "benchmark=gqa_local"]
    new = run_cells(compose([*base, "cells=[divprune@4,none,mmtok@4]"]))
    assert [r.status for r in new] == ["completed", "skipped", "skipped"]
    header = next(csv.reader(open(res / "runs.csv")))
    assert "multi_image" in header and len(store.read_rows(res / "runs.csv")) == total + 1
    out = report.build("tiny", overrides)
    assert len(out.cells) == 3 * 3 and not out.missing
    # make index rebuilds the same rows from the folders
    path, n = store.rebuild_index(res)
    assert n == total + 1


def test_a_failing_cell_does_not_take_its_neighbours_down(tmp_path, mmtok_cache, tiny_llava_path, monkeypatch):
    import mmtok.eval.evaluate as evaluation
    from mmtok.run.execute import run_cells

    real = evaluation.evaluate

    def flaky(model, processor, pruner, **kw):
        if pruner.name == "random":
            raise RuntimeError("cell exploded")
        return real(model, processor, pruner, **kw)

    monkeypatch.setattr(evaluation, "evaluate", flaky)
    cfg = compose(
        [f"cache_dir={mmtok_cache}", "experiment=tiny", *TINY[:2], "wandb.mode=disabled", "progress=false",
         f"results_dir={tmp_path}", "benchmark=pope_local", "cells=[random@4,mmtok@4]"]
    )  # fmt: skip
    out = run_cells(cfg)
    assert [r.status for r in out] == ["failed", "completed"] and "cell exploded" in out[0].error
    statuses = sorted(json.loads(p.read_text())["status"] for p in tmp_path.glob("runs/*/row.json"))
    assert statuses == ["completed", "failed"]


PROTOCOL_TABLES = [n for n in report.TABLES if n != "tiny"]


@pytest.mark.parametrize("name", PROTOCOL_TABLES)
def test_every_experiment_composes_pins_the_paper_protocol_and_covers_the_papers_cells(name):
    """Every cell of every experiment composes (its pruner file exists, its budget parses) and runs
    the paper's protocol: LLaVA-1.5 vicuna_v1 + pad, LLaVA-NeXT vicuna_v1 + crop, each with the task's
    own generation cap; Qwen2.5-VL its chat template at dynamic resolution (or Table 20's fixed one),
    128 new tokens at most. The cells cover every row the paper runs (not its derived lines, not the
    fine-tuned VisionZip it copies), on every benchmark column it prints."""
    from mmtok.report.builders import TEXT_ONLY, _paper_cells, paper_key

    spec = report.TABLES[name]
    derived = {"avg_retained_pct", "high_ic_avg_retained_pct", "n_ge90", "n_ge80", "mmstar"}
    lines = {"threshold_90", "threshold_80", "image_contribution"}
    for model in dict.fromkeys(spec.paper_models):
        grid, benches = set(), set()
        for experiment in [e for e, m in zip(spec.experiments, spec.paper_models) if m == model]:
            cells = sweep.experiment_cells(experiment)  # composes every cell of every job
            assert cells and all(len(c.config_hash) == 16 for c in cells)
            for job in dict.fromkeys(tuple(c.job) for c in cells):
                c = compose(list(job))
                assert c.model.name.startswith(model), (experiment, c.model.name)
                if model.startswith("qwen25vl"):
                    assert (c.prompt_format, c.image_preprocess, c.max_new_tokens) == ("hf", "crop", 128)
                    pixels = (2048 * 28 * 28,) * 2 if experiment == "table20_fixed" else (256 * 28 * 28, 2048 * 28 * 28)
                    assert (c.model.min_pixels, c.model.max_pixels) == pixels
                else:
                    assert c.prompt_format == "vicuna_v1"
                    assert c.image_preprocess == ("pad" if model.startswith("llava15") else "crop")
                    assert c.max_new_tokens == c.benchmark.task_max_new_tokens
            unpruned = spec.unpruned_label(experiment, model)
            grid |= {paper_key(c.cell, unpruned) for c in cells}
            benches |= {c.benchmark for c in cells}
        if spec.kind == "efficiency":  # Table 8's rows are in paper_efficiency.csv
            continue
        paper = [c for c in _paper_cells() if (c.table, c.model) == (spec.paper, model)]
        wanted = {(c.method, c.budget) for c in paper if c.method not in lines and c.method not in spec.paper_only}
        assert wanted - grid == set(), (name, model, wanted - grid)
        assert {m for m, _ in grid - wanted} <= {"random", "none", TEXT_ONLY}, (name, grid - wanted)
        columns = {c.benchmark for c in paper} - derived
        if spec.kind == "grid":
            assert {spec.our_bench(col) for col in columns} <= benches, (name, model)
    caps = {
        c: compose([f"benchmark={c}"]).benchmark.task_max_new_tokens
        for c in ("pope", "gqa", "mme", "mmbench", "seed", "mmstar", "ocrbench")
    }
    assert caps == {"pope": 128, "gqa": 16, "mme": 16, "mmbench": 1024, "seed": 1024, "mmstar": 1024, "ocrbench": 128}


def test_a_failed_cell_leaves_the_other_jobs_running_and_the_sweep_reports_it(run_cli, tmp_path, tiny_llavanext_path):
    """mmtok@2 cannot give LLaVA-NeXT one token per crop (checked from the checkpoint, so after the
    preflight): both jobs still run their other cell, and the end-of-sweep status, read from the
    run folders, names the missing cells and exits 1."""
    args = ["experiment=tiny", "model=tiny_llavanext", "benchmark=pope_local,gqa_local", "cells=[mmtok@2,none]"]
    res = run_cli([*args, *TINY[:2], "wandb.mode=disabled", "progress=false", "results_dir=res"], cwd=tmp_path)
    assert res.returncode == 1, res.stdout[-2000:] + res.stderr[-2000:]
    assert res.stderr.count("cell mmtok@2 failed: ConfigError: ") == 2
    rows = [json.loads(p.read_text()) for p in (tmp_path / "res").glob("runs/*/row.json")]
    assert sorted((r["benchmark"], r["pruner"], r["status"]) for r in rows) == [
        ("gqa_local", "none", "completed"),
        ("pope_local", "none", "completed"),
    ]
    assert "[mmtok] sweep ended with 2 cell(s) missing in 2 job(s) (from the run folders)" in res.stdout
