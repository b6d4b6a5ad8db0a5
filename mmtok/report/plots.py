"""PNG figures of a built table (`make plots` → `<results_dir>/plots/`).

- `<table>_budget.png`: for each benchmark (table 5: each model), our score (table 5: average
  retained %) against the budget (tokens, or a retain ratio), one line per pruner; the paper's
  numbers as hollow markers in the same colour; unpruned, text-only and the 90 % / 80 % lines
  (Tables 21, 22) as horizontal lines. A cell without a completed run is absent.
- `<table>_bars.png` (the ablations: Tables 6, 7, 9, 10): per benchmark, each row's score as % of
  the table's reference row, ours as bars, the paper's as ticks.
- `<table>_latency.png` (tables 8, 12, and the tiny stand-in): mean per-sample seconds of each stage
  (vision / select / prefill / decode, stacked) per pruner and budget, averaged over the benchmarks
  that have a run.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from mmtok.report.builders import CellRecord, TableOut
from mmtok.report.specs import TABLES
from mmtok.store import STAGES as ROW_STAGES

STAGES = tuple(s for s in ROW_STAGES if s != "total")  # the parts that stack up to the total


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _save(plt, fig, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _colours(methods: list[str]) -> dict[str, str]:
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


LINE_STYLES = {  # rows drawn as horizontal lines, not curves: (colour, line style, label)
    "none": ("k", "--", "unpruned"),
    "text_only": ("#8c564b", ":", "text only (0 tokens)"),
    "threshold_90": ("#555555", "-.", "90 % of unpruned"),
    "threshold_80": ("#aaaaaa", "-.", "80 % of unpruned"),
}


def _x(budget) -> float | None:
    """A budget label on the x axis: tokens (64), a retain ratio (r0.2 → 0.2); None for 0 (text only)."""
    text = str(budget)
    x = float(text[1:]) if text.startswith("r") else float(text) if text.replace(".", "", 1).isdigit() else None
    return x if x else None


def plot_budget(
    name: str, records: list[CellRecord], folder: Path, *, panel: Callable[[CellRecord], str], title: str
) -> Path:
    """Score against budget per panel (a benchmark, or a model for table 5): one curve per pruner,
    ours solid, the paper's hollow squares; unpruned, text-only and the 90 % / 80 % lines as
    horizontal lines (ours solid-coloured, the paper's thinner and lighter). Missing cells are absent."""
    plt = _pyplot()
    panels = list(dict.fromkeys(panel(r) for r in records))
    lines = [m for m in LINE_STYLES if any(r.method == m for r in records)]
    methods = [m for m in dict.fromkeys(r.method for r in records) if m not in LINE_STYLES]
    colour = _colours(methods)
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, name_of_panel in zip(axes.flat, panels):
        recs = [r for r in records if panel(r) == name_of_panel]
        ticks = {}
        for m in methods:
            pts = sorted(((_x(r.budget), r) for r in recs if r.method == m and _x(r.budget) is not None),
                         key=lambda p: p[0])  # fmt: skip
            ticks.update({x: str(r.budget) for x, r in pts})
            ours = [(x, r.ours) for x, r in pts if r.ours is not None]
            paper = [(x, r.paper) for x, r in pts if r.paper is not None]
            if ours:
                ax.plot(*zip(*ours), "-o", color=colour[m], markersize=4)
            if paper:
                ax.plot(*zip(*paper), "s", color=colour[m], markerfacecolor="none", markersize=7, alpha=0.8)
        for m in lines:
            c, style, label = LINE_STYLES[m]
            base = [r for r in recs if r.method == m]
            if base and base[0].ours is not None:
                ax.axhline(base[0].ours, color=c, ls=style, lw=1.2, label=f"{label} (ours)")
            if base and base[0].paper is not None:
                ax.axhline(base[0].paper, color=c, ls=style, lw=0.7, alpha=0.5, label=f"{label} (paper)")
        if ticks:
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted(ticks), [ticks[x] for x in sorted(ticks)])
            ax.minorticks_off()
        ax.set_title(str(name_of_panel), fontsize=10)
        ratio = any(t.startswith("r") for t in ticks.values())
        ax.set_xlabel("retain ratio" if ratio else "vision-token budget", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    from matplotlib.lines import Line2D

    # one entry per pruner (whether or not it has runs yet), the horizontal lines, the paper's marker
    handles = [Line2D([], [], color=colour[m], marker="o", markersize=4) for m in methods]
    labels = list(methods)
    seen = dict(zip(*reversed(axes.flat[0].get_legend_handles_labels())))
    handles += list(seen.values())
    labels += list(seen)
    handles.append(Line2D([], [], marker="s", ls="none", color="gray", markerfacecolor="none"))
    labels.append("paper (hollow squares)")
    fig.legend(handles, labels, loc="lower center", ncol=min(5, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06 + 0.03 * (len(labels) // 5), 1, 0.95))
    return _save(plt, fig, folder / f"{name}_budget.png")


def plot_bars(name: str, records: list[CellRecord], folder: Path, title: str) -> Path:
    """Per benchmark, each row's score as % of the table's first row (its reference: unpruned, or
    Table 10's unpooled MMTok), ours as bars and the paper's as black ticks; missing cells absent."""
    plt = _pyplot()
    import numpy as np

    columns = list(dict.fromkeys(r.column for r in records))
    rows = list(dict.fromkeys((r.method, str(r.budget)) for r in records))
    ref, others = rows[0], rows[1:]
    by = {(r.method, str(r.budget), r.column): r for r in records}

    def rel(row, col, key):
        v, base = (getattr(by[k], key) if k in by else None for k in ((*row, col), (*ref, col)))
        return None if v is None or not base else 100.0 * v / base

    fig, ax = plt.subplots(figsize=(min(14, 3 + 1.2 * len(columns)), 3.8))
    width = 0.8 / max(1, len(others))
    colour = _colours([m for m, _ in others])
    for i, row in enumerate(others):
        xs = np.arange(len(columns)) + (i - (len(others) - 1) / 2) * width
        ours = [rel(row, c, "ours") for c in columns]
        paper = [rel(row, c, "paper") for c in columns]
        ax.bar([x for x, v in zip(xs, ours) if v is not None], [v for v in ours if v is not None], width,
               color=colour[row[0]], label=f"{row[0]}@{row[1]}")  # fmt: skip
        ax.plot([x for x, v in zip(xs, paper) if v is not None], [v for v in paper if v is not None], "_",
                color="k", markersize=max(4, 60 * width), mew=1.5)  # fmt: skip
    shown = [v for row in others for c in columns for v in (rel(row, c, "ours"), rel(row, c, "paper")) if v]
    if shown:  # the ablations differ by a few %: the axis starts just below the lowest bar
        ax.set_ylim(max(0.0, 5 * (min(shown) // 5) - 5), max(100.0, max(shown)) + 2)
    ax.axhline(100, color="k", lw=0.8, ls="--")
    ax.set_xticks(np.arange(len(columns)), columns, fontsize=8, rotation=30)
    ax.set_ylabel(f"% of {ref[0]}@{ref[1]}", fontsize=9)
    ax.set_title(f"{title} (bars: ours; black ticks: paper)", fontsize=10)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.grid(alpha=0.3, axis="y")
    if not any(r.ours is not None for r in records):
        ax.text(0.5, 0.5, "no completed runs yet", ha="center", va="center", transform=ax.transAxes)
    fig.tight_layout()
    return _save(plt, fig, folder / f"{name}_bars.png")


def plot_latency(name: str, cells: list, folder: Path, title: str) -> Path:
    plt = _pyplot()
    groups: dict[str, dict[str, list[float]]] = {}
    for c in cells:
        if c.row is None:
            continue
        label = c.cell
        stages = groups.setdefault(label, {s: [] for s in STAGES})
        for s in STAGES:
            v = getattr(c.row, f"{s}_s_mean")
            if v is not None:
                stages[s].append(v * 1000)
    fig, ax = plt.subplots(figsize=(max(5, 0.7 * len(groups) + 2), 3.6))
    labels = list(groups)
    bottom = [0.0] * len(labels)
    for s, colour in zip(STAGES, ("#4c72b0", "#dd8452", "#55a868", "#c44e52")):
        vals = [sum(groups[g][s]) / len(groups[g][s]) if groups[g][s] else 0.0 for g in labels]
        ax.bar(labels, vals, bottom=bottom, color=colour, label=s)
        bottom = [b + v for b, v in zip(bottom, vals)]
    if not labels:
        ax.text(0.5, 0.5, "no completed runs yet", ha="center", va="center", transform=ax.transAxes)
    ax.set_ylabel("ms per sample (mean)")
    ax.set_title(title, fontsize=10)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1), frameon=False)
    ax.tick_params(axis="x", labelrotation=45, labelsize=8)
    fig.tight_layout()
    return _save(plt, fig, folder / f"{name}_latency.png")


def plot(name: str, out: TableOut, folder: Path) -> list[Path]:
    """The figures of table `name` from its built table (its spec's `plots`)."""
    spec = TABLES[name]
    paths = []
    for kind in spec.plots:
        if kind == "budget" and spec.kind == "budgets":
            title = f"{name}: average retained % (high-IC benchmarks) vs budget"
            paths.append(plot_budget(name, out.records, folder, panel=lambda r: str(r.model), title=title))
        elif kind == "budget":
            recs = _benchmark_records(out.records, spec)
            units = "score (%; MME: points)"
            panel = _benchmark_panel(recs)
            paths.append(plot_budget(name, recs, folder, panel=panel, title=f"{name}: {units} vs budget"))
        elif kind == "bars":
            paths.append(plot_bars(name, _benchmark_records(out.records, spec), folder, f"{name}"))
        elif kind == "latency":
            paths.append(plot_latency(name, out.cells, folder, f"{name}: latency per stage"))
    return paths


def _benchmark_records(records: list[CellRecord], spec) -> list[CellRecord]:
    """A grid's per-benchmark records: not its derived columns, not the paper-only rows."""
    return [r for r in records if r.benchmark and r.method not in spec.paper_only]


def _benchmark_panel(records: list[CellRecord]) -> Callable[[CellRecord], str]:
    """A record's panel: its benchmark column, prefixed by the model where the table has several."""
    if len({r.model for r in records}) <= 1:
        return lambda r: r.column
    return lambda r: f"{r.model}: {r.column}"
