"""`python -m mmtok.report status`: per table, how many cells and jobs it needs, how many are done,
and what the missing work costs in generations, as far as that is known offline.

A cell is one run (a pruner at a budget, or `none`) of one benchmark; a job is one model x benchmark
process that runs its cells in turn. Generations per cell = the benchmark's questions, which are
not known offline (the datasets are on the hub); with `limit=N` a cell makes at most N per
lmms-eval task, and that bound is printed. No sizes are guessed.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from mmtok.run.sweep import SweepCell


def summary(name: str, cells: list[SweepCell], per_cell_bound: Callable[[SweepCell], int | None]) -> list[str]:
    """The status lines of one table. `per_cell_bound(cell)`: the most generations one cell makes
    (limit x its lmms-eval tasks), None when it runs whole benchmarks."""
    done = sum(c.row is not None for c in cells)
    missing = [c for c in cells if c.row is None]
    jobs = list(dict.fromkeys(tuple(c.job) for c in cells))
    pending = list(dict.fromkeys(tuple(c.job) for c in missing))
    lines = [
        f"[mmtok] {name}: {done}/{len(cells)} cells completed; {len(cells)} cells in {len(jobs)} jobs, "
        f"{len(missing)} cells in {len(pending)} jobs to run"
    ]
    if missing:
        per_bench = Counter(c.benchmark for c in missing)
        bounds = [per_cell_bound(c) for c in missing]
        text = ", ".join(f"{b} {n}" for b, n in per_bench.items())
        if all(b is not None for b in bounds):
            lines.append(f"  generations to run: at most {sum(bounds)} (limit); missing cells per benchmark: {text}")
        else:
            lines.append(
                f"  generations to run: missing cells x questions of each benchmark (sizes not known offline): {text}"
            )
    lines += [f"  missing {c.experiment} {c.benchmark} {c.cell} (hash {c.config_hash})" for c in missing]
    return lines
