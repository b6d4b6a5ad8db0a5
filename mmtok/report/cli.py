"""`python -m mmtok.report tables|plots|index|status`: paper tables and plots from the run folders.

make tables                     # every table from whatever rows exist (no runs started)
make table1                     # run experiment=table1 (resumes), then write results/tables/table1.*
python -m mmtok.report tables --only tiny max_new_tokens=4 limit=2   # overrides as for run.py
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from mmtok import store
from mmtok.report.builders import build, write
from mmtok.report.specs import TABLES
from mmtok.report.status import CellCost, cell_cost, generations, not_counted, summary
from mmtok.run.compose import compose
from mmtok.run.schema import ConfigError


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m mmtok.report", description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=("tables", "plots", "index", "status"))
    ap.add_argument("--only", action="append", default=[], help=f"a table ({', '.join(TABLES)}); repeatable")
    ap.add_argument("--out", default=None, help="output folder (default <results_dir>/tables or /plots)")
    ap.add_argument("overrides", nargs="*", help="run.py overrides the sweep ran with (results_dir=…, limit=…)")
    args = ap.parse_intermixed_args(argv)
    try:
        if args.what == "index":
            rdir = Path(compose(args.overrides).results_dir)
            path, n = store.rebuild_index(rdir)
            print(f"[mmtok] {path}: {n} rows rebuilt from {rdir / 'runs'}")
            return 0
        names = args.only or list(TABLES)
        bad = [n for n in names if n not in TABLES]
        if bad:
            raise ConfigError(f"unknown table {bad[0]!r}; valid: {', '.join(TABLES)}")
        rdir = Path(compose(args.overrides).results_dir)
        jobs: dict[tuple[str, ...], CellCost] = {}

        def cost(cell) -> CellCost:  # the generations one cell of this job makes
            key = tuple(cell.job)
            if key not in jobs:
                cfg = compose(list(key))
                bench = cfg.benchmark
                size = bench.testbed_n if bench.testbed else bench.questions
                jobs[key] = cell_cost(size, max(1, len(bench.tasks)), cfg.limit)
            return jobs[key]

        failed, distinct = [], {}
        for name in names:
            # a table whose experiment cannot compose (a cell naming a missing pruner file) stops only itself
            try:
                out = build(name, args.overrides)
            except ConfigError as exc:
                print(f"error: {name}: {exc}", file=sys.stderr)
                failed.append(name)
                continue
            if args.what == "tables":
                md, c = write(out, Path(args.out) if args.out else rdir / "tables")
                print(f"[mmtok] {md} (+ .csv): {len(out.cells) - len(out.missing)}/{len(out.cells)} cells filled")
            elif args.what == "status":
                print("\n".join(summary(name, out.cells, cost)))
                distinct.update({(str(c.results_dir), c.config_hash): c for c in out.cells})
            else:
                from mmtok.report.plots import plot  # defers matplotlib

                for path in plot(name, out, Path(args.out) if args.out else rdir / "plots"):
                    print(f"[mmtok] {path}")
        if args.what == "status" and len(names) - len(failed) > 1:
            cells = list(distinct.values())  # tables share runs (Table 3 is Table 20's; Table 6 reuses Table 1's)
            todo = [c for c in cells if c.row is None]
            n, unknown = generations(todo, cost)
            print(
                f"[mmtok] {len(names) - len(failed)} tables: {len(cells)} distinct cells ({len(todo)} to run), "
                f"generations to run: {n}{not_counted(unknown)}"
            )
        if failed:
            print(f"error: {len(failed)} table(s) not built: {', '.join(failed)}", file=sys.stderr)
            return 2
    except ConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0
