"""`python -m mmtok.report status`: per table, how many cells and jobs it needs, how many are done,
and how many generations (answered questions) it needs in all and still has to run, from each
benchmark's declared size offline.

A cell is one run (a pruner at a budget, or `none`) of one benchmark; a job is one model x benchmark
process that runs its cells in turn. A cell generates one answer per question: its benchmark's
`questions` (the hub split's size in its config; a local testbed's `testbed_n`), at most `limit`
per lmms-eval task. A benchmark that declares no size is named instead of guessed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass

from mmtok.run.sweep import SweepCell


@dataclass(frozen=True)
class CellCost:
    """The generations one cell makes: `n` (None: not known offline), exact or an upper bound."""

    n: int | None
    exact: bool = True


def cell_cost(questions: int | None, tasks: int, limit: int | None) -> CellCost:
    """`questions` of a benchmark of `tasks` lmms-eval tasks under `limit` (per task)."""
    if questions is None:
        return CellCost(limit * tasks, exact=False) if limit else CellCost(None, exact=False)
    if limit is None:
        return CellCost(questions)
    return CellCost(min(questions, limit * tasks), exact=tasks == 1 or questions <= limit)


def generations(cells: Iterable[SweepCell], cost: Callable[[SweepCell], CellCost]) -> tuple[str, Counter]:
    """The generations `cells` make ("at most N" where a limit bounds a size not declared), and per
    benchmark whose size is not declared its cells (counted apart, never guessed)."""
    total, bounded, unknown = 0, False, Counter()
    for c in cells:
        k = cost(c)
        if k.n is None:
            unknown[c.benchmark] += 1
            continue
        total += k.n
        bounded |= not k.exact
    return f"{'at most ' if bounded else ''}{total:,}", unknown


def not_counted(unknown: Counter, todo: Counter | None = None) -> str:
    """ "; not counted: seed (19 cells in all, 19 to run; size not declared)" (empty when all are counted)."""
    if not unknown:
        return ""
    parts = [
        f"{b} ({n} cells" + (f" in all, {todo[b]} to run" if todo is not None else "") + ")" for b, n in unknown.items()
    ]
    return "; not counted: " + ", ".join(parts) + ": size not declared"


def summary(name: str, cells: list[SweepCell], cost: Callable[[SweepCell], CellCost]) -> list[str]:
    """The status lines of one table. `cost(cell)`: the generations one cell makes."""
    done = sum(c.row is not None for c in cells)
    missing = [c for c in cells if c.row is None]
    jobs = list(dict.fromkeys(tuple(c.job) for c in cells))
    pending = list(dict.fromkeys(tuple(c.job) for c in missing))
    (total, unknown), (todo, unknown_todo) = generations(cells, cost), generations(missing, cost)
    lines = [
        f"[mmtok] {name}: {done}/{len(cells)} cells completed; {len(cells)} cells in {len(jobs)} jobs, "
        f"{len(missing)} cells in {len(pending)} jobs to run",
        f"  generations: {total} in all, {todo} to run{not_counted(unknown, unknown_todo)}",
    ]
    if missing:
        per_bench = Counter(c.benchmark for c in missing)
        lines.append("  missing cells per benchmark: " + ", ".join(f"{b} {n}" for b, n in per_bench.items()))
    lines += [f"  missing {c.experiment} {c.benchmark} {c.cell} (hash {c.config_hash})" for c in missing]
    return lines
