"""The results store: run folders (the source of truth), the runs.csv index rebuilt from them, the
wandb mirror. A leaf: it imports nothing of mmtok outside this package.

- `runs.csv` has the columns of `RunRow` (docs/results.md). A row is appended last, so a row marks
  a finished (or failed) run; `find_completed` resumes from the run folders and the index.
- `<results_dir>/runs/<run_id>/`: `config.yaml` (the resolved config), `samples.jsonl` (one record
  per answered question), `metrics.json` (every metric lmms-eval produced), `row.json` (the row),
  and `wandb/` (the offline wandb run, when wandb.mode=offline).
"""

from mmtok.store.aggregates import sample_aggregates, stats
from mmtok.store.folders import folder_row_list, write_json, write_samples
from mmtok.store.index import ResultsError, all_rows, append_row, find_completed, read_rows, rebuild_index
from mmtok.store.provenance import git_info, library_versions
from mmtok.store.row import COLUMNS, LATENCY_COLUMNS, METRIC_COLUMNS, OPTIONAL_COLUMNS, STAGES, STATS, RunRow
from mmtok.store.wandb_log import log_wandb

__all__ = [
    "COLUMNS",
    "LATENCY_COLUMNS",
    "METRIC_COLUMNS",
    "OPTIONAL_COLUMNS",
    "STAGES",
    "STATS",
    "ResultsError",
    "RunRow",
    "all_rows",
    "append_row",
    "find_completed",
    "folder_row_list",
    "git_info",
    "library_versions",
    "log_wandb",
    "read_rows",
    "rebuild_index",
    "sample_aggregates",
    "stats",
    "write_json",
    "write_samples",
]
