"""The testbed table: every method that runs on the testbed x budget on every testbed task, scored by
the real lmms-eval path.

    python -m mmtok.testbed.table            # make testbed-table: results/testbed/table.{csv,md,png}

One process loads the committed testbed LLaVA once and runs `mmtok.eval.evaluate` unpruned and for
every row of `ROWS` (a method with fixed parameters; the ground-truth oracle as a reference row) at
budgets 576, 192, 64, 16, 4 on scenes_pope (POPE F1 per split + their mean) and scenes_gqa (exact
match, also per question kind). Rows are appended to the CSV atomically after each evaluation and a
rerun skips the rows it already has (delete the CSV to start over), so an interrupted table resumes.
A new row is one more `Row` in `ROWS`.

The LLM has 4 decoder layers, of which layers 0-1 cannot read image content (`mmtok.testbed.train`,
stage 1b), so the in-LLM methods score image tokens in a content-free layer and drop them before
the first layer that reads them, as FastV's K=2 does on LLaVA-1.5; their first pruning layer is
mapped into the blind layers (`Row.params`), and their budget is the image tokens the first
content layer (2) receives (layer-averaged "equivalent" budgets cannot go below 288 here):
FastV K=2 with `budget_mode=kept`; SparseVLM one pruning layer (the output of layer 1) at `budget`
tokens plus its recycled clusters; PDrop its rank layers L/4, L/2, 3L/4 = 1, 2, 3 with lambda =
sqrt(budget / 576), so layer 2 receives `budget` tokens and layer 3 fewer; DART K=2 (the release's)
with its own kept-token label. CDPruner cannot run: it needs the CLIP text tower and projections
its vision tower was trained with, and the testbed's tower has none (`UNRUNNABLE`).
"""

from __future__ import annotations

import argparse
import csv
import os
import time
from dataclasses import dataclass, replace
from pathlib import Path

from mmtok.eval.protocol import RunProtocol
from mmtok.testbed.scores import GQA_KINDS, KIND_COLUMNS, POPE_COLUMNS, TASKS, Cell, score_row, testbed
from mmtok.testbed.train import BLIND_LAYERS

BUDGETS = (576, 192, 64, 16, 4)
IMAGE_TOKENS = 576
COLUMNS = ("task", "pruner", "budget", "n", "score", *POPE_COLUMNS, *KIND_COLUMNS, "vision_tokens_mean")
BUDGET_AS = ("budget", "counts", "pdrop_ratio")


@dataclass(frozen=True)
class Row:
    """One table row: `method` with fixed `params`; `budget_as` says what a column's budget becomes
    ("budget": the method's budget; "counts": SparseVLM's kept count at its one pruning layer;
    "pdrop_ratio": PDrop's lambda, so that the first content layer receives `budget` tokens). A variant
    of a method is the method with the parameters of its configs/pruner file (tests hold them equal)."""

    label: str  # unique: the CSV's "pruner" column
    method: str  # a registered pruner, or "oracle" (mmtok.testbed.oracle)
    stage: str  # pre-LLM | in-LLM | reference
    params: tuple[tuple[str, object], ...] = ()
    budget_as: str = "budget"
    note: str = ""
    budgets: tuple[int, ...] = BUDGETS  # the columns it runs at; (0,): text only, reported beside the unpruned

    def __post_init__(self) -> None:
        if self.budget_as not in BUDGET_AS:
            raise ValueError(f"row {self.label}: unknown budget_as {self.budget_as!r}; valid: {', '.join(BUDGET_AS)}")
        off = sorted(set(self.budgets) - {*BUDGETS, 0})
        if off:
            raise ValueError(f"row {self.label}: budgets {off} are not columns; valid: 0 (text only), {BUDGETS}")


ROWS = (
    Row("oracle", "oracle", "reference", note="ground truth: object patches first (colours in turn), then background"),
    Row("random", "random", "pre-LLM", (("seed", 0),)),
    Row("mmtok", "mmtok", "pre-LLM"),
    Row("divprune", "divprune", "pre-LLM"),
    Row("visionzip", "visionzip", "pre-LLM", note="CLS attention at the layer the projector reads"),
    Row("vispruner", "vispruner", "pre-LLM", note="CLS attention at the layer the projector reads"),
    Row("prumerge_plus", "prumerge_plus", "pre-LLM", note="CLS attention of the tower's last layer"),
    Row("mmtok_tv_raw", "mmtok", "pre-LLM", (("terms", "tv"), ("similarity", "raw")), note="Table 6: text-vision, raw"),
    Row(
        "mmtok_tv_softmax",
        "mmtok",
        "pre-LLM",
        (("terms", "tv"), ("similarity", "softmax")),
        note="Table 6: text-vision",
    ),
    Row(
        "mmtok_vv_raw", "mmtok", "pre-LLM", (("terms", "vv"), ("similarity", "raw")), note="Table 6: vision-vision, raw"
    ),
    Row(
        "mmtok_vv_softmax",
        "mmtok",
        "pre-LLM",
        (("terms", "vv"), ("similarity", "softmax")),
        note="Table 6: vision-vision",
    ),
    Row("mmtok_adaptive_tau_v", "mmtok", "pre-LLM", (("adaptive_tau_v", True),), note="Table 9: adaptive tau_v"),
    Row(
        "mmtok_pool_mean_pre",
        "mmtok",
        "pre-LLM",
        (("word_pooling", "mean"), ("pooling_stage", "pre")),
        note="Table 10: words mean-pooled before the similarity",
    ),
    Row(
        "mmtok_pool_max_post",
        "mmtok",
        "pre-LLM",
        (("word_pooling", "max"), ("pooling_stage", "post")),
        note="Table 10: max over words after the similarity",
    ),
    Row(
        "mmtok_plus_plus",
        "mmtok",
        "pre-LLM",
        (("exclude_padding", True),),
        note="Table 15; the scenes are square (no padding patches), so it must equal mmtok",
    ),
    Row(
        "text_only",
        "none",
        "reference",
        budgets=(0,),
        note="budget 0: the image placeholder removed, no image token (Tables 4, 20)",
    ),
    Row(
        "fastv",
        "fastv",
        "in-LLM",
        (("layer", BLIND_LAYERS), ("budget_mode", "kept")),
        note=f"K={BLIND_LAYERS}: layer-{BLIND_LAYERS - 1} attention ranks, layers >= {BLIND_LAYERS} keep `budget`",
    ),
    Row(
        "sparsevlm",
        "sparsevlm",
        "in-LLM",
        (("layers", (BLIND_LAYERS - 1,)),),
        budget_as="counts",
        note=f"prunes the output of layer {BLIND_LAYERS - 1} to `budget` (+ recycled clusters)",
    ),
    Row(
        "pdrop",
        "pdrop",
        "in-LLM",
        (("layers", (1, 2, 3)),),
        budget_as="pdrop_ratio",
        note="rank layers L/4, L/2, 3L/4; lambda = sqrt(budget/576): layer 2 gets `budget`, layer 3 fewer",
    ),
    Row(
        "mmtok_llm",
        "mmtok_llm",
        "in-LLM",
        (("layer", BLIND_LAYERS),),
        note=f"MMTok's coverage on the hidden states entering layer {BLIND_LAYERS} (Table 14's second stage)",
    ),
    Row(
        "dart",
        "dart",
        "in-LLM",
        (("layer", BLIND_LAYERS),),
        note=f"K={BLIND_LAYERS}; keeps 4 + 8 * (budget // 8) (its release's label)",
    ),
)
UNRUNNABLE = {
    "cdpruner": (
        "its relevance term needs the CLIP text tower and projections its vision tower was trained with; "
        "the testbed's tower was trained alone and has none"
    ),
}


def pdrop_ratio(budget: int, first_content_stage: int = 2) -> float:
    """PDrop's lambda that leaves `budget` of 576 tokens after its `first_content_stage`-th drop
    (a hair above the root: the release floors int(N * lambda^s), and the root itself may round down)."""
    return min(1.0, (budget / IMAGE_TOKENS) ** (1 / first_content_stage) * (1 + 1e-12))


def row_by_label(label: str) -> Row:
    rows = {r.label: r for r in ROWS}
    if label not in rows:
        raise ValueError(f"unknown table row {label!r}; valid: {', '.join(rows)}")
    return rows[label]


def pruner_for(row: Row, budget: int, oracle=None):
    """The pruner of `row` at column `budget` (`oracle`: the task's OraclePruner, for the oracle row)."""
    from mmtok.pruners import build_pruner  # defers torch

    params = dict(row.params)
    if row.method == "oracle":
        return replace(oracle, budget=budget, **params)
    if row.budget_as == "counts":
        return build_pruner(row.method, None, counts=(budget,), **params)
    if row.budget_as == "pdrop_ratio":
        return build_pruner(row.method, None, ratio=pdrop_ratio(budget), **params)
    return build_pruner(row.method, budget, **params)


def read_rows(path: Path) -> list[dict]:
    if not path.exists():
        return []
    with path.open() as f:
        return list(csv.DictReader(f))


def write_rows(path: Path, rows: list[dict]) -> None:
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        for r in rows:
            writer.writerow({k: (f"{v:.4f}" if isinstance(v, float) else v) for k, v in r.items()})
    os.replace(tmp, path)


def cells(tasks=TASKS, rows=ROWS, budgets=BUDGETS) -> list[Cell]:
    out = []
    for task in tasks:
        out.append(Cell(task, "none", None))
        out += [Cell(task, r.label, b) for r in rows for b in budgets if b in r.budgets]
        out += [Cell(task, r.label, b) for r in rows for b in r.budgets if b not in budgets]
    return out


def settings_lines(rows=ROWS) -> list[str]:
    lines = ["| row | stage | parameters | budget is | note |", "|---|---|---|---|---|"]
    for r in rows:
        params = ", ".join(f"{k}={v}" for k, v in r.params) or "defaults"
        meaning = {
            "budget": "its budget",
            "counts": "counts=(budget,)",
            "pdrop_ratio": "ratio=sqrt(budget/576)",
        }[r.budget_as]
        if not set(r.budgets) & set(BUDGETS):
            meaning = " / ".join(str(b) for b in r.budgets) + " only"
        lines.append(f"| {r.label} | {r.stage} | {params} | {meaning} | {r.note} |")
    lines += ["", "Not run: " + "; ".join(f"{k}: {v}" for k, v in UNRUNNABLE.items()) + ".", ""]
    return lines


def markdown(rows: list[dict], n: dict[str, int], table_rows=ROWS) -> str:
    by = {(r["task"], r["pruner"], r["budget"]): r for r in rows}
    lines = [
        "# Testbed: pruners x budgets on the trained synthetic-scene LLaVA",
        "",
        "Generated by `make testbed-table` (mmtok/testbed/table.py) with the committed model",
        "results/testbed/model; every number comes from lmms-eval through `mmtok.eval.evaluate`.",
        f"Budget: image tokens the LLM receives (pre-LLM rows), or image tokens decoder layer {BLIND_LAYERS} (the",
        f"first that reads image content; layers 0-{BLIND_LAYERS - 1} are content-blind) receives (in-LLM rows).",
        "The oracle is a reference (it knows each patch's ground-truth label), not a method.",
        "Read with the setup in mind (docs/testbed.md): the in-LLM rows rank tokens by attention in a layer",
        "that cannot see image content, by construction, so that ranking is positional (what they carry past",
        "it, DART's hidden-state similarities and SparseVLM's recycled clusters, still holds content); a",
        "method that scored after a content layer would not be challenged here: every question is one hop.",
        "",
        "## Settings",
        "",
        *settings_lines(table_rows),
    ]
    for task in TASKS:
        metric = "POPE F1 (mean of the three splits)" if task == "scenes_pope" else "exact match"
        none = by.get((task, "none", ""))
        lines += [f"## {task}: {metric}, {n.get(task, '?')} questions", ""]
        if none:
            lines += [f"Unpruned (576 tokens): **{float(none['score']):.3f}**", ""]
        for r in table_rows:
            for b in (b for b in r.budgets if b not in BUDGETS):
                v = by.get((task, r.label, str(b)))
                if v:
                    lines += [f"{r.label} ({b} image tokens): **{float(v['score']):.3f}**", ""]
        header = "| pruner | stage | " + " | ".join(str(b) for b in BUDGETS) + " |"
        lines += [header, "|---" * (len(BUDGETS) + 2) + "|"]
        for r in (r for r in table_rows if set(r.budgets) & set(BUDGETS)):
            vals = [by.get((task, r.label, str(b))) for b in BUDGETS]
            cells_ = " | ".join(f"{float(v['score']):.3f}" if v else "" for v in vals)
            lines.append(f"| {r.label} | {r.stage} | {cells_} |")
        lines.append("")
        detail = POPE_COLUMNS[:3] if task == "scenes_pope" else tuple(f"acc_{k}" for k in GQA_KINDS)
        lines += [f"### {task}: per split / kind, image tokens the last layer received", ""]
        lines += ["| pruner | budget | " + " | ".join(detail) + " | tokens |", "|---" * (len(detail) + 3) + "|"]
        for r in rows:
            if r["task"] == task:
                values = " | ".join(f"{float(r[c]):.3f}" for c in detail)
                tokens = f"{float(r['vision_tokens_mean']):.1f}" if r.get("vision_tokens_mean") else ""
                lines.append(f"| {r['pruner']} | {r['budget'] or 'all'} | {values} | {tokens} |")
        lines.append("")
    return "\n".join(lines)


def plot_groups(table_rows=ROWS) -> list[tuple[str, list[Row]]]:
    """The plot's panels: the methods (and the references), then MMTok against its variants."""
    variant = [r for r in table_rows if r.method == "mmtok" and r.label != "mmtok"]
    mmtok = [r for r in table_rows if r.label == "mmtok"]
    refs = [r for r in table_rows if r.stage == "reference"]
    return [
        ("methods", [r for r in table_rows if r not in variant]),
        ("MMTok and its variants", [*refs, *mmtok, *variant]),
    ]


def plot(rows: list[dict], path: Path, table_rows=ROWS) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = plot_groups(table_rows)
    fig, axes = plt.subplots(len(groups), len(TASKS), figsize=(7.5 * len(TASKS), 4.6 * len(groups)), squeeze=False)
    colours = plt.get_cmap("tab20").colors
    for (title, group), line in zip(groups, axes):
        for ax, task in zip(line, TASKS):
            for i, r in enumerate(group):
                pts = sorted(
                    (int(x["budget"]), float(x["score"])) for x in rows if x["task"] == task and x["pruner"] == r.label
                )
                if not pts:
                    continue
                if pts[0][0] not in BUDGETS:  # text only: a level, as the unpruned one
                    ax.axhline(pts[0][1], color="gray", linestyle=":", label=f"{r.label} ({pts[0][0]})")
                    continue
                colour = "k" if r.stage == "reference" else colours[i % len(colours)]
                style = {"reference": ":", "in-LLM": "--"}.get(r.stage, "-")
                ax.plot(*zip(*pts), marker="o", color=colour, linestyle=style, label=f"{r.label} ({r.stage})")
            none = [float(x["score"]) for x in rows if x["task"] == task and x["pruner"] == "none"]
            if none:
                ax.axhline(none[0], color="gray", linestyle="--", label="none (576)")
            ax.set_xscale("log", base=2)
            ax.set_xticks(BUDGETS, [str(b) for b in BUDGETS])
            ax.set_xlabel("vision tokens kept (budget)")
            ax.set_ylabel("POPE F1 (mean of splits)" if task == "scenes_pope" else "exact match")
            ax.set_title(f"{task}: {title}")
            ax.grid(alpha=0.3)
        line[-1].legend(fontsize=7, loc="center left", bbox_to_anchor=(1.01, 0.5))
    fig.tight_layout()
    tmp = path.with_suffix(".tmp.png")
    fig.savefig(tmp, dpi=100)
    os.replace(tmp, path)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=str(Path(__file__).resolve().parents[2] / "results/testbed/model"))
    parser.add_argument("--out", default="results/testbed")
    parser.add_argument("--n", type=int, default=300, help="questions per task (the benchmark configs' testbed_n)")
    parser.add_argument("--cache", default=os.environ.get("MMTOK_CACHE", ".cache"))
    parser.add_argument("--tasks", default=",".join(TASKS))
    parser.add_argument("--rows", default=",".join(r.label for r in ROWS), help="row labels to run")
    args = parser.parse_args(argv)
    import torch

    torch.set_num_threads(1)
    from mmtok.eval.evaluate import evaluate  # defers lmms-eval
    from mmtok.models.loading import load_model  # defers transformers
    from mmtok.testbed.oracle import OraclePruner  # defers torch

    tasks = [t for t in args.tasks.split(",") if t]
    unknown = sorted(set(tasks) - set(TASKS))
    if unknown:
        raise SystemExit(f"unknown task(s) {', '.join(unknown)}; valid: {', '.join(TASKS)}")
    chosen = [row_by_label(label) for label in args.rows.split(",") if label]
    model, processor, _ = load_model(args.model, dtype="float32", attn_implementation="sdpa", device="cpu")
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    csv_path = out_dir / "table.csv"
    rows = read_rows(csv_path)
    done = {(r["task"], r["pruner"], r["budget"]) for r in rows}
    beds = {t: testbed(t, args.n, Path(args.cache)) for t in tasks}
    oracles = {t: OraclePruner.for_benchmark(None, t, args.n, processor) for t in tasks}
    todo = [c for c in cells(tasks, chosen) if c.key not in done]
    for i, cell in enumerate(todo):
        t = time.perf_counter()
        bed = beds[cell.task]
        if cell.budget is None:
            pruner = build_none()
        else:
            pruner = pruner_for(row_by_label(cell.pruner), cell.budget, oracles[cell.task])
        out = evaluate(
            model,
            processor,
            pruner,
            tasks=[bed.task],
            include_path=str(bed.include_path),
            protocol=RunProtocol(progress=False),
        )
        rows.append(score_row(cell, out))
        write_rows(csv_path, rows)
        print(
            f"[{i + 1}/{len(todo)}] {cell.task} {cell.pruner} {cell.key[2] or 'all'}: "
            f"{rows[-1]['score']:.3f} ({time.perf_counter() - t:.0f} s)",
            flush=True,
        )
    order = {key: i for i, key in enumerate(c.key for c in cells())}
    rows.sort(key=lambda r: order.get((r["task"], r["pruner"], r["budget"]), len(order)))
    write_rows(csv_path, rows)
    rows = read_rows(csv_path)  # the markdown and plot from the CSV's rounding, fresh run or resumed
    (out_dir / "table.md").write_text(markdown(rows, {t: args.n for t in TASKS}))
    plot(rows, out_dir / "table.png")
    print(f"wrote {csv_path}, {out_dir / 'table.md'}, {out_dir / 'table.png'}")


def build_none():
    from mmtok.pruners import build_pruner  # defers torch

    return build_pruner("none")


if __name__ == "__main__":
    main()
