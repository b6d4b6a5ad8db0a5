"""The table specifications: which experiments fill each paper table, its layout, the metric each
paper column reads, the paper's budget label of each experiment's unpruned cells, and the notes
printed with it. Each table's arithmetic (its averages, counts, lines) is the paper's own, declared
once in `mmtok.report.averages.PAPER_SECTIONS` and read from there by the builders."""

from __future__ import annotations

from dataclasses import dataclass, field

from mmtok.run.schema import ROOT

PAPER_CSV = ROOT / "results" / "paper" / "paper_tables.csv"
PAPER_MORE_CSV = ROOT / "results" / "paper" / "paper_tables_more.csv"  # the appendix tables (notes beside it)
PAPER_EFFICIENCY_CSV = ROOT / "results" / "paper" / "paper_efficiency.csv"

MMSTAR_COLUMNS = (
    "mmstar_coarse", "mmstar_fine_grained", "mmstar_instance", "mmstar_logical", "mmstar_math", "mmstar_sci_tech",
)  # fmt: skip

# paper column → the row field holding our number (the benchmark config's score, except where a
# table reports another split: the appendix tables' SEED is SEED-IMG, Table 17's extra column SEED-all).
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
    "seed_all": "seedbench_seed_all",
    "ocrbench": "ocrbench_accuracy",
    **{c: c for c in MMSTAR_COLUMNS},  # mmtok.eval.metrics names MMStar's categories as the paper does
}


SEED_IMG = {**METRIC, "seed": "seedbench_seed_image"}


RAW_UNITS = {"mme_total", "mme_perception", "mme_cognition", "mmbench_en_dev_gpt_eval_score"}


# paper column → our benchmark, where they differ: one MMStar run gives all six categories, one SEED
# run both splits
BENCH = {"seed_all": "seed", **{c: "mmstar" for c in MMSTAR_COLUMNS}}


LOCAL = {"gqa": "gqa_local", "mme": "mme_local", "pope": "pope_local"}  # the tiny stand-ins' testbeds


# the paper's budget label of a model's unpruned row (a cell without a budget: none, resize_0.5)
UNPRUNED = {
    "llava15_7b": "576",
    "llava15_13b": "576",
    "llavanext_7b": "2880",
    "llavanext_13b": "2880",
    "qwen25vl_7b": "r1.0",
}


@dataclass(frozen=True)
class TableSpec:
    name: str  # results/tables/<name>.md / .csv
    paper: str  # the `table` key in results/paper/paper_tables*.csv
    # grid (rows of cells, benchmark columns, the paper's derived columns / lines from averages.py) |
    # budgets (table 5) | efficiency (table 8) | mme_efficiency (table 12)
    kind: str
    experiments: tuple[str, ...]  # the experiment files whose cells fill it
    paper_models: tuple[str, ...]  # the paper's model key of each experiment (a section per model)
    metric: dict[str, str] = field(default_factory=lambda: dict(METRIC))
    bench: dict[str, str] = field(default_factory=dict)  # paper column → our benchmark (default: BENCH, same name)
    note: str = ""
    # experiment → the paper's budget label of its unpruned cells, where not the model's (UNPRUNED)
    unpruned: dict[str, str] = field(default_factory=dict)
    paper_only: tuple[str, ...] = ()  # paper methods shown as rows without runs (the fine-tuned VisionZip)
    plots: tuple[str, ...] = ()  # budget (score vs budget per column) | bars (per column, per row) | latency
    details: bool = True  # grid: each cell's retention [x%] and the T̄ block where the paper prints T̄

    def our_bench(self, column: str) -> str:
        return self.bench.get(column, BENCH.get(column, column))

    def unpruned_label(self, experiment: str, model: str) -> str:
        return self.unpruned.get(experiment, UNPRUNED.get(model, "all"))


_NOTE8 = (
    "Ours: wall seconds of the six runs (sum) and of POPE; peak memory = torch.cuda.max_memory_allocated, "
    "weights included (the paper's runtime memory excludes the 25.42 GB of weights); GPU utilisation is not measured."
)


_NOTE_TINY = (
    "A tiny stand-in: the random tiny LLaVA on local testbeds laid out as Table 1 "
    "(paper numbers for the layout only; ours are not comparable)."
)


_NOTE5 = "High image-contribution benchmarks: LLaVA-1.5 MMB, POPE, MME, SEED, GQA; LLaVA-NeXT adds TextVQA."

_FT = "visionzip_ft: the fine-tuned VisionZip, numbers copied by the paper from the VisionZip paper (not run)."

_NOTE20 = (
    "Qwen2.5-VL-7B, dynamic resolution (256 to 2048 tokens per image); budgets r0.2 / r0.1 / r0.05 keep that "
    "fraction of each image's own tokens; `2048` is the fixed-resolution unpruned row (experiment table20_fixed), "
    "`0` text only. Avg† leaves out SQA and OCRBench, as the paper. The paper's text-only Avg† and four of its "
    "retentions use the fixed row as denominator (docs/reproducing.md); ours use the dynamic row throughout. "
    "OCRBench = lmms-eval's correct / 1000."
)

_NOTE12 = (
    "Ours: wall seconds of the whole MME run; peak memory = torch.cuda.max_memory_allocated, weights included "
    "(the paper's runtime memory excludes the 15.87 GB of weights); GPU utilisation is not measured. Paper: 1x A6000."
)


TABLES: dict[str, TableSpec] = {
    t.name: t
    for t in (
        TableSpec(
            "table1", "table1", "grid", ("table1",), ("llava15_7b",), paper_only=("visionzip_ft",),
            note=f"SEED = SEED-all (as the paper). {_FT}", plots=("budget",),
        ),
        TableSpec(
            "table17", "table17", "grid", ("table17",), ("llava15_13b",), SEED_IMG, paper_only=("visionzip_ft",),
            note=f"SEED = SEED-IMG; seed_all = SEED-all of the same run (not averaged). {_FT}", plots=("budget",),
        ),
        TableSpec(
            "table18", "table18", "grid", ("table18",), ("llavanext_7b",), SEED_IMG, paper_only=("visionzip_ft",),
            note=f"SEED = SEED-IMG; budgets are upper bounds over up to 5 crops. {_FT}", plots=("budget",),
        ),
        TableSpec(
            "table19", "table19", "grid", ("table19",), ("llavanext_13b",), SEED_IMG, paper_only=("visionzip_ft",),
            note=f"SEED = SEED-IMG. {_FT}", plots=("budget",),
        ),
        TableSpec(
            "table5", "table5", "budgets", ("table5", "table5_next"), ("llava15_7b", "llavanext_7b"), note=_NOTE5,
            plots=("budget",),
        ),
        TableSpec("table8", "table8", "efficiency", ("table8",), ("llavanext_13b",), note=_NOTE8, plots=("latency",)),
        TableSpec(
            "table3", "table20", "grid", ("table20", "table20_fixed"), ("qwen25vl_7b", "qwen25vl_7b"),
            unpruned={"table20_fixed": "2048"}, plots=("budget",), details=False,
            note="The main text's view of Table 20 (the same runs; results/tables/table20.md adds T̄). " + _NOTE20,
        ),
        TableSpec(
            "table4", "table4", "grid", ("table4", "table4_next"), ("llava15_7b", "llavanext_7b"), SEED_IMG,
            note="All = unpruned, Zero = text only (none@0: no vision tokens); IC = (All − Zero) / Zero. "
            "SEED = SEED-IMG.",
        ),
        TableSpec(
            "table6", "table6", "grid", ("table6",), ("llava15_7b",), plots=("bars",),
            note="LLaVA-1.5-7B at 64 tokens; SEED = SEED-all; Avg over the 8 benchmarks shown (no VQAv2).",
        ),
        TableSpec(
            "table7", "table7", "grid", ("table7",), ("qwen25vl_7b",), plots=("bars",),
            note="Qwen2.5-VL-7B on MME; resize_f: the image scaled by f on both sides, unpruned; mmtok_resize_0.25 "
            "keeps the ratio of the 1/4-resized image's tokens. Qwen keeps at least 256 tokens per image.",
        ),
        TableSpec(
            "table9", "table9", "grid", ("table9",), ("llava15_7b",), SEED_IMG, plots=("bars",),
            note="LLaVA-1.5-7B at 16 tokens. SEED = SEED-IMG in every row (the paper's unpruned 58.6 is SEED-all, "
            "its pruned cells SEED-IMG: docs/reproducing.md).",
        ),
        TableSpec(
            "table10", "table10", "grid", ("table10",), ("llava15_7b",), plots=("bars",),
            note="LLaVA-1.5-7B, MMTok at 64 tokens; SEED = SEED-all; retention and Avg against MMTok without "
            "pooling (the paper's reference), not the unpruned model.",
        ),
        TableSpec(
            "table11", "table11", "grid", ("table11",), ("llava15_7b",), plots=("budget",),
            note="MMStar (lmms-eval's mmstar); raw category scores in %, Average = their mean (not a retention).",
        ),
        TableSpec(
            "table12", "table12", "mme_efficiency", ("table12",), ("qwen25vl_7b",), note=_NOTE12, plots=("latency",)
        ),
        TableSpec(
            "table14", "table14", "grid", ("table14",), ("llavanext_13b",),
            note="LLaVA-NeXT-13B on MME (points); mmtok_then_mmtok_l24: MMTok to an upper 160 after the encoder, "
            "then MMTok again to 80 at decoder layer 24.",
        ),
        TableSpec(
            "table15", "table15", "grid", ("table15",), ("llava15_7b",), SEED_IMG, plots=("budget",),
            note="SEED = SEED-IMG; Avg over GQA, MMB, MME, POPE, SEED (Table 21's Avg@5).",
        ),
        TableSpec(
            "table20", "table20", "grid", ("table20", "table20_fixed"), ("qwen25vl_7b", "qwen25vl_7b"),
            unpruned={"table20_fixed": "2048"}, plots=("budget",), note=_NOTE20,
        ),
        TableSpec(
            "table21", "table21", "grid", ("table21",), ("llava15_7b",), SEED_IMG, plots=("budget",),
            note="SEED = SEED-IMG; Avg@8 over the 8 benchmarks, high-IC Avg@5 over MMB, POPE, MME, SEED, GQA.",
        ),
        TableSpec(
            "table22", "table22", "grid", ("table22",), ("llavanext_7b",), SEED_IMG, plots=("budget",),
            note="SEED = SEED-IMG; upper budgets over up to 5 crops; high-IC Avg@6 adds TextVQA.",
        ),
        TableSpec(
            "tiny", "table1", "grid", ("tiny",), ("llava15_7b",), bench=LOCAL, note=_NOTE_TINY,
            plots=("budget", "latency"),
        ),
    )
}  # fmt: skip
