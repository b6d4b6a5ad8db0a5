"""Job cells: several (pruner, budget) runs one job executes in turn on one loaded model, written
`<pruner>@<budget>` or `none` (the experiments' `cells:` lists)."""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf

from mmtok.run.compose import choices, group_options
from mmtok.run.schema import CONFIG_DIR, ConfigError, PrunerConfig

_CELL_RE = re.compile(r"^([a-z0-9_]+)(?:@(\d+))?$")


def parse_cell(cell: str) -> tuple[str, int | None]:
    """ "mmtok@64" → ("mmtok", 64); "none" → ("none", None). One-line ConfigError otherwise."""
    m = _CELL_RE.match(str(cell).strip())
    pruners = group_options("pruner")
    if m is None:
        raise ConfigError(f"bad cell {cell!r}; write <pruner>@<budget> (e.g. mmtok@64) or none")
    name, budget = m.group(1), m.group(2)
    if name not in pruners:
        raise ConfigError(f"unknown pruner {name!r} in cell {cell!r}; valid: {choices(pruners)}")
    if name == "none":
        if budget is not None:
            raise ConfigError(f"cell {cell!r}: pruner none keeps every token; write it as none")
        return name, None
    if budget is None or int(budget) < 1:
        raise ConfigError(f"cell {cell!r} needs a budget >= 1: {name}@<budget>")
    return name, int(budget)


def cell_config(cfg: DictConfig, cell: str) -> DictConfig:
    """The config of one cell of a job: the job's config with the cell's pruner (its YAML in
    configs/pruner/, or the job's own pruner node, overrides included, when the names match) and budget."""
    name, budget = parse_cell(cell)
    out = cfg.copy()
    # the job's own node only for a plain pruner of that name: a job composed with an in-LLM stage
    # (`pruner.then`) must not lend its stage to a plain cell
    if name != cfg.pruner.name or cfg.pruner.get("then") is not None:
        node = OmegaConf.load(CONFIG_DIR / "pruner" / f"{name}.yaml")
        node = node.pruner if "pruner" in node else node  # none.yaml is a _global_ file
        out.pruner = OmegaConf.merge(OmegaConf.structured(PrunerConfig), node)
    out.budget = budget
    out.cells = []
    return out
