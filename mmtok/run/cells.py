"""Job cells: several runs one job executes in turn on one loaded model (the experiments' `cells:`
lists). A cell names a pruner FILE of configs/pruner/ (its `name:` is the method; variant files
carry parameters) and a budget:

    mmtok@64          64 tokens (the `budget` key)
    mmtok@r0.2        a ratio budget: budget null, pruner.retain_ratio 0.2 (run id label `r0.2`)
    none@0, mmtok@0   text only: no image token reaches the LLM (every pre-LLM pruner's @0 is one run)
    none, resize_0.5  a file whose method is `none`, without a budget: every token of the image
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from omegaconf import DictConfig, OmegaConf

from mmtok.run.compose import choices, group_options
from mmtok.run.schema import CONFIG_DIR, ConfigError, PrunerConfig

_CELL_RE = re.compile(r"^([a-z0-9_][a-z0-9_.]*)(?:@(?:(\d+)|r(\d*\.?\d+)))?$")
_FORMS = "write <pruner>@<budget> (e.g. mmtok@64), <pruner>@r<ratio> (e.g. mmtok@r0.2), none@0 (text only) or none"


@dataclass(frozen=True)
class Cell:
    """One parsed cell: the pruner file and its budget (tokens) or retain ratio; neither = keep all."""

    pruner: str  # the file name in configs/pruner/
    budget: int | None = None
    ratio: float | None = None


def pruner_file(name: str) -> DictConfig:
    """The pruner node of configs/pruner/<name>.yaml (none-like files are _global_: their `pruner:`)."""
    node = OmegaConf.load(CONFIG_DIR / "pruner" / f"{name}.yaml")
    return node.pruner if "pruner" in node else node


def read_cell(cell: str) -> Cell:
    """ "mmtok@64" → Cell("mmtok", 64); "mmtok@r0.2" → Cell("mmtok", ratio=0.2); "none" → Cell("none").
    One-line ConfigError otherwise."""
    text = str(cell).strip()
    m = _CELL_RE.match(text)
    if m is None:
        raise ConfigError(f"bad cell {cell!r}; {_FORMS}")
    name, budget, ratio = m.group(1), m.group(2), m.group(3)
    pruners = group_options("pruner")
    if name not in pruners:
        raise ConfigError(f"unknown pruner {name!r} in cell {cell!r}; valid: {choices(pruners)}")
    keeps_all = pruner_file(name).get("name") == "none"
    if budget is not None and int(budget) == 0:
        return Cell(name, 0)
    if keeps_all:
        if budget is not None or ratio is not None:
            raise ConfigError(
                f"cell {cell!r}: pruner {name} keeps every token; write it as {name} (or {name}@0 for text only)"
            )
        return Cell(name)
    if ratio is not None:
        value = float(ratio)
        if not 0.0 < value <= 1.0:
            raise ConfigError(f"cell {cell!r}: the ratio must be in (0, 1] ({name}@r0.2 keeps 20 % of each crop)")
        return Cell(name, ratio=value)
    if budget is None:
        raise ConfigError(f"cell {cell!r} needs a budget: {name}@<budget> (>= 1, 0 = text only) or {name}@r<ratio>")
    return Cell(name, int(budget))


def parse_cell(cell: str) -> tuple[str, int | None]:
    """(pruner file, token budget) of a cell: "mmtok@64" → ("mmtok", 64), "none" → ("none", None);
    a ratio cell's budget is None (its ratio: `read_cell`)."""
    c = read_cell(cell)
    return c.pruner, c.budget


def cell_config(cfg: DictConfig, cell: str) -> DictConfig:
    """The config of one cell of a job: the job's config with the cell's pruner (its YAML in
    configs/pruner/, or the job's own pruner node, overrides included, when the names match and
    the image is scaled alike) and budget, or retain ratio with budget null (the same run as
    `budget=null pruner.retain_ratio=r`)."""
    c = read_cell(cell)
    out = cfg.copy()
    # The job's own node (overrides included) only for a plain pruner of that name and image scale:
    # a job of pruner=resize_0.5 is no `none` cell although its name is none, and a job composed with
    # an in-LLM stage (`pruner.then`) must not lend its stage to a plain cell.
    node = OmegaConf.merge(OmegaConf.structured(PrunerConfig), pruner_file(c.pruner))
    if (
        c.pruner != cfg.pruner.name
        or node.image_scale != cfg.pruner.get("image_scale", 1.0)
        or cfg.pruner.get("then") is not None
    ):
        out.pruner = node
    out.budget = c.budget
    if c.ratio is not None:
        out.pruner.retain_ratio = c.ratio
    out.cells = []
    return out
