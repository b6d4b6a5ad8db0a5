"""`python -m mmtok.report status`: cells and jobs per table, and the generations the missing cells
need as far as that is known offline (a bound under `limit`, otherwise per-benchmark cell counts)."""

from __future__ import annotations

from mmtok import report


def test_status_counts_cells_jobs_and_bounds_generations_only_under_a_limit(tmp_path, capsys):
    assert report.main(["status", "--only", "tiny", "--only", "table1", f"results_dir={tmp_path}", "limit=2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "[mmtok] tiny: 0/21 cells completed; 21 cells in 3 jobs, 21 cells in 3 jobs to run"
    assert out[1] == (
        "  generations to run: at most 42 (limit); missing cells per benchmark: gqa_local 7, mme_local 7, pope_local 7"
    )
    assert sum(ln.startswith("  missing tiny ") for ln in out) == 21
    i = out.index("[mmtok] table1: 0/171 cells completed; 171 cells in 9 jobs, 171 cells in 9 jobs to run")
    assert out[i + 1].startswith("  generations to run: at most 342 (limit); missing cells per benchmark: gqa 19, ")

    assert report.main(["status", "--only", "table1", f"results_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[1] == (
        "  generations to run: missing cells x questions of each benchmark (sizes not known offline): "
        "gqa 19, mmbench 19, mme 19, pope 19, sqa 19, vqav2 19, textvqa 19, mmmu 19, seed 19"
    )
