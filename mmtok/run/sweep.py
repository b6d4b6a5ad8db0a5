"""Sweep planning: every cell of a sweep (an experiment and/or command-line lists) with its config
hash and, when there is one, its completed run; what is still missing, and the command line narrowed
to the jobs that have missing cells (a rerun launches only those)."""

from __future__ import annotations

import itertools
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

from omegaconf import OmegaConf

from mmtok import store
from mmtok.run.cells import Cell, cell_config, read_cell
from mmtok.run.compose import compose
from mmtok.run.identity import config_hash, identity
from mmtok.run.preflight import sweep_axes
from mmtok.run.pruner import build_pruner_from, canonical


@dataclass
class SweepCell:
    """One run of a sweep: which job runs it, its config hash, its completed row if any."""

    experiment: str
    benchmark: str  # our benchmark name
    cell: str  # "none" | "<pruner>@<budget>" | "<pruner>@r<ratio>" (mmtok.run.cells)
    pruner: str  # the cell's pruner file (configs/pruner/<it>.yaml)
    budget: int | None  # tokens; None for keep-all and ratio cells
    config_hash: str
    model: str
    results_dir: Path
    row: store.RunRow | None = None  # the completed run's row, if any
    job: list[str] = field(default_factory=list)  # the job's overrides (one job per model x benchmark)
    retain_ratio: float | None = None  # a ratio cell's ratio

    @property
    def label(self) -> str:
        """The budget as the run id and the paper's keys write it: "64", "r0.2", "0"; "all" keeps all."""
        if self.budget is not None:
            return str(self.budget)
        return "all" if self.retain_ratio is None else f"r{self.retain_ratio:g}"


def job_overrides(experiment: str | None, overrides: Iterable[str] = ()) -> list[list[str]]:
    """One override list per job of the sweep (its axes crossed, command-line lists included)."""
    head = [f"experiment={experiment}"] if experiment else []
    fixed, axes = sweep_axes([*head, *overrides])
    return [fixed + list(c) for c in itertools.product(*axes.values())] if axes else [fixed]


def experiment_cells(experiment: str | None, overrides: Iterable[str] = ()) -> list[SweepCell]:
    """Every cell of the sweep (`experiment` + overrides) with its config hash and completed row
    (None when it has none): what a job of the sweep would run or skip."""
    out: list[SweepCell] = []
    completed: dict[str, dict[str, dict]] = {}
    for job in job_overrides(experiment, overrides):
        cfg = compose(job)
        rdir = Path(cfg.results_dir)
        if str(rdir) not in completed:
            index: dict[str, dict] = {}
            for row in store.all_rows(rdir):
                if row.get("status") == "completed":
                    index[str(row.get("config_hash"))] = row  # later rows win (all_rows is oldest first)
            completed[str(rdir)] = index
        for cell in cfg.cells or [None]:
            c = canonical(cell_config(cfg, cell) if cell else cfg)
            key = config_hash(identity(OmegaConf.to_container(c, resolve=True), build_pruner_from(c)))
            read = read_cell(cell) if cell else Cell(str(cfg.pruner.name), cfg.budget, _ratio(cfg))
            found = completed[str(rdir)].get(key)
            row = store.RunRow.from_record(found) if found is not None else None
            cell_exp = experiment or "-"
            out.append(
                SweepCell(
                    cell_exp,
                    cfg.benchmark.name,
                    cell or _cell_text(read),
                    read.pruner,
                    read.budget,
                    key,
                    cfg.model.name,
                    rdir,
                    row,
                    job,
                    retain_ratio=read.ratio,
                )
            )
    return out


def _ratio(cfg) -> float | None:
    ratio = cfg.pruner.get("retain_ratio")
    return (cfg.pruner.params or {}).get("retain_ratio") if ratio is None else ratio


def _cell_text(cell: Cell) -> str:
    """How a job without `cells` (its own pruner and budget) reads as a cell."""
    if cell.budget is not None:
        return f"{cell.pruner}@{cell.budget}"
    return cell.pruner if cell.ratio is None else f"{cell.pruner}@r{cell.ratio:g}"


def pending_sweep(overrides: list[str]) -> tuple[list[str], int, int, int]:
    """(overrides narrowed to the jobs that still have a missing cell, jobs in all, jobs pending,
    cells missing); the counts are -1 when the sweep cannot be expanded here (launched unchanged).
    Each swept key keeps the values some pending job has (exact for one swept key, e.g. an
    experiment's benchmark axis); a job whose cells are all done is not launched at all."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    for ov in OverridesParser.create().parse_overrides(overrides):
        if ov.is_sweep_override():
            try:
                list(ov.sweep_string_iterator())
            except Exception:  # glob()/range() over groups: only Hydra can expand it; launch as given
                return overrides, -1, -1, -1
    fixed, axes = sweep_axes(overrides)
    cells = experiment_cells(None, overrides)
    jobs = list(dict.fromkeys(tuple(c.job) for c in cells))
    pending = list(dict.fromkeys(tuple(c.job) for c in cells if c.row is None))
    missing = sum(c.row is None for c in cells)
    if not axes or not pending:
        return overrides, len(jobs), len(pending), missing
    narrowed = []
    for values in axes.values():
        keep = [v for v in values if any(v in job for job in pending)]
        prefix, _, _ = keep[0].partition("=")
        narrowed.append(f"{prefix}={','.join(v.split('=', 1)[1] for v in keep)}")
    rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] not in axes]
    return rest + narrowed, len(jobs), len(pending), missing
