"""Paper tables and plots from the run folders: `python -m mmtok.report tables|plots|index|status`.

    make tables                     # every table from whatever rows exist (no runs started)
    make table1                     # run experiment=table1 (resumes), then write results/tables/table1.*
    python -m mmtok.report tables --only tiny max_new_tokens=4 limit=2   # overrides as for run.py

A table cell is found by its config hash: the builder composes the table's experiment with the same
overrides the sweep ran with, builds every cell's config exactly as the job does (`runner.cell_config`)
and looks the hash up among the completed runs (`results.all_rows`: run folders + index). So a cell
shows only a run of exactly that config; a cell without one is shown as `missing`, never filled.

Units are the paper's: percentages (x100 of lmms-eval's fractions) except MME (raw perception +
cognition points) and MMBench (lmms-eval reports percent already). Retained % is against OUR OWN
unpruned row of the same table; the average column is the paper's: the mean over the row's benchmarks
of (score / unpruned score x 100), computed only when every benchmark of the row has a run.
"""

from __future__ import annotations

import argparse
import csv
import io
import itertools
import json
import math
import sys
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mmtok.config import ROOT, compose, parse_cell, sweep_axes

PAPER_CSV = ROOT / "results" / "paper" / "paper_tables.csv"
PAPER_EFFICIENCY_CSV = ROOT / "results" / "paper" / "paper_efficiency.csv"
MISSING = "missing"
NOT_IN_PAPER = "—"

# paper column → the row field holding our number (the benchmark config's score, except where a
# table reports another split: the appendix tables' SEED is SEED-IMG).
METRIC = {
    "gqa": "gqa_exact_match",
    "mmbench": "mmbench_en_dev_gpt_eval_score",
    "mme": "mme_total",
    "pope": "pope_f1_avg",
    "sqa": "scienceqa_img_exact_match",
    "vqav2": "vqav2_val_exact_match",
    "textvqa": "textvqa_val_exact_match",
    "mmmu": "mmmu_val_mmmu_acc",
    "seed": "seedbench_seed_all",
}
SEED_IMG = {**METRIC, "seed": "seedbench_seed_image"}
RAW_UNITS = {"mme_total", "mme_perception", "mme_cognition", "mmbench_en_dev_gpt_eval_score"}
LOCAL = {"gqa": "gqa_local", "mme": "mme_local", "pope": "pope_local"}  # the tiny stand-ins' testbeds


@dataclass(frozen=True)
class TableSpec:
    name: str  # results/tables/<name>.md / .csv
    paper: str  # the `table` key in results/paper/paper_tables.csv
    kind: str  # grid (method x budget rows, benchmark columns) | budgets (table 5) | efficiency (table 8)
    experiments: tuple[str, ...]  # the experiment files whose cells fill it (one per model section)
    paper_models: tuple[str, ...]  # the paper's model key of each section
    metric: dict[str, str] = field(default_factory=lambda: dict(METRIC))
    bench: dict[str, str] = field(default_factory=dict)  # paper column → our benchmark (default: same name)
    note: str = ""

    def our_bench(self, column: str) -> str:
        return self.bench.get(column, column)


_NOTE8 = (
    "Ours: wall seconds of the six runs (sum) and of POPE; peak memory = torch.cuda.max_memory_allocated, "
    "weights included (the paper's runtime memory excludes the 25.42 GB of weights); GPU utilisation is not measured."
)
_NOTE_TINY = (
    "A tiny stand-in: the random tiny LLaVA on local testbeds laid out as Table 1 "
    "(paper numbers for the layout only; ours are not comparable)."
)
_NOTE5 = "High image-contribution benchmarks: LLaVA-1.5 MMB, POPE, MME, SEED, GQA; LLaVA-NeXT adds TextVQA."
TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (
        TableSpec("table1", "table1", "grid", ("table1",), ("llava15_7b",), note="SEED = SEED-all (as the paper)."),
        TableSpec("table17", "table17", "grid", ("table17",), ("llava15_13b",), SEED_IMG, note="SEED = SEED-IMG."),
        TableSpec(
            "table18", "table18", "grid", ("table18",), ("llavanext_7b",), SEED_IMG,
            note="SEED = SEED-IMG; budgets are upper bounds over up to 5 crops.",
        ),
        TableSpec("table19", "table19", "grid", ("table19",), ("llavanext_13b",), SEED_IMG, note="SEED = SEED-IMG."),
        TableSpec(
            "table5", "table5", "budgets", ("table5", "table5_next"), ("llava15_7b", "llavanext_7b"), note=_NOTE5
        ),
        TableSpec("table8", "table8", "efficiency", ("table8",), ("llavanext_13b",), note=_NOTE8),
        TableSpec("tiny", "table1", "grid", ("tiny",), ("llava15_7b",), bench=LOCAL, note=_NOTE_TINY),
    )
}  # fmt: skip


# -- finding the cells' runs ----------------------------------------------------------------------
@dataclass
class Cell:
    experiment: str
    benchmark: str  # our benchmark name
    cell: str  # "none" | "<pruner>@<budget>"
    pruner: str
    budget: int | None
    config_hash: str
    model: str
    results_dir: Path
    row: dict[str, Any] | None = None  # the completed run, if any
    job: list[str] = field(default_factory=list)  # the job's overrides (one job per model x benchmark)


def job_overrides(experiment: str | None, overrides: Iterable[str] = ()) -> list[list[str]]:
    """One override list per job of the sweep (its axes crossed, command-line lists included)."""
    head = [f"experiment={experiment}"] if experiment else []
    fixed, axes = sweep_axes([*head, *overrides])
    return [fixed + list(c) for c in itertools.product(*axes.values())] if axes else [fixed]


def experiment_cells(experiment: str | None, overrides: Iterable[str] = ()) -> list[Cell]:
    """Every cell of the sweep (`experiment` + overrides) with its config hash and completed row
    (None when it has none): what a job of the sweep would run or skip."""
    from omegaconf import OmegaConf

    from mmtok import results
    from mmtok.runner import build_pruner_from, cell_config, identity

    out: list[Cell] = []
    completed: dict[str, dict[str, dict]] = {}
    for job in job_overrides(experiment, overrides):
        cfg = compose(job)
        rdir = Path(cfg.results_dir)
        if str(rdir) not in completed:
            index: dict[str, dict] = {}
            for row in results.all_rows(rdir):
                if row.get("status") == "completed":
                    index[str(row.get("config_hash"))] = row  # later rows win (all_rows is oldest first)
            completed[str(rdir)] = index
        for cell in cfg.cells or [f"{cfg.pruner.name}@{cfg.budget}" if cfg.budget else "none"]:
            c = cell_config(cfg, cell)
            key = results.config_hash(identity(OmegaConf.to_container(c, resolve=True), build_pruner_from(c)))
            name, budget = parse_cell(cell)
            row = completed[str(rdir)].get(key)
            cell_exp = experiment or "-"
            out.append(Cell(cell_exp, cfg.benchmark.name, cell, name, budget, key, cfg.model.name, rdir, row, job))
    return out


def pending_sweep(overrides: list[str]) -> tuple[list[str], int, int, int]:
    """(overrides narrowed to the jobs that still have a missing cell, jobs in all, jobs pending,
    cells missing); the counts are -1 when the sweep cannot be expanded here (launched unchanged).
    Each swept key keeps the values some pending job has (exact for one swept key, e.g. an
    experiment's benchmark axis); a job whose cells are all done is not launched at all."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for ov in OverridesParser.create().parse_overrides(overrides):
        if ov.is_sweep_override():
            try:
                list(ov.sweep_string_iterator())
            except Exception:  # glob()/range() over groups: only Hydra can expand it; launch as given
                return overrides, -1, -1, -1
    fixed, axes = sweep_axes(overrides)
    cells = experiment_cells(None, overrides)
    jobs = list(dict.fromkeys(tuple(c.job) for c in cells))
    pending = list(dict.fromkeys(tuple(c.job) for c in cells if c.row is None))
    missing = sum(c.row is None for c in cells)
    if not axes or not pending:
        return overrides, len(jobs), len(pending), missing
    narrowed = []
    for values in axes.values():
        keep = [v for v in values if any(v in job for job in pending)]
        prefix, _, _ = keep[0].partition("=")
        narrowed.append(f"{prefix}={','.join(v.split('=', 1)[1] for v in keep)}")
    rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in axes]
    return rest + narrowed, len(jobs), len(pending), missing


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
    cells: list[Cell]

    @property
    def missing(self) -> list[Cell]:
        return [c for c in self.cells if c.row is None]


def _header(spec: TableSpec, cells: list[Cell], explain: str) -> str:
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

    records, lines = [], []
    head = ["budget", "method", *columns, "avg retained %"]
    lines.append("| " + " | ".join(head) + " |")
    lines.append("|" + "---|" * len(head))
    for method, budget in order:
        cols_md, rets = [], []
        for col in columns:
            cell, v = ours(method, budget, col)
            _, base = ours("none", None, col)
            p = pnum.get((method, budget, col))
            ret = None if v is None or not base else 100.0 * v / base
            rets.append(ret)
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
        avg = sum(rets) / len(rets) if rets and all(r is not None for r in rets) else None
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
        "computes its Avg. column (checked: it reproduces the paper's Avg. from its own cells to ±0.1); shown "
        f"`{MISSING}` unless every benchmark of the row has a run. Units: % except MME (points)."
    )
    md = _header(spec, cells, explain) + "\n".join(lines) + "\n"
    return TableOut(spec.name, md, records, cells)


# -- table 5: average retained % per budget -------------------------------------------------------
def build_budgets(spec: TableSpec, overrides: list[str]) -> TableOut:
    paper = paper_rows(spec.paper)
    all_cells: list[Cell] = []
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
        lines = [f"## {pmodel} ({experiment}: {', '.join(benches)})", ""]
        lines.append("| method | " + " | ".join(map(str, budgets)) + " |")
        lines.append("|" + "---|" * (len(budgets) + 1))
        for m in methods:
            row_md = []
            for b in budgets:
                rets = []
                for bench in benches:
                    c, base = by.get((m, b, bench)), by.get(("none", None, bench))
                    metric = METRIC[bench] if bench in METRIC else bench
                    v, bv = value(c.row if c else None, metric), value(base.row if base else None, metric)
                    rets.append(None if v is None or not bv else 100.0 * v / bv)
                avg = sum(rets) / len(rets) if rets and all(r is not None for r in rets) else None
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


# -- command line ---------------------------------------------------------------------------------
def main(argv: list[str] | None = None) -> int:
    from mmtok.config import ConfigError

    ap = argparse.ArgumentParser(prog="python -m mmtok.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("tables", "plots", "index", "status"))
    ap.add_argument("--only", action="append", default=[], help=f"a table ({', '.join(TABLES)}); repeatable")
    ap.add_argument("--out", default=None, help="output folder (default <results_dir>/tables or /plots)")
    ap.add_argument("overrides", nargs="*", help="run.py overrides the sweep ran with (results_dir=…, limit=…)")
    args = ap.parse_intermixed_args(argv)
    try:
        if args.what == "index":
            from mmtok import results

            rdir = Path(compose(args.overrides).results_dir)
            path, n = results.rebuild_index(rdir)
            print(f"[mmtok] {path}: {n} rows rebuilt from {rdir / 'runs'}")
            return 0
        names = args.only or list(TABLES)
        bad = [n for n in names if n not in TABLES]
        if bad:
            raise ConfigError(f"unknown table {bad[0]!r}; valid: {', '.join(TABLES)}")
        rdir = Path(compose(args.overrides).results_dir)
        for name in names:
            out = build(name, args.overrides)
            if args.what == "tables":
                md, c = write(out, Path(args.out) if args.out else rdir / "tables")
                print(f"[mmtok] {md} (+ .csv): {len(out.cells) - len(out.missing)}/{len(out.cells)} cells filled")
            elif args.what == "status":
                print(f"[mmtok] {name}: {len(out.cells) - len(out.missing)}/{len(out.cells)} cells completed")
                for c in out.missing:
                    print(f"  missing {c.experiment} {c.benchmark} {c.cell} (hash {c.config_hash})")
            else:
                from mmtok.plots import plot

                for path in plot(name, out, Path(args.out) if args.out else rdir / "plots"):
                    print(f"[mmtok] {path}")
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
