"""Each paper table's own arithmetic, declared as data: which printed number is derived from which
cells, over which benchmarks, against which denominator row, in which units.

A table section is a mapping `(method, budget, benchmark) → score` (the paper's cells, or ours). A
`Rule` names one printed quantity and how it follows from the cells:

- `retention_mean`: mean over `benchmarks` of score / reference score × 100 (Avg, Avg@8, Avg@5,
  Avg@6, Avg†; Table 10's reference is unpooled MMTok, not the unpruned model). Units cancel per
  benchmark, so MME raw points and % scores mix freely.
- `raw_mean`: mean of the raw scores (Table 11's MMStar Average of its 6 categories, all in %).
- `count_at_least`: how many `benchmarks` reach `threshold` % of the reference (n_ge90 / n_ge80).
- `retention`: per cell, score / reference score × 100 (Table 20's printed per-cell retention).
- `relative_change`: per benchmark, (numerator − reference) / reference (Table 4's image
  contribution IC = (All − Zero) / Zero), as a fraction.
- `scaled`: per benchmark, `threshold` × the reference score (Tables 21/22's 90 % / 80 % lines).
- `budget_ratio`: per cell, the row's ratio budget (`r0.2` → 0.2) × the reference cell (the Qwen
  tables' average token counts: 20 % of each image's own tokens).

Pure: no torch, no file formats beyond the paper's csv, nothing of ours imported, so the builders
(our runs) and the paper-arithmetic test (the paper's own cells) run the same code.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path

Key = tuple[str, Hashable, str]  # (method, budget, benchmark or printed column)

# kind → the units of what it yields (declared, so a reader of a spec knows what the number is)
KINDS = {
    "retention_mean": "% of the reference row",
    "raw_mean": "the benchmarks' own units",
    "count_at_least": "number of benchmarks",
    "retention": "% of the reference row",
    "relative_change": "fraction of the reference row",
    "scaled": "the benchmarks' own units",
    "budget_ratio": "the reference's units (tokens)",
}


@dataclass(frozen=True)
class Rule:
    """One printed quantity and how the paper derives it from a section's cells."""

    column: str  # the printed key: avg_retained_pct, n_ge90, mmstar, image_contribution, threshold_90, …
    kind: str  # one of KINDS
    benchmarks: tuple[str, ...]  # the benchmarks it reads (the paper's choice, e.g. the 5 of 7 of Avg†)
    reference: str = "none"  # the method of the denominator row
    reference_budget: Hashable = None  # its budget; None: the section's only row of that method
    numerator: str = ""  # relative_change: the row set against the reference (Table 4: All)
    threshold: float = 0.0  # count_at_least: the % to reach; scaled: the factor
    methods: tuple[str, ...] = ()  # the rows it applies to (empty: every row of the section)
    printed_in: str = "score"  # where the paper prints it: the cell itself, or a note field (FIELDS)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"unknown rule kind {self.kind!r}; valid: {', '.join(KINDS)}")
        if not self.benchmarks:
            raise ValueError(f"rule {self.column!r} names no benchmark")
        if self.kind == "relative_change" and not self.numerator:
            raise ValueError(f"rule {self.column!r}: relative_change needs a numerator row")
        if self.printed_in not in FIELDS:
            raise ValueError(f"rule {self.column!r}: printed_in {self.printed_in!r}; valid: {', '.join(FIELDS)}")

    @property
    def units(self) -> str:
        return KINDS[self.kind]


def rows(cells: Mapping[Key, float]) -> list[tuple[str, Hashable]]:
    """The section's rows (method, budget), in first-seen order."""
    return list(dict.fromkeys((m, b) for m, b, _ in cells))


def reference_row(rule: Rule, cells: Mapping[Key, float]) -> tuple[str, Hashable] | None:
    """The denominator row of `rule` in this section, None when the section has none."""
    if rule.reference_budget is not None:
        key = (rule.reference, rule.reference_budget)
        return key if key in rows(cells) else None
    found = [r for r in rows(cells) if r[0] == rule.reference]
    if len(found) > 1:  # e.g. Table 20's dynamic and fixed-resolution unpruned rows: the spec must say which
        raise ValueError(
            f"rule {rule.column!r}: {len(found)} {rule.reference!r} rows "
            f"({', '.join(str(b) for _, b in found)}); name one with reference_budget"
        )
    return found[0] if found else None


def _exact(v: float) -> Fraction:
    # A count must not hinge on binary rounding (e.g. 90 % of 61.9 vs a printed 55.71): the decimal
    # the score prints as (str of a float is its shortest round-trip decimal) is compared exactly.
    return Fraction(str(v))


def derive(rule: Rule, cells: Mapping[Key, float]) -> dict[Key, float]:
    """Every value `rule` yields from the section's cells, keyed as the paper prints it:
    row kinds → (method, budget, rule.column); `retention` → (method, budget, benchmark);
    `relative_change` / `scaled` → (rule.column, the numerator's / reference's budget, benchmark).
    A value whose inputs are not all present (or whose reference is 0) is left out, never filled."""
    ref = reference_row(rule, cells)
    if ref is None:
        return {}
    base = {b: cells.get((*ref, b)) for b in rule.benchmarks}
    out: dict[Key, float] = {}
    if rule.kind == "scaled":
        for b, v in base.items():
            if v is not None:
                out[(rule.column, ref[1], b)] = rule.threshold * v
        return out
    if rule.kind == "relative_change":
        num = [r for r in rows(cells) if r[0] == rule.numerator]
        for method, budget in num:
            for b, v in base.items():
                x = cells.get((method, budget, b))
                if x is not None and v:
                    out[(rule.column, budget, b)] = (x - v) / v
        return out
    for method, budget in rows(cells):
        if rule.methods and method not in rule.methods:
            continue
        vals = [cells.get((method, budget, b)) for b in rule.benchmarks]
        if rule.kind == "budget_ratio":
            if (method, budget) != ref and isinstance(budget, str) and budget.startswith("r"):
                ratio = float(budget[1:])
                for b, x in zip(rule.benchmarks, vals):
                    if x is not None and base[b] is not None:
                        out[(method, budget, b)] = ratio * base[b]
            continue
        if rule.kind == "retention":
            for b, x in zip(rule.benchmarks, vals):
                if x is not None and base[b]:
                    out[(method, budget, b)] = 100.0 * x / base[b]
            continue
        if any(x is None for x in vals):
            continue
        if rule.kind == "raw_mean":
            out[(method, budget, rule.column)] = sum(vals) / len(vals)
            continue
        if any(not base[b] for b in rule.benchmarks):
            continue
        if rule.kind == "retention_mean":
            rets = [100.0 * x / base[b] for x, b in zip(vals, rule.benchmarks)]
            out[(method, budget, rule.column)] = sum(rets) / len(rets)
        else:  # count_at_least
            need = Fraction(str(rule.threshold)) / 100
            n = sum(_exact(x) >= need * _exact(base[b]) for x, b in zip(vals, rule.benchmarks))
            out[(method, budget, rule.column)] = float(n)
    return out


# A ratio falls as its denominator rises; a threshold line or a raw mean rises with its reference cells.
_REFERENCE_DIRECTION = {
    "retention_mean": -1, "retention": -1, "relative_change": -1, "scaled": 1, "raw_mean": 1, "budget_ratio": 1
}  # fmt: skip


def derive_range(rule: Rule, cells: Mapping[Key, float], half: Mapping[Key, float]) -> dict[Key, tuple[float, float]]:
    """The least and greatest value `rule` can yield when each cell may lie anywhere within ±half[cell]
    of its printed value (its own rounding): what recomputing from rounded cells can and cannot tell.
    Every value is monotone in each input cell, and within one value a cell is either numerator or
    reference, so the extremes are at the corners: numerators at one end, references at the other.
    Counts are compared exactly (the paper's counts recompute from its printed cells)."""
    if rule.kind == "count_at_least":
        return {k: (v, v) for k, v in derive(rule, cells).items()}
    ref = reference_row(rule, cells)
    toward = _REFERENCE_DIRECTION[rule.kind]

    def corner(sign: int) -> dict[Key, float]:
        return {k: v + sign * (toward if k[:2] == ref else 1) * half.get(k, 0.0) for k, v in cells.items()}

    lo, hi = derive(rule, corner(-1)), derive(rule, corner(+1))
    return {k: (min(lo[k], hi[k]), max(lo[k], hi[k])) for k in lo}


# -- the paper's printed numbers -----------------------------------------------------------------
def printed_tolerance(text: str) -> float:
    """Half a unit in the last printed place: 0.05 for "96.7", 0.0005 for "2.347", 0.5 for "8".
    The paper rounds each printed number from its own unrounded values, so any value within half a
    unit of the printed one prints the same whichever way ties go; an integer count must be exact."""
    digits = len(text.partition(".")[2])
    return 0.5 * 10.0**-digits


def agrees(ours: float, printed: str) -> bool:
    """`ours` prints as `printed` (to the paper's precision; counts exactly)."""
    if "." not in printed and float(printed).is_integer() and float(ours).is_integer():
        return ours == float(printed)
    return abs(ours - float(printed)) <= printed_tolerance(printed) + 1e-9  # 1e-9: the float of a decimal


# where a number is printed: the cell's score, or a figure the paper prints beside it (kept in the note)
FIELDS = {
    "score": None,
    # Table 20's "printed retention 93.3%" and the headline's "87.7% of 85.9"
    "retained_pct": re.compile(r"(?:printed retention |^)([0-9]+(?:\.[0-9]+)?)%(?= of [0-9]|;|$)"),
    "avg_tokens": re.compile(r"avg_tokens=([0-9]+(?:\.[0-9]+)?)"),
}


@dataclass(frozen=True)
class PaperCell:
    table: str
    model: str
    budget: str  # as printed: "576", "r0.2", "0"
    method: str
    benchmark: str
    score: str  # as printed (trailing zeros kept: its precision is the printed precision)
    note: str

    def printed(self, field: str = "score") -> str | None:
        """The number printed in `field` for this cell, as printed; None when the paper prints none."""
        if field == "score":
            return self.score
        m = FIELDS[field].search(self.note)
        return m.group(1) if m else None


def load_paper(paths: Iterable[Path]) -> list[PaperCell]:
    out = []
    for path in paths:
        with open(path, encoding="utf-8", newline="") as f:
            out += [PaperCell(**r) for r in csv.DictReader(f)]
    return out


@dataclass(frozen=True)
class Source:
    """Cells of one paper table and model feeding a section (budgets: only these rows, None: all;
    field: the printed score, or a figure from the note such as avg_tokens)."""

    table: str
    model: str
    budgets: tuple[str, ...] | None = None
    field: str = "score"


@dataclass(frozen=True)
class Section:
    """One printed table section: where its numbers are printed, which cells they follow from, and
    the rules that derive them."""

    table: str  # where the derived numbers are printed
    model: str
    rules: tuple[Rule, ...]
    sources: tuple[Source, ...] = ()  # default: the printed table's own scores of that model

    def feeds(self) -> tuple[Source, ...]:
        return self.sources or (Source(self.table, self.model),)


def section_cells(section: Section, paper: Iterable[PaperCell]) -> tuple[dict[Key, float], dict[Key, float]]:
    """The section's input cells (method, budget, benchmark) → value, and each cell's half unit in
    its last printed place (its own rounding), from the paper's rows."""
    cells: dict[Key, float] = {}
    half: dict[Key, float] = {}
    for src in section.feeds():
        for c in paper:
            if (c.table, c.model) != (src.table, src.model) or (
                src.budgets is not None and c.budget not in src.budgets
            ):
                continue
            text = c.printed(src.field)
            if text is None:
                continue
            key = (c.method, c.budget, c.benchmark)
            if key in cells:
                raise ValueError(f"{section.table}/{section.model}: cell {key} comes from two sources")
            cells[key], half[key] = float(text), printed_tolerance(text)
    return cells, half


# -- each table's rule, as the paper states it ------------------------------------------------------
NINE = ("gqa", "mmbench", "mme", "pope", "sqa", "vqav2", "textvqa", "mmmu", "seed")  # Tables 1, 16-19
EIGHT = ("gqa", "mmbench", "mme", "pope", "sqa", "textvqa", "mmmu", "seed")  # no VQAv2: Tables 6, 10, 21, 22
HIGH_IC_15 = ("mmbench", "pope", "mme", "seed", "gqa")  # LLaVA-1.5's 5 high-IC sets (Tables 4, 5, 15, 21)
HIGH_IC_NEXT = (*HIGH_IC_15, "textvqa")  # LLaVA-NeXT adds TextVQA (Tables 5, 22)
QWEN_DAGGER = ("gqa", "mmbench", "mme", "pope", "textvqa")  # Avg†: SQA (low IC) and OCRBench left out
QWEN_ALL = ("gqa", "mmbench", "mme", "pope", "textvqa", "sqa", "ocrbench")
MMSTAR = ("mmstar_coarse", "mmstar_fine_grained", "mmstar_instance", "mmstar_logical", "mmstar_math", "mmstar_sci_tech")
TABLE8 = ("pope", "seed", "textvqa", "mme", "mmbench", "gqa")  # Table 8's six tasks
TABLE4 = ("mmbench", "pope", "mme", "seed", "gqa", "textvqa", "sqa", "mmmu")


# Table 4: IC = (All − Zero) / Zero, the unpruned row against the text-only one, per benchmark
IC = Rule("image_contribution", "relative_change", TABLE4, reference="text_only", numerator="none")


def avg(benchmarks: tuple[str, ...], column: str = "avg_retained_pct", **kw) -> Rule:
    return Rule(column, "retention_mean", benchmarks, **kw)


def _extreme(high_ic: tuple[str, ...]) -> tuple[Rule, ...]:
    """Tables 21/22: Avg@8, the high-IC average, the ≥90 % / ≥80 % counts, the threshold lines."""
    return (
        avg(EIGHT),
        avg(high_ic, "high_ic_avg_retained_pct"),
        Rule("n_ge90", "count_at_least", EIGHT, threshold=90),
        Rule("n_ge80", "count_at_least", EIGHT, threshold=80),
        Rule("threshold_90", "scaled", EIGHT, threshold=0.9),
        Rule("threshold_80", "scaled", EIGHT, threshold=0.8),
    )


PAPER_SECTIONS: tuple[Section, ...] = (
    Section("table1", "llava15_7b", (avg(NINE),)),
    Section("table17", "llava15_13b", (avg(NINE),)),  # its seed_all column is not averaged
    Section("table18", "llavanext_7b", (avg(NINE),)),
    Section("table19", "llavanext_13b", (avg(NINE),)),
    Section("table5", "llava15_7b", (avg(HIGH_IC_15, "high_ic_avg_retained_pct"),), (Source("table21", "llava15_7b"),)),
    Section(
        "table5", "llavanext_7b", (avg(HIGH_IC_NEXT, "high_ic_avg_retained_pct"),), (Source("table22", "llavanext_7b"),)
    ),
    Section(  # Table 22 has no 320 budget: Table 5's 320 column follows from Table 18's cells (SEED-IMG)
        "table5",
        "llavanext_7b",
        (avg(HIGH_IC_NEXT, "high_ic_avg_retained_pct"),),
        (Source("table18", "llavanext_7b", ("2880", "320")),),
    ),
    Section("table20", "qwen25vl_7b", (
        avg(QWEN_DAGGER, reference_budget="r1.0"),  # against the dynamic-resolution unpruned row
        Rule("retained_pct", "retention", QWEN_ALL, reference_budget="r1.0", printed_in="retained_pct"),
    )),
    Section("table20", "qwen25vl_7b", (  # T̄ at a ratio = the ratio × the dynamic unpruned T̄
        Rule("avg_tokens", "budget_ratio", QWEN_ALL, reference_budget="r1.0", printed_in="avg_tokens"),
    ), (Source("table20", "qwen25vl_7b", field="avg_tokens"),)),
    Section("table7", "qwen25vl_7b", (  # MMTok on the original image, and on the 1/4-resized one
        Rule("avg_tokens", "budget_ratio", ("mme",), methods=("mmtok",), printed_in="avg_tokens"),
        Rule("avg_tokens", "budget_ratio", ("mme",), "resize_0.25", methods=("mmtok_resize_0.25",),
             printed_in="avg_tokens"),
    ), (Source("table7", "qwen25vl_7b", field="avg_tokens"),)),
    Section("table12", "qwen25vl_7b", (  # 86.8 = 10 % of 867.6 tokens, in each of its cells' notes
        Rule("avg_tokens", "budget_ratio", ("mme_infer_time_s", "gpu_util_pct", "runtime_mem_gb"),
             printed_in="avg_tokens"),
    ), (Source("table12", "qwen25vl_7b", field="avg_tokens"),)),
    Section("table4", "llava15_7b", (IC,)),
    Section("table4", "llavanext_7b", (IC,)),
    Section("table6", "llava15_7b", (avg(EIGHT),)),
    Section("table8", "llavanext_13b", (avg(TABLE8),)),  # against Table 8's own (re-run) unpruned row
    Section("table9", "llava15_7b", (avg(("gqa", "mmbench", "pope", "mme", "seed")),)),
    Section("table10", "llava15_7b", (avg(EIGHT, reference="mmtok"),)),  # relative to unpooled MMTok
    Section("table11", "llava15_7b", (Rule("mmstar", "raw_mean", MMSTAR),)),
    Section("table15", "llava15_7b", (avg(HIGH_IC_15),)),
    Section("table21", "llava15_7b", _extreme(HIGH_IC_15)),
    Section("table22", "llavanext_7b", _extreme(HIGH_IC_NEXT)),
    Section("headline", "llava15_7b", (  # "4 tokens keep 87.7 % of POPE F1": against Table 21's unpruned row
        Rule("retained_pct", "retention", ("pope",), printed_in="retained_pct"),
    ), (Source("headline", "llava15_7b"), Source("table21", "llava15_7b", ("576",)))),
)  # fmt: skip
