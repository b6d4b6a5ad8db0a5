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
import functools
import io
import math
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from mmtok.report import averages
from mmtok.report.specs import METRIC, PAPER_CSV, PAPER_EFFICIENCY_CSV, PAPER_MORE_CSV, RAW_UNITS, TABLES, TableSpec
from mmtok.run.sweep import SweepCell, experiment_cells
from mmtok.store import RunRow

MISSING = "missing"
NOT_IN_PAPER = "—"


def value(row: RunRow | None, metric: str) -> float | None:
    """`metric` of a completed run (a column of its row, else its metrics_json) in the paper's units."""
    if row is None:
        return None
    v = getattr(row, metric, None)
    if v is None:
        v = (row.metrics_json or {}).get(metric)
    if v is None:
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


def _signed(v: float | None, digits: int = 1) -> str:
    if v is None:
        return ""
    return f"{0.0 if round(v, digits) == 0 else v:+.{digits}f}"  # a difference that rounds to 0 is +0.0


@dataclass(frozen=True)
class CellRecord:
    """One cell of a table beside the paper's: a row of the table's .csv. Each kind of table fills
    the fields it has (`TableOut.columns`); the rest stay None and are not written."""

    table: str
    method: str
    budget: int | str
    column: str  # a benchmark column, or a derived one (an average, a count)
    ours: float | None
    paper: float | None
    model: str | None = None
    benchmark: str | None = None  # "" for a derived column
    metric: str | None = None
    diff: float | None = None  # ours - paper
    retained_pct: float | None = None
    run_id: str | None = None
    config_hash: str | None = None


# the .csv columns of each kind of table, in their order
GRID_COLUMNS = ("table", "model", "budget", "method", "column", "benchmark", "metric", "ours", "paper", "diff",
                "retained_pct", "run_id", "config_hash")  # fmt: skip
BUDGET_COLUMNS = ("table", "model", "budget", "method", "column", "ours", "paper", "diff")
EFFICIENCY_COLUMNS = ("table", "budget", "method", "column", "ours", "paper")
MME_EFFICIENCY_COLUMNS = ("table", "model", "budget", "method", "column", "ours", "paper", "run_id", "config_hash")


# -- grid tables: rows of runs, benchmark columns, the paper's derived columns and lines ----------
@dataclass
class TableOut:
    name: str
    markdown: str
    records: list[CellRecord]  # the .csv: one record per cell
    cells: list[SweepCell]
    columns: tuple[str, ...]  # the .csv's columns (CellRecord fields)

    @property
    def missing(self) -> list[SweepCell]:
        return [c for c in self.cells if c.row is None]


def _header(spec: TableSpec, cells: list[SweepCell], explain: str) -> str:
    done = sum(c.row is not None for c in cells)
    return (
        f"# {spec.name}: ours beside the paper ({spec.paper})\n\n"
        f"{done} of {len(cells)} cells have a completed run (experiments: {', '.join(spec.experiments)}). "
        f"Each cell: **ours** / paper (ours − paper) [retained % of our reference row]. `{MISSING}`: no completed "
        f"run for that exact config; `{NOT_IN_PAPER}`: the paper has no number there; `{NOT_RUN}`: a row the "
        f"paper copies from elsewhere, not run here.\n\n{explain}\n\n{spec.note}\n\n"
    )


TEXT_ONLY = "text_only"  # the paper's 0-token row
NOT_RUN = "not run"
ROW_KINDS = ("retention_mean", "raw_mean", "count_at_least")  # one number per row: an extra column
LINE_KINDS = ("scaled", "relative_change")  # one number per benchmark: an extra row (90 % line, IC)
TITLES = {
    "avg_retained_pct": "avg retained %",
    "high_ic_avg_retained_pct": "high-IC avg retained %",
    "n_ge90": "n ≥ 90 %",
    "n_ge80": "n ≥ 80 %",
    "mmstar": "average",
}


def paper_key(cell: str, unpruned: str) -> tuple[str, str]:
    """The paper's (method, budget) row of a sweep cell: `none` or another cell without a budget (a
    resize file) → its unpruned label (576, 2880, r1.0, 2048); any `<pruner>@0` → the text-only row;
    `<pruner>@<budget>` → (the pruner file's name, the budget as written: 64, r0.2)."""
    name, _, budget = str(cell).strip().partition("@")
    if not budget:
        return name, unpruned
    if budget == "0":
        return TEXT_ONLY, "0"
    return name, budget


def _budget_value(label: str) -> int | str:
    return int(label) if label.isdigit() else label


@functools.lru_cache(maxsize=1)
def _paper_sources() -> tuple[tuple[averages.PaperCell, ...], ...]:
    """The paper's cells of each csv: the main tables', then the appendix tables' (and rows added to
    the main tables: the fine-tuned VisionZip, Table 17's SEED-all)."""
    return tuple(tuple(averages.load_paper([path])) for path in (PAPER_CSV, PAPER_MORE_CSV))


def _paper_cells() -> tuple[averages.PaperCell, ...]:
    return tuple(c for cells in _paper_sources() for c in cells)


def section_rules(table: str, model: str) -> tuple[averages.Rule, ...]:
    """The paper's rules for a printed section that derive from its own printed scores (not its token
    counts, not another table's cells): the numbers a grid of our runs can recompute."""
    rules: list[averages.Rule] = []
    for s in averages.PAPER_SECTIONS:
        own = all(src.table == table and src.field == "score" for src in s.feeds())
        if (s.table, s.model) == (table, model) and own:
            rules += [r for r in s.rules if r.printed_in in ("score", "retained_pct")]
    return tuple(rules)


def _row_order(base: Iterable[tuple[str, str]], extra: Iterable[tuple[str, str]]) -> list[tuple[str, str]]:
    """`base` rows as printed; each `extra` row not among them placed at the end of its budget's group
    (the appendix's rows beside a main table's, our rows such as random), else at the end."""
    order = list(dict.fromkeys(base))
    for key in dict.fromkeys(extra):
        if key in order:
            continue
        same = [i for i, k in enumerate(order) if k[1] == key[1]]
        order.insert(same[-1] + 1 if same else len(order), key)
    return order


def _cell_text(ours: float | None, paper: str | None, digits: int, ret: float | None = None) -> str:
    p = None if paper is None else float(paper)
    text = f"{_ours(ours, digits)} / {NOT_IN_PAPER if p is None else _fmt(p, digits)}"
    if ours is not None and p is not None:
        text += f" ({_signed(ours - p, digits)})"
    if ret is not None:
        text += f" [{ret:.1f}%]"
    return text


def _describe(rule: averages.Rule, columns: list[str]) -> str:
    ref = rule.reference if rule.reference_budget is None else f"{rule.reference}@{rule.reference_budget}"
    over = "the benchmarks shown" if list(rule.benchmarks) == columns else ", ".join(rule.benchmarks)
    title = TITLES.get(rule.column, rule.column)
    if rule.kind == "retention_mean":
        return f"`{title}` = mean over {over} of score / {ref} score × 100"
    if rule.kind == "raw_mean":
        return f"`{title}` = the raw mean of {over}"
    if rule.kind == "count_at_least":
        return f"`{title}` = how many of {over} reach {rule.threshold:g} % of the {ref} score"
    if rule.kind == "scaled":
        return f"row `{rule.column}` = {rule.threshold:g} × the {ref} row"
    if rule.kind == "relative_change":
        return f"row `{rule.column}` = ({rule.numerator} − {ref}) / {ref}, a fraction"
    return f"[x%] = score / {ref} score × 100"


def build_grid(spec: TableSpec, overrides: list[str]) -> TableOut:
    """One block per paper model; the paper's rows and columns, our runs' cells in them, the paper's
    derived columns (averages, counts) and lines (90 % / 80 %, IC) recomputed on ours by its own rules."""
    all_cells: list[SweepCell] = []
    records: list[CellRecord] = []
    blocks: list[str] = []
    explain: list[str] = []
    models = list(dict.fromkeys(spec.paper_models))
    for model in models:
        parts = [e for e, m in zip(spec.experiments, spec.paper_models) if m == model]
        by: dict[tuple[str, str, str], SweepCell] = {}
        for experiment in parts:
            cells = experiment_cells(experiment, overrides)
            all_cells += cells
            unpruned = spec.unpruned_label(experiment, model)
            for c in cells:
                by[(*paper_key(c.cell, unpruned), c.benchmark)] = c
        block, recs, notes = _grid_block(spec, model, by)
        records += recs
        explain += [n for n in notes if n not in explain]
        heading = f"## {model} ({', '.join(parts)})\n\n" if len(models) > 1 else ""
        blocks.append(heading + block)
    text = "; ".join(explain) + "." if explain else ""
    text += (
        " Shown only when every cell it reads has a run; recomputed on our runs by the paper's own rules "
        "(mmtok/report/averages.py; tests/test_paper_arithmetic.py reproduces the paper's numbers from its own "
        "cells, its few inconsistencies listed in docs/reproducing.md). Units: % except MME (points) and IC "
        "(a fraction)."
    )
    md = _header(spec, all_cells, text.strip()) + "\n\n".join(blocks)
    return TableOut(spec.name, md, records, all_cells, GRID_COLUMNS)


def _grid_block(
    spec: TableSpec, model: str, by: dict[tuple[str, str, str], SweepCell]
) -> tuple[str, list[CellRecord], list[str]]:
    sources = [[c for c in cells if (c.table, c.model) == (spec.paper, model)] for cells in _paper_sources()]
    paper = [c for cells in sources for c in cells]
    base, *rest = [s for s in sources if s] or [[]]
    more = [c for cells in rest for c in cells]
    rules = section_rules(spec.paper, model)
    row_rules = [r for r in rules if r.kind in ROW_KINDS]
    line_rules = [r for r in rules if r.kind in LINE_KINDS]
    derived = list(dict.fromkeys(r.column for r in row_rules))
    columns = [b for b in dict.fromkeys(c.benchmark for c in paper) if b not in derived and b not in TITLES]
    printed = {(c.method, c.budget, c.benchmark): c for c in paper}
    lines = {r.column for r in line_rules}
    ours_rows = list(dict.fromkeys((m, b) for m, b, _ in by))  # the experiments' cell order
    order = [
        k
        for k in _row_order(((c.method, c.budget) for c in base), [*((c.method, c.budget) for c in more), *ours_rows])
        if k in ours_rows or k[0] in lines or k[0] in spec.paper_only
    ]

    def cell(method: str, budget: str, column: str) -> SweepCell | None:
        return by.get((method, budget, spec.our_bench(column)))

    runs: dict[averages.Key, float] = {}
    for method, budget in order:
        for col in columns:
            c = cell(method, budget, col)
            v = value(c.row if c else None, spec.metric[col])
            if v is not None:
                runs[(method, budget, col)] = v
    mine = dict(runs)
    for rule in line_rules:
        mine.update(averages.derive(rule, runs))
    for rule in row_rules:  # counts only over runs; the paper prints 90.0 / 80.0 as the lines' averages
        mine.update(averages.derive(rule, runs if rule.kind == "count_at_least" else mine))
    retention = next((r for r in rules if r.kind == "retention"), None)
    mean = next((r for r in row_rules if r.kind == "retention_mean"), None)
    if retention is None and mean is not None:
        retention = averages.Rule("retained_pct", "retention", tuple(columns), mean.reference, mean.reference_budget)
    shown_ret = averages.derive(retention, runs) if retention is not None and spec.details else {}
    ref = averages.reference_row(retention, runs) if retention is not None else None
    notes = [_describe(r, columns) for r in (*row_rules, *line_rules)]
    if shown_ret:
        notes.append(_describe(retention, columns))

    head = ["budget", "method", *columns, *(TITLES.get(d, d) for d in derived)]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    records: list[CellRecord] = []
    ic = {r.column for r in line_rules if r.kind == "relative_change"}
    counts = {r.column for r in row_rules if r.kind == "count_at_least"}
    for method, budget in order:
        texts = []
        for col in [*columns, *derived]:
            is_col = col in columns
            digits = 3 if method in ic else 0 if col in ("mme", "n_ge90", "n_ge80") else 1
            p = printed.get((method, budget, col))
            ours = mine.get((method, budget, col))
            ret = shown_ret.get((method, budget, col)) if (method, budget) != ref and method not in lines else None
            if method in spec.paper_only or (method in lines and col in counts):  # not a run; no count on a line
                mark = NOT_RUN if method in spec.paper_only else NOT_IN_PAPER
                texts.append(f"{mark} / {NOT_IN_PAPER if p is None else _fmt(float(p.score), digits)}")
            else:
                texts.append(_cell_text(ours, p.score if p else None, digits, ret))
            c = cell(method, budget, col) if is_col else None
            records.append(
                CellRecord(
                    table=spec.name,
                    model=model,
                    budget=_budget_value(budget),
                    method=method,
                    column=col,
                    benchmark=spec.our_bench(col) if is_col else "",
                    metric=spec.metric[col] if is_col else TITLES.get(col, col),
                    ours=ours,
                    paper=float(p.score) if p else None,
                    diff=None if ours is None or p is None else ours - float(p.score),
                    retained_pct=ret if is_col else ours if col in ("avg_retained_pct",) else None,
                    run_id=c.row.run_id if c and c.row else None,
                    config_hash=c.config_hash if c else None,
                )  # fmt: skip
            )
        label = f"{method} (paper only)" if method in spec.paper_only else method
        out.append("| " + " | ".join([budget, label, *texts]) + " |")
    md = "\n".join(out) + "\n"
    tokens = [c for c in paper if c.printed("avg_tokens") is not None]
    if tokens and spec.details:
        md += "\n" + _tokens_block(spec, model, order, columns, cell, printed, lines)
    return md, records, notes


def _tokens_block(spec, model, order, columns, cell, printed, lines) -> str:
    """T̄: the mean vision tokens per question (our rows' `vision_tokens_mean`) beside the paper's."""
    out = [
        f"T̄ (mean vision tokens per question, {model}): **ours** / paper",
        "",
        "| budget | method | " + " | ".join(columns) + " |",
        "|" + "---|" * (len(columns) + 2),
    ]
    for method, budget in order:
        if method in lines or method in spec.paper_only:
            continue
        texts = []
        for col in columns:
            c = cell(method, budget, col)
            ours = c.row.vision_tokens_mean if c and c.row else None
            p = printed.get((method, budget, col))
            texts.append(_cell_text(ours, p.printed("avg_tokens") if p else None, 1))
        out.append("| " + " | ".join([budget, method, *texts]) + " |")
    return "\n".join(out) + "\n"


# -- table 5: average retained % per budget -------------------------------------------------------
def build_budgets(spec: TableSpec, overrides: list[str]) -> TableOut:
    paper = paper_rows(spec.paper)
    all_cells: list[SweepCell] = []
    records: list[CellRecord] = []
    blocks = []
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
                    CellRecord(
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
    return TableOut(spec.name, md, records, all_cells, BUDGET_COLUMNS)


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
    records: list[CellRecord] = []
    for r in paper:
        method = r["method"]
        budget = None if method == "none" else int(r["budget"])
        mine = {c.benchmark: c.row for c in cells if c.pruner == method and c.budget == budget}
        walls = [mine[b].wall_s if mine.get(b) else None for b in benches]
        pope = mine.get("pope")
        ours = {
            "total_time_s_6tasks": sum(walls) if walls and all(w is not None for w in walls) else None,
            "pope_time_s": pope.wall_s if pope else None,
            "gpu_util_pct": None,
            "runtime_mem_gb": max(
                (x.peak_memory_bytes / 2**30 for x in mine.values() if x and x.peak_memory_bytes), default=None
            ),
            "pope_f1": value(pope, "pope_f1_avg"),
        }
        row_md = []
        for key, _ in cols:
            p = float(r[key]) if r.get(key) not in (None, "") else None
            v = ours[key]
            text = ("not measured" if key == "gpu_util_pct" else _ours(v, 2)) + f" / {_fmt(p, 2)}"
            row_md.append(text)
            records.append(CellRecord(table=spec.name, budget=r["budget"], method=method, column=key, ours=v, paper=p))
        lines.append(f"| {r['budget']} | {method} | " + " | ".join(row_md) + " |")
    explain = "Each cell: **ours** / paper. Paper: H100; ours: the GPU the rows name (`device`)."
    md = _header(spec, cells, explain) + "\n".join(lines) + "\n"
    return TableOut(spec.name, md, records, cells, EFFICIENCY_COLUMNS)


# -- table 12: efficiency at a ratio budget, one task ----------------------------------------------
def build_mme_efficiency(spec: TableSpec, overrides: list[str]) -> TableOut:
    """The paper's rows (method, budget); per row our whole-task wall time, peak memory, MME score and
    T̄ beside the paper's time, GPU utilisation, runtime memory and T̄ (from its notes)."""
    (model,) = set(spec.paper_models)
    (experiment,) = spec.experiments
    paper = [c for c in _paper_cells() if (c.table, c.model) == (spec.paper, model)]
    cells = experiment_cells(experiment, overrides)
    unpruned = spec.unpruned_label(experiment, model)
    by = {paper_key(c.cell, unpruned): c for c in cells}
    printed = {(c.method, c.budget, c.benchmark): c for c in paper}
    cols = [
        ("mme_infer_time_s", "MME time (s)", 0),
        ("gpu_util_pct", "GPU util (%)", 1),
        ("runtime_mem_gb", "memory (GB)", 2),
        ("mme", "MME", 0),
        ("avg_tokens", "T̄", 1),
    ]
    lines = ["| budget | method | " + " | ".join(t for _, t, _ in cols) + " |", "|" + "---|" * (len(cols) + 2)]
    records: list[CellRecord] = []
    for method, budget in _row_order(((c.method, c.budget) for c in paper), by):
        c = by.get((method, budget))
        row = c.row if c else None
        peak = row.peak_memory_bytes if row else None
        ours = {
            "mme_infer_time_s": row.wall_s if row else None,
            "gpu_util_pct": None,
            "runtime_mem_gb": peak / 2**30 if peak is not None else None,
            "mme": value(row, "mme_total"),
            "avg_tokens": row.vision_tokens_mean if row else None,
        }
        texts = []
        for key, _, digits in cols:
            p = printed.get((method, budget, key))
            if key == "avg_tokens":
                any_cell = next((x for x in paper if (x.method, x.budget) == (method, budget)), None)
                shown = any_cell.printed("avg_tokens") if any_cell else None
            else:
                shown = p.score if p else None
            if key == "gpu_util_pct":
                texts.append(f"not measured / {NOT_IN_PAPER if shown is None else _fmt(float(shown), digits)}")
            else:
                texts.append(_cell_text(ours[key], shown, digits))
            records.append(
                CellRecord(
                    table=spec.name,
                    model=model,
                    budget=_budget_value(budget),
                    method=method,
                    column=key,
                    ours=ours[key],
                    paper=None if shown is None else float(shown),
                    run_id=row.run_id if row else None,
                    config_hash=c.config_hash if c else None,
                )  # fmt: skip
            )
        lines.append(f"| {budget} | {method} | " + " | ".join(texts) + " |")
    explain = "Each cell: **ours** / paper. T̄: mean vision tokens per question."
    md = _header(spec, cells, explain) + "\n".join(lines) + "\n"
    return TableOut(spec.name, md, records, cells, MME_EFFICIENCY_COLUMNS)


BUILDERS = {
    "grid": build_grid,
    "budgets": build_budgets,
    "efficiency": build_efficiency,
    "mme_efficiency": build_mme_efficiency,
}


def build(name: str, overrides: Iterable[str] = ()) -> TableOut:
    spec = TABLES[name]
    return BUILDERS[spec.kind](spec, list(overrides))


def write(out: TableOut, folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    md, csv_path = folder / f"{out.name}.md", folder / f"{out.name}.csv"
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(out.columns)
    for r in out.records:
        w.writerow(["" if getattr(r, k) is None else getattr(r, k) for k in out.columns])
    for path, text in ((md, out.markdown), (csv_path, buf.getvalue())):
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        tmp.replace(path)
    return md, csv_path
