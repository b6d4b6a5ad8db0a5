"""Building a table: every cell of its experiments looked up by config hash among the completed runs
(`mmtok.run.sweep`), set beside the paper's number, written as markdown + csv.

A cell shows only a run of exactly that config; a cell without one is shown as `missing`, never
filled. Units are the paper's: percentages (x100 of lmms-eval's fractions) except MME (raw
perception + cognition points) and MMBench (lmms-eval reports percent already). Retained % is
against OUR OWN unpruned row of the same table; the average column is the paper's: the mean over
the row's benchmarks of (score / unpruned score x 100), computed only when every benchmark of the
row has a run.
"""

from __future__ import annotations

import csv
import io
import json
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mmtok.report import averages
from mmtok.report.specs import METRIC, PAPER_CSV, PAPER_EFFICIENCY_CSV, RAW_UNITS, TABLES, TableSpec
from mmtok.run.sweep import SweepCell, experiment_cells

MISSING = "missing"
NOT_IN_PAPER = "—"


def value(row: dict | None, metric: str) -> float | None:
    """`metric` of a row (a row.json dict or an index row of strings) in the paper's units."""
    if row is None:
        return None
    v = row.get(metric)
    if v in (None, ""):
        m = row.get("metrics_json")
        m = json.loads(m) if isinstance(m, str) and m else (m or {})
        v = m.get(metric)
    if v in (None, ""):
        return None
    v = float(v)
    if math.isnan(v):
        return None
    return v if metric in RAW_UNITS else 100.0 * v


# -- the paper's numbers --------------------------------------------------------------------------
def paper_rows(table: str) -> list[dict[str, str]]:
    with open(PAPER_CSV, encoding="utf-8", newline="") as f:
        return [r for r in csv.DictReader(f) if r["table"] == table]


def _fmt(v: float | None, digits: int = 1) -> str:
    return MISSING if v is None else f"{v:.{digits}f}"


def _ours(v: float | None, digits: int = 1) -> str:
    return MISSING if v is None else f"**{v:.{digits}f}**"


def _signed(v: float | None) -> str:
    return "" if v is None else f"{v:+.1f}"


# -- grid tables (1, 17, 18, 19, tiny) ------------------------------------------------------------
@dataclass
class TableOut:
    name: str
    markdown: str
    records: list[dict[str, Any]]  # the .csv: one record per cell
    cells: list[SweepCell]

    @property
    def missing(self) -> list[SweepCell]:
        return [c for c in self.cells if c.row is None]


def _header(spec: TableSpec, cells: list[SweepCell], explain: str) -> str:
    done = sum(c.row is not None for c in cells)
    return (
        f"# {spec.name}: ours beside the paper ({spec.paper})\n\n"
        f"{done} of {len(cells)} cells have a completed run (experiments: {', '.join(spec.experiments)}). "
        f"Each cell: **ours** / paper (ours − paper) [retained % of our unpruned row]. `{MISSING}`: no completed "
        f"run for that exact config; `{NOT_IN_PAPER}`: the paper has no number there.\n\n{explain}\n\n{spec.note}\n\n"
    )


def build_grid(spec: TableSpec, overrides: list[str]) -> TableOut:
    paper = paper_rows(spec.paper)
    columns = list(dict.fromkeys(r["benchmark"] for r in paper if r["benchmark"] != "avg_retained_pct"))
    full = next(r["budget"] for r in paper if r["method"] == "none")
    pnum = {
        (r["method"], None if r["method"] == "none" else int(r["budget"]), r["benchmark"]): float(r["score"])
        for r in paper
    }
    cells = experiment_cells(spec.experiments[0], overrides)
    by = {(c.pruner, c.budget, c.benchmark): c for c in cells}
    order = list(dict.fromkeys((r["method"], None if r["method"] == "none" else int(r["budget"])) for r in paper))
    for c in cells:  # our extra rows (random) after the paper's rows of the same budget
        key = (c.pruner, c.budget)
        if key not in order:
            last = max((i for i, k in enumerate(order) if k[1] == c.budget), default=len(order) - 1)
            order.insert(last + 1, key)
    order = [k for k in order if any((k[0], k[1], spec.our_bench(col)) in by for col in columns)]

    def ours(method, budget, col):
        c = by.get((method, budget, spec.our_bench(col)))
        return c, value(c.row if c else None, spec.metric[col])

    # the paper's arithmetic (mmtok.report.averages): per-cell retention and Avg over the row's
    # benchmarks, both against our own unpruned row
    mine = {(m, b, col): v for m, b in order for col in columns if (v := ours(m, b, col)[1]) is not None}
    retained = averages.derive(averages.Rule("retained_pct", "retention", tuple(columns)), mine)
    averaged = averages.derive(averages.avg(tuple(columns)), mine)
    records, lines = [], []
    head = ["budget", "method", *columns, "avg retained %"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for method, budget in order:
        cols_md = []
        for col in columns:
            cell, v = ours(method, budget, col)
            p = pnum.get((method, budget, col))
            ret = retained.get((method, budget, col))
            digits = 0 if col == "mme" else 1
            text = f"{_ours(v, digits)} / {NOT_IN_PAPER if p is None else _fmt(p, digits)}"
            if v is not None and p is not None:
                text += f" ({_signed(v - p)})"
            if ret is not None and method != "none":
                text += f" [{ret:.1f}%]"
            cols_md.append(text)
            records.append(
                dict(
                    table=spec.name,
                    budget=budget if budget is not None else full,
                    method=method,
                    column=col,
                    benchmark=spec.our_bench(col),
                    metric=spec.metric[col],
                    ours=v,
                    paper=p,
                    diff=None if v is None or p is None else v - p,
                    retained_pct=ret,
                    run_id=cell.row.get("run_id") if cell and cell.row else None,
                    config_hash=cell.config_hash if cell else None,
                )  # fmt: skip
            )
        avg = averaged.get((method, budget, "avg_retained_pct"))
        p_avg = pnum.get((method, budget, "avg_retained_pct"))
        avg_text = f"{_ours(avg)} / {NOT_IN_PAPER if p_avg is None else _fmt(p_avg)}"
        if avg is not None and p_avg is not None:
            avg_text += f" ({_signed(avg - p_avg)})"
        records.append(
            dict(
                table=spec.name,
                budget=budget if budget is not None else full,
                method=method,
                column="avg_retained_pct",
                benchmark="",
                metric="mean of retained %",
                ours=avg,
                paper=p_avg,
                diff=None if avg is None or p_avg is None else avg - p_avg,
                retained_pct=avg,
                run_id=None,
                config_hash=None,
            )  # fmt: skip
        )
        label = full if budget is None else str(budget)
        lines.append("| " + " | ".join([label, method, *cols_md, avg_text]) + " |")
    explain = (
        "avg retained % = mean over the row's benchmarks of (score / our unpruned score × 100), as the paper "
        "computes its Avg. column (tests/test_paper_arithmetic.py reproduces the paper's Avg. from its own cells, "
        "its few inconsistencies listed in docs/reproducing.md); shown "
        f"`{MISSING}` unless every benchmark of the row has a run. Units: % except MME (points)."
    )
    md = _header(spec, cells, explain) + "\n".join(lines) + "\n"
    return TableOut(spec.name, md, records, cells)


# -- table 5: average retained % per budget -------------------------------------------------------
def build_budgets(spec: TableSpec, overrides: list[str]) -> TableOut:
    paper = paper_rows(spec.paper)
    all_cells: list[SweepCell] = []
    records, blocks = [], []
    for experiment, pmodel in zip(spec.experiments, spec.paper_models):
        cells = experiment_cells(experiment, overrides)
        all_cells += cells
        benches = list(dict.fromkeys(c.benchmark for c in cells))
        by = {(c.pruner, c.budget, c.benchmark): c for c in cells}
        prow = [r for r in paper if r["model"] == pmodel]
        budgets = list(dict.fromkeys(int(r["budget"]) for r in prow))
        methods = list(dict.fromkeys(r["method"] for r in prow))
        pnum = {(r["method"], int(r["budget"])): float(r["score"]) for r in prow}
        mine = {}
        for (m, b, bench), c in by.items():
            v = value(c.row, METRIC[bench] if bench in METRIC else bench)
            if v is not None:
                mine[(m, b, bench)] = v
        averaged = averages.derive(averages.avg(tuple(benches), "high_ic_avg_retained_pct"), mine)
        lines = [f"## {pmodel} ({experiment}: {', '.join(benches)})", ""]
        lines.append("| method | " + " | ".join(map(str, budgets)) + " |")
        lines.append("|" + "---|" * (len(budgets) + 1))
        for m in methods:
            row_md = []
            for b in budgets:
                avg = averaged.get((m, b, "high_ic_avg_retained_pct"))
                p = pnum.get((m, b))
                text = f"{_ours(avg)} / {NOT_IN_PAPER if p is None else _fmt(p)}"
                if avg is not None and p is not None:
                    text += f" ({_signed(avg - p)})"
                row_md.append(text)
                records.append(
                    dict(
                        table=spec.name,
                        model=pmodel,
                        budget=b,
                        method=m,
                        column="high_ic_avg_retained_pct",
                        ours=avg,
                        paper=p,
                        diff=None if avg is None or p is None else avg - p,
                    )  # fmt: skip
                )
            lines.append(f"| {m} | " + " | ".join(row_md) + " |")
        blocks.append("\n".join(lines))
    explain = (
        "Each cell: the mean over the section's benchmarks of (score / our unpruned score × 100), the paper's "
        f"high-IC average retained %; `{MISSING}` unless every benchmark of the cell and the unpruned row has a run."
    )
    md = _header(spec, all_cells, explain) + "\n\n".join(blocks) + "\n"
    return TableOut(spec.name, md, records, all_cells)


# -- table 8: efficiency --------------------------------------------------------------------------
def build_efficiency(spec: TableSpec, overrides: list[str]) -> TableOut:
    with open(PAPER_EFFICIENCY_CSV, encoding="utf-8", newline="") as f:
        paper = [r for r in csv.DictReader(f) if r["table"] == spec.paper]
    cells = experiment_cells(spec.experiments[0], overrides)
    benches = list(dict.fromkeys(c.benchmark for c in cells))
    cols = [
        ("total_time_s_6tasks", "total time (s, 6 tasks)"),
        ("pope_time_s", "POPE time (s)"),
        ("gpu_util_pct", "GPU util (%)"),
        ("runtime_mem_gb", "memory (GB)"),
        ("pope_f1", "POPE F1"),
    ]
    lines = ["| budget | method | " + " | ".join(t for _, t in cols) + " |", "|" + "---|" * (len(cols) + 2)]
    records = []
    for r in paper:
        method = r["method"]
        budget = None if method == "none" else int(r["budget"])
        mine = {c.benchmark: c.row for c in cells if c.pruner == method and c.budget == budget}
        walls = [float(mine[b]["wall_s"]) if mine.get(b) else None for b in benches]
        pope = mine.get("pope")
        ours = {
            "total_time_s_6tasks": sum(walls) if walls and all(w is not None for w in walls) else None,
            "pope_time_s": float(pope["wall_s"]) if pope else None,
            "gpu_util_pct": None,
            "runtime_mem_gb": max(
                (float(x["peak_memory_bytes"]) / 2**30 for x in mine.values() if x and x.get("peak_memory_bytes")),
                default=None,
            ),
            "pope_f1": value(pope, "pope_f1_avg"),
        }
        row_md = []
        for key, _ in cols:
            p = float(r[key]) if r.get(key) not in (None, "") else None
            v = ours[key]
            text = ("not measured" if key == "gpu_util_pct" else _ours(v, 2)) + f" / {_fmt(p, 2)}"
            row_md.append(text)
            records.append(dict(table=spec.name, budget=r["budget"], method=method, column=key, ours=v, paper=p))
        lines.append(f"| {r['budget']} | {method} | " + " | ".join(row_md) + " |")
    explain = "Each cell: **ours** / paper. Paper: H100; ours: the GPU the rows name (`device`)."
    md = _header(spec, cells, explain) + "\n".join(lines) + "\n"
    return TableOut(spec.name, md, records, cells)


BUILDERS = {"grid": build_grid, "budgets": build_budgets, "efficiency": build_efficiency}


def build(name: str, overrides: Iterable[str] = ()) -> TableOut:
    spec = TABLES[name]
    return BUILDERS[spec.kind](spec, list(overrides))


def write(out: TableOut, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    md, csv_path = folder / f"{out.name}.md", folder / f"{out.name}.csv"
    keys = list(dict.fromkeys(k for r in out.records for k in r))
    buf = io.StringIO()
    w = csv.DictWriter(buf, keys, lineterminator="\n")
    w.writeheader()
    for r in out.records:
        w.writerow({k: "" if r.get(k) is None else r[k] for k in keys})
    for path, text in ((md, out.markdown), (csv_path, buf.getvalue())):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return md, csv_path
