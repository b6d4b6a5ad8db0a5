"""`python -m mmtok.report status`: cells and jobs per table, and the generations they need from
each benchmark's declared size (a local testbed's rows; at most `limit` per task), offline."""

from __future__ import annotations

from mmtok import report
from mmtok.report.status import CellCost, cell_cost

# the declared sizes of Table 1's benchmarks but SEED (configs/benchmark/*.yaml `questions`)
TABLE1_SIZES = 12578 + 4329 + 2374 + 9000 + 2017 + 214354 + 5000 + 900


def test_cell_cost_from_the_declared_size_and_the_limit():
    assert cell_cost(2374, 1, None) == CellCost(2374)
    assert cell_cost(2374, 1, 10) == CellCost(10)
    assert cell_cost(8, 1, 10) == CellCost(8)  # a limit above the size changes nothing
    assert cell_cost(None, 1, 10) == CellCost(10, exact=False)  # a bound, not a count
    assert cell_cost(None, 1, None) == CellCost(None, exact=False)
    assert cell_cost(100, 2, 10) == CellCost(20, exact=False)  # how the size splits over tasks is not known


def test_status_counts_cells_jobs_and_generations(tmp_path, capsys):
    assert report.main(["status", "--only", "tiny", "--only", "table1", f"results_dir={tmp_path}", "limit=2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[:3] == [
        "[mmtok] tiny: 0/21 cells completed; 21 cells in 3 jobs, 21 cells in 3 jobs to run",
        "  generations: 42 in all, 42 to run",
        "  missing cells per benchmark: gqa_local 7, mme_local 7, pope_local 7",
    ]
    assert sum(ln.startswith("  missing tiny ") for ln in out) == 21
    i = out.index("[mmtok] table1: 0/171 cells completed; 171 cells in 9 jobs, 171 cells in 9 jobs to run")
    assert out[i + 1] == "  generations: at most 342 in all, at most 342 to run"  # SEED's size is not declared
    assert out[-1] == "[mmtok] 2 tables: 192 distinct cells (192 to run), generations to run: at most 384"

    assert report.main(["status", "--only", "table1", f"results_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out.splitlines()
    whole = f"{19 * TABLE1_SIZES:,}"
    assert out[1] == (
        f"  generations: {whole} in all, {whole} to run; not counted: seed (19 cells in all, 19 to run): "
        "size not declared"
    )
    assert out[2] == (
        "  missing cells per benchmark: gqa 19, mmbench 19, mme 19, pope 19, sqa 19, vqav2 19, textvqa 19, "
        "mmmu 19, seed 19"
    )


def test_a_table_that_cannot_compose_stops_only_itself(tmp_path, capsys, monkeypatch):
    """A table whose experiment names a cell that does not exist (a pruner file not there yet) is
    reported in one line; the other tables are still built, and the exit status says so."""
    from mmtok.report import cli
    from mmtok.report.specs import TABLES, TableSpec

    broken = TableSpec("broken", "table1", "grid", ("tiny",), ("llava15_7b",))
    monkeypatch.setitem(TABLES, "broken", broken)
    real = cli.build

    def build(name, overrides):
        return real("tiny", [*overrides, "cells=[none,nosuchpruner@4]"]) if name == "broken" else real(name, overrides)

    monkeypatch.setattr(cli, "build", build)
    assert report.main(["status", "--only", "broken", "--only", "tiny", f"results_dir={tmp_path}"]) == 2
    captured = capsys.readouterr()
    err = captured.err.splitlines()
    assert len(err) == 2 and err[1] == "error: 1 table(s) not built: broken"
    assert err[0].startswith("error: broken: unknown pruner 'nosuchpruner' in cell 'nosuchpruner@4'; valid: cdpruner, ")
    assert captured.out.startswith("[mmtok] tiny: 0/21 cells completed")
