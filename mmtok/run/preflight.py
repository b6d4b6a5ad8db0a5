"""The pre-Hydra check: every value of a command line (every cell of a sweep, an experiment's grid
included) composed and validated before job 0 starts. Torch-free, so a bad command fails in about a
second with one line."""

from __future__ import annotations

import itertools
import math
from pathlib import Path

from mmtok.run.compose import _compose_hydra, check_groups, compose
from mmtok.run.schema import CONFIG_DIR, ConfigError
from mmtok.run.validate import validate

_MULTIRUN_FLAGS = {"-m", "--multirun"}


def preflight(argv: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """Everything that can be checked from the command line alone, before hydra.main runs.

    A sweep (`-m budget=64,0`, or an experiment's `hydra.sweeper.params`) is checked value by value
    before job 0 starts: every combination when the grid has at most `FULL_GRID_CHECK` cells,
    otherwise every value of every swept key with the other keys at their first value (so a bad
    value fails wherever it sits in the list). Hydra's own flags (--help, --cfg, ...) skip this.
    """
    flags = [a for a in argv if a.startswith("-")]
    overrides = [a for a in argv if not a.startswith("-")]
    check_groups(overrides, config_dir)
    if any(f not in _MULTIRUN_FLAGS for f in flags):
        return
    cells = sweep_cells(overrides, config_dir)
    _, axes = sweep_axes(overrides, config_dir) if len(cells) > 1 else ([], {})
    for cell in cells:
        try:
            validate(compose(cell, config_dir))
        except ConfigError as exc:
            where = [o for o in cell if o in {v for vs in axes.values() for v in vs}]
            raise ConfigError(f"{exc} (sweep cell {' '.join(where)})" if where else str(exc)) from None


# A grid of at most this many cells is checked cell by cell (~50 ms each); a larger one value by value.
FULL_GRID_CHECK = 64


def sweep_axes(overrides: list[str], config_dir: Path = CONFIG_DIR) -> tuple[list[str], dict[str, list[str]]]:
    """(fixed overrides, {swept key: [override per value]}): the command line's sweeps plus the
    composed experiment's `hydra.sweeper.params` (the command line wins for a key both set)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()

    def split(lines: list[str], fixed: list[str], axes: dict[str, list[str]]) -> None:
        for ov in parser.parse_overrides(lines):
            key = ov.key_or_group
            if key == "hydra" or key.startswith(("hydra.", "hydra/")):
                continue
            if ov.is_sweep_override():
                try:
                    values = list(ov.sweep_string_iterator())
                except Exception:  # glob() and friends need Hydra's loader; Hydra checks those itself
                    continue
                prefix = {"ADD": "+", "FORCE_ADD": "++"}.get(ov.type.name, "")
                axes[key] = [f"{prefix}{key}={v}" for v in values]
            else:
                fixed.append(ov.input_line)

    fixed: list[str] = []
    axes: dict[str, list[str]] = {}
    split(overrides, fixed, axes)
    experiment = [o for o in fixed if o.lstrip("+").split("=", 1)[0] == "experiment"]
    if experiment and not experiment[-1].endswith("=null"):
        params = _compose_hydra(experiment, config_dir).hydra.sweeper.params or {}
        exp_fixed: list[str] = []
        exp_axes: dict[str, list[str]] = {}
        split([f"{k}={v}" for k, v in params.items()], exp_fixed, exp_axes)
        given = set(axes) | {o.lstrip("+~").split("=", 1)[0] for o in fixed}
        axes = {**{k: v for k, v in exp_axes.items() if k not in given}, **axes}
        fixed = [o for o in exp_fixed if o.split("=", 1)[0] not in given] + fixed
    check_groups(fixed + [v for vs in axes.values() for v in vs], config_dir)
    return fixed, axes


def sweep_cells(overrides: list[str], config_dir: Path = CONFIG_DIR) -> list[list[str]]:
    """The override lists preflight composes and validates for a (possibly swept) command line."""
    fixed, axes = sweep_axes(overrides, config_dir)
    if any(not vs for vs in axes.values()):
        raise ConfigError(f"empty sweep for {', '.join(k for k, vs in axes.items() if not vs)}")
    if math.prod(len(vs) for vs in axes.values()) <= FULL_GRID_CHECK:
        return [fixed + list(c) for c in itertools.product(*axes.values())]
    first = {k: vs[0] for k, vs in axes.items()}
    cells = [fixed + list(first.values())]
    for key, values in axes.items():
        for v in values[1:]:
            cells.append(fixed + [v if k == key else f for k, f in first.items()])
    return cells
