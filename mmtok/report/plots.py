"""PNG figures of a built table (`make plots` → `<results_dir>/plots/`).

- `<table>_budget.png`: for each benchmark (table 5: each model), our score (table 5: average
  retained %) against the budget, one line per pruner; the paper's numbers as hollow markers in the
  same colour; our unpruned score as a dashed line. A cell without a completed run is absent.
- `<table>_latency.png` (table 8, and the tiny stand-in): mean per-sample seconds of each stage
  (vision / select / prefill / decode, stacked) per pruner and budget, averaged over the benchmarks
  that have a run.
"""

from __future__ import annotations

from pathlib import Path

from mmtok.report.builders import TableOut
from mmtok.report.specs import TABLES
from mmtok.store import STAGES as ROW_STAGES

STAGES = tuple(s for s in ROW_STAGES if s != "total")  # the parts that stack up to the total


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _colours(methods: list[str]) -> dict[str, str]:
    palette = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f"]
    return {m: palette[i % len(palette)] for i, m in enumerate(methods)}


def plot_budget(name: str, records: list[dict], folder: Path, *, panel_key: str, title: str) -> Path:
    plt = _pyplot()
    panels = list(dict.fromkeys(r[panel_key] for r in records))
    methods = [m for m in dict.fromkeys(r["method"] for r in records) if m != "none"]
    colour = _colours(methods)
    ncols = min(3, len(panels))
    nrows = -(-len(panels) // ncols)
    fig, axes = plt.subplots(nrows, ncols, figsize=(4.2 * ncols, 3.2 * nrows), squeeze=False)
    for ax, panel in zip(axes.flat, panels):
        recs = [r for r in records if r[panel_key] == panel]
        for m in methods:
            pts = sorted((int(r["budget"]), r) for r in recs if r["method"] == m)
            ours = [(b, r["ours"]) for b, r in pts if r["ours"] is not None]
            paper = [(b, r["paper"]) for b, r in pts if r["paper"] is not None]
            if ours:
                ax.plot(*zip(*ours), "-o", color=colour[m], label=m, markersize=4)
            if paper:
                ax.plot(*zip(*paper), "s", color=colour[m], markerfacecolor="none", markersize=7, alpha=0.8)
        base = [r for r in recs if r["method"] == "none"]
        if base and base[0]["ours"] is not None:
            ax.axhline(base[0]["ours"], color="k", ls="--", lw=1, label="none (ours)")
        if base and base[0]["paper"] is not None:
            ax.axhline(base[0]["paper"], color="k", ls=":", lw=1, label="none (paper)")
        budgets = sorted({int(r["budget"]) for r in recs if r["method"] != "none"})
        if budgets:
            ax.set_xscale("log", base=2)
            ax.set_xticks(budgets, [str(b) for b in budgets])
            ax.minorticks_off()
        ax.set_title(str(panel), fontsize=10)
        ax.set_xlabel("vision-token budget", fontsize=8)
        ax.grid(alpha=0.3)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    handles, labels = axes.flat[0].get_legend_handles_labels()
    if handles:
        from matplotlib.lines import Line2D

        handles.append(Line2D([], [], marker="s", ls="none", color="gray", markerfacecolor="none"))
        labels.append("paper (hollow squares)")
        fig.legend(handles, labels, loc="lower center", ncol=min(6, len(labels)), fontsize=8, frameon=False)
    fig.suptitle(title, fontsize=11)
    fig.tight_layout(rect=(0, 0.06, 1, 0.95))
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_budget.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_latency(name: str, cells: list, folder: Path, title: str) -> Path:
    plt = _pyplot()
    groups: dict[str, dict[str, list[float]]] = {}
    for c in cells:
        if c.row is None:
            continue
        label = c.cell
        stages = groups.setdefault(label, {s: [] for s in STAGES})
        for s in STAGES:
            v = c.row.get(f"{s}_s_mean")
            if v not in (None, ""):
                stages[s].append(float(v) * 1000)
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
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}_latency.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot(name: str, out: TableOut, folder: Path) -> list[Path]:
    """The figures of table `name` from its built table."""
    spec = TABLES[name]
    paths = []
    if spec.kind == "grid":
        recs = [r for r in out.records if r["column"] != "avg_retained_pct"]
        units = "score (%; MME: points)"
        paths.append(plot_budget(name, recs, folder, panel_key="column", title=f"{name}: {units} vs budget"))
    elif spec.kind == "budgets":
        title = f"{name}: average retained % (high-IC benchmarks) vs budget"
        paths.append(plot_budget(name, out.records, folder, panel_key="model", title=title))
    if spec.kind == "efficiency" or name == "tiny":
        paths.append(plot_latency(name, out.cells, folder, f"{name}: latency per stage"))
    return paths
