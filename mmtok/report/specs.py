"""The table specifications: which experiments fill each paper table, its layout, the metric each
paper column reads, and the notes printed with it."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmtok.run.schema import ROOT

PAPER_CSV = ROOT / "results" / "paper" / "paper_tables.csv"
PAPER_MORE_CSV = ROOT / "results" / "paper" / "paper_tables_more.csv"  # the appendix tables (notes beside it)
PAPER_EFFICIENCY_CSV = ROOT / "results" / "paper" / "paper_efficiency.csv"


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
