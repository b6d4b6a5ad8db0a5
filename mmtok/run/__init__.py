"""Runs: a config composed and validated (one-line errors before anything loads), a sweep planned,
one run executed into its run folder.

    from mmtok.run import compose, run
    outcome = run(compose(["pruner=random", "budget=8", "limit=4"]))
    outcome.row.pope_f1_avg, outcome.run_dir, outcome.samples[0].total_s

Modules, one job each: `schema` (the config dataclasses), `compose` (Hydra compose + one-line
errors), `validate` (value, source and family checks), `cells` (a job's cells), `preflight` (the
command line and every sweep cell checked before Hydra runs), `sweep` (planning: which cells exist
and which are missing), `identity` (the config hash and run id), `pruner` (the pruner from the
config), `execute` (one run or a job's cells).
"""

from mmtok.run.compose import compose
from mmtok.run.schema import ConfigError

__all__ = ["ConfigError", "RunOutcome", "compose", "run", "run_cells"]


def __getattr__(name: str):
    # `run` and friends import the pruners (and so torch): loaded on first use, so that the
    # preflight (`mmtok.run.preflight`) answers a bad command line without importing torch.
    if name in ("RunOutcome", "run", "run_cells"):
        from mmtok.run import execute  # defers torch (the pruners)

        return getattr(execute, name)
    raise AttributeError(f"module 'mmtok.run' has no attribute {name!r}")
