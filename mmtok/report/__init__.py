"""Reports: the paper's tables rebuilt from the run folders, beside the paper's numbers, and plots.

`specs` (which experiments fill which table), `builders` (cells looked up by config hash, markdown
and csv), `plots` (PNG figures), `cli` (`python -m mmtok.report tables|plots|index|status`). It
reads result files, never launcher state.
"""

from mmtok.report.builders import CellRecord, TableOut, build, paper_rows, write
from mmtok.report.cli import main
from mmtok.report.specs import TABLES, TableSpec

__all__ = ["TABLES", "CellRecord", "TableOut", "TableSpec", "build", "main", "paper_rows", "write"]
