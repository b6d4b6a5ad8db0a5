"""The paper tables built from fabricated completed runs: every cell of an experiment holds the
paper's own printed score, so each derived number the builder prints (averages, counts, the 90 % /
80 % lines, IC, per-cell retention) must be exactly what `mmtok.report.averages` derives from the
paper's cells (tests/test_paper_arithmetic.py checks those against the printed numbers); rendered
cells are checked as strings; a cell without a run reads `missing` and empties what depends on it.

The experiments' cells are read from their YAML files, not composed, so these tests do not depend on
the pruner files the cells name (tests/test_report.py composes every experiment)."""

from __future__ import annotations

import csv
from dataclasses import fields
from pathlib import Path

import pytest
import yaml

from mmtok import report
from mmtok.report import averages, builders
from mmtok.report.specs import METRIC, RAW_UNITS, TABLES
from mmtok.run.schema import CONFIG_DIR
from mmtok.run.sweep import SweepCell
from mmtok.store import RunRow
from tests.test_paper_arithmetic import CHECKS

GRIDS = [n for n, s in TABLES.items() if s.kind == "grid" and n != "tiny"]


def experiment_grid(experiment: str) -> tuple[str, list[str], list[str]]:
    """(model, benchmarks, cells) of an experiment file, read as written."""
    spec = yaml.safe_load((CONFIG_DIR / "experiment" / f"{experiment}.yaml").read_text())
    (model,) = [d["override /model"] for d in spec["defaults"] if "override /model" in d]
    return model, spec["hydra"]["sweeper"]["params"]["benchmark"].split(","), spec["cells"]


def fabricate(name: str, monkeypatch, leave_out=()) -> None:
    """Completed rows holding the paper's printed scores for every cell of table `name` that the
    paper prints (leave_out: (experiment, benchmark, cell) left without a run)."""
    spec = TABLES[name]
    paper = {
        (c.model, c.method, c.budget, c.benchmark): c.score for c in builders._paper_cells() if c.table == spec.paper
    }
    cells: dict[str, list[SweepCell]] = {}
    for experiment, pmodel in zip(spec.experiments, spec.paper_models):
        model, benches, names = experiment_grid(experiment)
        unpruned = spec.unpruned_label(experiment, pmodel)
        out = []
        for bench in benches:
            for cell in names:
                metrics = {}
                for col, metric in spec.metric.items():
                    printed = paper.get((pmodel, *builders.paper_key(cell, unpruned), col))
                    if printed is not None and spec.our_bench(col) == bench:
                        metrics[metric] = float(printed) if metric in RAW_UNITS else float(printed) / 100
                done = metrics and (experiment, bench, cell) not in leave_out
                row = RunRow.from_record(
                    {"run_id": f"{experiment}-{bench}-{cell}", "status": "completed", "metrics_json": metrics}
                )
                out.append(
                    SweepCell(
                        experiment,
                        bench,
                        cell,
                        cell.partition("@")[0],
                        None,
                        f"h-{experiment}-{bench}-{cell}",
                        model,
                        Path("."),
                        row if done else None,
                        [f"experiment={experiment}", f"benchmark={bench}"],
                    )  # fmt: skip
                )
        cells[experiment] = out
    monkeypatch.setattr(builders, "experiment_cells", lambda experiment, overrides=(): cells[experiment])


def _lines(markdown: str, block: int = 0) -> dict[tuple[str, str], list[str]]:
    """The `block`-th markdown table's rows by (budget, method) → their cells."""
    tables, current = [], None
    for ln in markdown.splitlines():
        if ln.startswith("| budget"):
            current = {}
            tables.append(current)
        elif ln.startswith("| ") and current is not None:
            parts = [p.strip() for p in ln.strip("|").split(" | ")]
            current[(parts[0], parts[1])] = parts[2:]
        elif not ln.startswith("|"):
            current = None
    return tables[block]


@pytest.mark.parametrize("name", GRIDS)
def test_each_derived_number_is_the_papers_arithmetic_on_the_runs(name, monkeypatch):
    fabricate(name, monkeypatch)
    out = report.build(name, [])
    spec = TABLES[name]
    ours = {}
    for r in out.records:
        key = (spec.paper, r.model, r.method, str(r.budget), r.column)
        if r.ours is not None:
            ours[(*key, "score")] = r.ours
        if r.retained_pct is not None and r.benchmark:
            ours[(*key, "retained_pct")] = r.retained_pct
    wanted = [
        c for c in CHECKS
        if c.table == spec.paper and c.field in ("score", "retained_pct") and c.method not in spec.paper_only
        and (c.field == "score" or spec.details)
    ]  # fmt: skip
    assert wanted or name in ("table7", "table14")  # tables that print no derived number
    lines = {"threshold_90", "threshold_80", "image_contribution"}
    for c in wanted:
        if c.method in lines and c.column not in ("gqa", "mmbench", "mme", "pope", "sqa", "textvqa", "mmmu", "seed"):
            # a line's average: ours from the exact line (90.0), the paper's recomputation from its rounded cells
            assert averages.agrees(ours[c.key], c.printed), c.key
        else:
            assert ours[c.key] == pytest.approx(c.ours, abs=1e-9), c.key
    # every run cell shows its paper number with a zero difference
    for r in out.records:
        if r.benchmark and r.method not in lines and r.ours is not None and r.paper is not None:
            assert r.diff == pytest.approx(0, abs=1e-9), (r.method, r.budget, r.column)


def test_table21_rendered_counts_lines_and_a_missing_cell(monkeypatch):
    fabricate("table21", monkeypatch, leave_out={("table21", "textvqa", "mmtok@2")})
    out = report.build("table21", [])
    rows = _lines(out.markdown)
    head = next(ln for ln in out.markdown.splitlines() if ln.startswith("| budget"))
    assert head == (
        "| budget | method | gqa | mmbench | mme | pope | sqa | textvqa | mmmu | seed | avg retained % "
        "| high-IC avg retained % | n ≥ 90 % | n ≥ 80 % |"
    )
    assert list(rows)[:3] == [("576", "none"), ("576", "threshold_90"), ("576", "threshold_80")]
    assert list(rows)[-1] == ("0", "text_only")
    assert rows[("576", "threshold_90")][:3] == [
        "**55.7** / 55.7 (+0.0)",
        "**58.2** / 58.2 (+0.0)",
        "**1676** / 1676 (+0)",
    ]
    assert rows[("576", "threshold_90")][8:10] == ["**90.0** / 90.0 (+0.0)", "**90.0** / 90.0 (+0.0)"]
    assert rows[("576", "threshold_90")][10:] == ["— / —", "— / —"]  # no counts on the lines
    vz2 = rows[("2", "visionzip")]
    assert vz2[0] == "**35.9** / 35.9 (+0.0) [58.1%]"  # 35.94 / 61.9
    # by hand from its eight cells: Avg@8 58.397, Avg@5 43.014, SQA (91.1 %) and MMMU (93.1 %) reach 90 %
    assert vz2[8:] == ["**58.4** / 58.4 (+0.0)", "**43.0** / 43.0 (+0.0)", "**2** / 2 (+0)", "**2** / 2 (+0)"]
    mm2 = rows[("2", "mmtok")]
    assert mm2[5] == "missing / 42.4"  # its TextVQA run left out
    assert mm2[8] == "missing / 70.9" and mm2[9] == "**62.1** / 62.1 (+0.0)"  # Avg@8 needs TextVQA, Avg@5 not
    assert mm2[10:] == ["missing / 2", "missing / 3"]
    assert out.markdown.count("missing") == sum(t.count("missing") for t in rows[("2", "mmtok")]) + 1  # + legend


def test_table4_image_contribution_rows_per_model(monkeypatch):
    fabricate("table4", monkeypatch)
    out = report.build("table4", [])
    md = out.markdown
    assert "## llava15_7b (table4)" in md and "## llavanext_7b (table4_next)" in md
    assert list(_lines(md, 0)) == [("576", "none"), ("0", "text_only"), ("576", "image_contribution")]
    assert _lines(md, 0)[("576", "image_contribution")][0] == "**2.347** / 2.347 (+0.000)"  # (64.7 - 19.33) / 19.33
    assert _lines(md, 0)[("576", "none")][0] == "**64.7** / 64.7 (+0.0)"  # no retention column or [x%]
    # LLaVA-NeXT MMB: (67.9 - 17.87) / 17.87 = 2.7997, which the paper prints as 2.801 (rounding only)
    assert _lines(md, 1)[("2880", "image_contribution")][0] == "**2.800** / 2.801 (-0.001)"


def test_table11_raw_mean_and_table10_relative_to_unpooled_mmtok(monkeypatch):
    fabricate("table11", monkeypatch)
    rows = _lines(report.build("table11", []).markdown)
    assert rows[("576", "none")][6] == "**33.7** / 33.7 (+0.0)"  # mean of the six categories (33.69)
    assert "[" not in rows[("64", "mmtok")][0]  # raw scores: no retention
    fabricate("table10", monkeypatch)
    out = report.build("table10", [])
    rows = _lines(out.markdown)
    assert list(rows)[0] == ("64", "mmtok") and rows[("64", "mmtok")][-1] == "**100.0** / 100.0 (+0.0)"
    assert rows[("64", "mmtok_pool_mean_pre")][0].endswith("%]")  # retention against unpooled MMTok
    assert "`avg retained %` = mean over the benchmarks shown of score / mmtok score × 100" in out.markdown


def test_table20_and_its_main_text_view(monkeypatch):
    fabricate("table20", monkeypatch)
    out = report.build("table20", [])
    rows = _lines(out.markdown)
    assert rows[("r0.2", "mmtok")][2] == "**2217** / 2217 (+0) [95.3%]"  # MME, against the dynamic row
    assert list(rows)[:2] == [("r1.0", "none"), ("2048", "none")] and list(rows)[-1] == ("0", "text_only")
    tokens = _lines(out.markdown, 1)  # no run holds a token count here: ours missing, the paper's from its notes
    assert tokens[("r0.2", "mmtok")][2] == "missing / 173.5" and tokens[("0", "text_only")][2] == "missing / —"
    fabricate("table3", monkeypatch)
    three = report.build("table3", []).markdown
    assert "T̄ (mean vision tokens" not in three and "[95.3%]" not in three
    assert _lines(three)[("r0.2", "mmtok")][2] == "**2217** / 2217 (+0)"


def test_the_fine_tuned_visionzip_rows_are_paper_only(monkeypatch):
    fabricate("table1", monkeypatch)
    rows = _lines(report.build("table1", []).markdown)
    ft = rows[("192", "visionzip_ft (paper only)")]
    assert ft[0] == "not run / 60.1" and ft[-1] == "not run / 98.4"
    order = [k for k in rows if k[0] == "192"]
    assert order.index(("192", "visionzip_ft (paper only)")) == order.index(("192", "mmtok")) + 1


@pytest.mark.parametrize("name", ["table21", "table6"])
def test_plots_of_the_new_tables(name, monkeypatch, tmp_path):
    from mmtok.report.plots import plot

    fabricate(name, monkeypatch)
    paths = plot(name, report.build(name, []), tmp_path)
    assert [p.name for p in paths] == [f"{name}_{'budget' if name == 'table21' else 'bars'}.png"]
    assert paths[0].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_table12_efficiency_from_the_rows_wall_time_memory_and_tokens(monkeypatch):
    _, benches, names = experiment_grid("table12")
    rows = {
        "none": {"wall_s": 600.0, "peak_memory_bytes": 18 * 2**30, "vision_tokens_mean": 860.3, "mme_total": 2300.0},
        "mmtok@r0.1": {"wall_s": 400.4, "peak_memory_bytes": 16 * 2**30, "vision_tokens_mean": 85.5},
    }
    cells = [
        SweepCell("table12", "mme", c, c.partition("@")[0], None, f"h-{c}", "qwen25vl_7b", Path("."),
                  RunRow.from_record({"run_id": c, "status": "completed", **rows[c]}) if c in rows else None,
                  ["benchmark=mme"])
        for c in names
    ]  # fmt: skip
    assert benches == ["mme"] and names == ["none", "visionzip@r0.1", "divprune@r0.1", "mmtok@r0.1"]
    monkeypatch.setattr(builders, "experiment_cells", lambda experiment, overrides=(): cells)
    out = report.build("table12", [])
    got = _lines(out.markdown)
    assert got[("r1.0", "none")] == [
        "**600** / 675 (-75)", "not measured / 77.0", "**18.00** / 3.05 (+14.95)", "**2300** / —",
        "**860.3** / 867.6 (-7.3)",
    ]  # fmt: skip
    assert got[("r0.1", "mmtok")][0] == "**400** / 419 (-19)" and got[("r0.1", "mmtok")][4] == "**85.5** / 86.8 (-1.3)"
    assert got[("r0.1", "divprune")] == [
        "missing / 423", "not measured / 55.1", "missing / 0.71", "missing / —", "missing / 86.8",
    ]  # fmt: skip
    assert [c.cell for c in out.missing] == ["visionzip@r0.1", "divprune@r0.1"]


def test_a_tiny_mmstar_sweep_through_table11s_experiment_fills_its_layout(run_cli, tmp_path, monkeypatch, mmtok_cache):
    """experiment=table11 on the tiny LLaVA and the local MMStar (two of its cells): the rows land,
    and Table 11's layout (its columns read from the local benchmark) shows them with their Average
    = the mean of the six categories; the cells not run read missing."""
    from mmtok.report.specs import MMSTAR_COLUMNS, TableSpec

    args = [
        "model=tiny_llava", "benchmark=mmstar_local", "limit=6", "cells=[none,mmtok@8]", "max_new_tokens=2",
        "wandb.mode=disabled", "progress=false", "results_dir=res",
    ]  # fmt: skip
    res = run_cli(["experiment=table11", *args], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    spec = TableSpec(
        "tiny11", "table11", "grid", ("table11",), ("llava15_7b",), bench=dict.fromkeys(MMSTAR_COLUMNS, "mmstar_local")
    )
    monkeypatch.setitem(TABLES, "tiny11", spec)
    monkeypatch.chdir(tmp_path)
    out = report.build("tiny11", [f"cache_dir={mmtok_cache}", *args])
    assert len(out.cells) == 2 and not out.missing
    rows = _lines(out.markdown)
    assert list(rows) == [("576", "none"), ("8", "mmtok")]
    for key in rows:
        recs = {r.column: r.ours for r in out.records if (str(r.budget), r.method) == key}
        assert all(recs[c] is not None for c in MMSTAR_COLUMNS)
        assert recs["mmstar"] == pytest.approx(sum(recs[c] for c in MMSTAR_COLUMNS) / 6)
        assert rows[key][6].startswith(f"**{recs['mmstar']:.1f}** / ")


@pytest.mark.parametrize("name", sorted(TABLES))
def test_the_csv_writes_every_field_its_builder_fills(name, monkeypatch, tmp_path):
    """Each kind of table declares its .csv columns; none of the CellRecord fields its builder fills
    is left out of the file, and the file holds one row per record under exactly those columns."""
    if name in GRIDS:
        fabricate(name, monkeypatch)
    else:  # every cell completed, with every measurement a table reads
        metrics = {m: 0.5 for m in METRIC.values()}
        measured = {"wall_s": 2.0, "peak_memory_bytes": 2**30, "vision_tokens_mean": 64.0, "metrics_json": metrics}
        cells = {}
        for experiment in TABLES[name].experiments:
            model, benches, names = experiment_grid(experiment)
            cells[experiment] = [
                SweepCell(experiment, b, c, pruner, int(budget) if budget.isdigit() else None, f"h-{b}-{c}", model,
                          Path("."), RunRow.from_record({"run_id": f"{b}-{c}", "status": "completed", **measured}),
                          [f"benchmark={b}"])
                for b in benches for c in names for pruner, _, budget in [c.partition("@")]
            ]  # fmt: skip
        monkeypatch.setattr(builders, "experiment_cells", lambda experiment, overrides=(): cells[experiment])
    out = report.build(name, [])
    assert out.records and set(out.columns) <= {f.name for f in fields(report.CellRecord)}
    filled = {f.name for r in out.records for f in fields(r) if getattr(r, f.name) is not None}
    assert filled <= set(out.columns), sorted(filled - set(out.columns))
    _, csv_path = report.write(out, tmp_path)
    with open(csv_path, encoding="utf-8", newline="") as f:
        rows = list(csv.DictReader(f))
    assert tuple(rows[0]) == out.columns and len(rows) == len(out.records)
