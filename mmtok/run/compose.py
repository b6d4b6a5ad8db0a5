"""Composing a run's config as `python run.py <overrides>` would, with Hydra's multi-line errors
turned into one line that names the valid choices."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from omegaconf import DictConfig

from mmtok.run.schema import CONFIG_DIR, GROUPS, ConfigError, RunConfig


def group_options(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    """The options of config group `group`: its YAML files."""
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def choices(values) -> str:
    return ", ".join(str(v) for v in values)


def compose(overrides: list[str] | tuple[str, ...] = (), config_dir: Path = CONFIG_DIR) -> DictConfig:
    """The config `python run.py <overrides>` would run (for in-process runs and tests)."""
    check_groups(list(overrides), config_dir)
    try:
        return _compose(list(overrides), config_dir)
    except Exception as exc:
        key = unknown_key(exc)
        if key is None:
            raise ConfigError(one_line(exc)) from None
        valid = _keys_beside(key, list(overrides), config_dir)
        hint = f"; add a new key with +{key}=VALUE" if key.startswith("pruner.params.") else ""
        raise ConfigError(f"unknown config key {key!r}; valid keys there: {choices(valid)}{hint}") from None


def _compose(overrides: list[str], config_dir: Path) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
        return hydra_compose(config_name="config", overrides=overrides)


def _keys_beside(key: str, overrides: list[str], config_dir: Path) -> list[str]:
    """The keys of `key`'s parent node in the config composed without the override that set `key`."""
    rest = [o for o in overrides if o.lstrip("+~").split("=", 1)[0] != key]
    try:
        node: Any = _compose(rest, config_dir)
        for part in key.split(".")[:-1]:
            node = node[part]
        return list(node.keys())
    except Exception:
        return schema_keys(key)


def unknown_key(exc: BaseException) -> str | None:
    """The full key of an 'unknown key' error anywhere in `exc`'s chain, else None."""
    from omegaconf.errors import ConfigAttributeError, ConfigKeyError

    for e in _chain(exc):
        if isinstance(e, (ConfigKeyError, ConfigAttributeError)) and re.search(r"not in|is not in struct", str(e)):
            return str(getattr(e, "full_key", None) or _quoted(str(e)))
    return None


def _chain(exc: BaseException) -> list[BaseException]:
    chain: list[BaseException] = []
    e: BaseException | None = exc
    while e is not None and e not in chain:
        chain.append(e)
        e = e.__cause__ or e.__context__
    return chain


def check_groups(overrides: list[str], config_dir: Path = CONFIG_DIR) -> None:
    """`model=`, `pruner=`, `benchmark=`, `experiment=` (sweep lists too) name existing YAMLs."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        parsed = OverridesParser.create().parse_overrides(overrides)
    except Exception as exc:
        raise ConfigError(f"cannot parse the overrides: {one_line(exc)}") from None
    for ov in parsed:
        group = ov.key_or_group
        if group not in GROUPS or ov.is_delete():
            continue
        try:
            values = list(ov.sweep_string_iterator()) if ov.is_sweep_override() else [ov.value()]
        except Exception:  # glob() and friends need Hydra's loader; Hydra checks those itself
            continue
        valid = group_options(group, config_dir)
        for v in values:
            if v is None and group == "experiment":
                continue
            if str(v) not in valid:
                raise ConfigError(f"unknown {group} {v!r}; valid: {choices(valid)}")


def _compose_hydra(overrides: list[str], config_dir: Path) -> DictConfig:
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    if GlobalHydra.instance().is_initialized():
        GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return hydra_compose(config_name="config", overrides=overrides, return_hydra_config=True)
    except Exception as exc:
        raise ConfigError(one_line(exc)) from None


def one_line(exc: BaseException) -> str:
    """A Hydra / OmegaConf error as one line."""
    from omegaconf.errors import OmegaConfBaseException

    key = unknown_key(exc)
    if key is not None:
        return f"unknown config key {key!r}; valid keys there: {choices(schema_keys(key))}"
    for e in _chain(exc):
        if isinstance(e, OmegaConfBaseException) and getattr(e, "full_key", None):
            msg = (str(getattr(e, "msg", None) or e).strip().splitlines() or [""])[0]
            return f"invalid value for {e.full_key}: {msg.strip()}"
    lines = [ln.strip() for ln in str(exc).splitlines() if ln.strip()]
    drop = ("Set the environment variable HYDRA_FULL_ERROR", "full_key:", "object_type=", "reference_type=")
    return "; ".join(ln for ln in lines if not ln.startswith(drop)) or type(exc).__name__


def _quoted(text: str) -> str:
    m = re.search(r"'([^']+)'", text)
    return m.group(1) if m else text


def schema_keys(dotted: str) -> list[str]:
    """The keys valid beside `dotted` (the keys of its parent node in the schema)."""
    import typing
    from dataclasses import fields, is_dataclass

    node: Any = RunConfig
    for part in str(dotted).split(".")[:-1]:
        sub = typing.get_type_hints(node).get(part) if is_dataclass(node) else None
        if not is_dataclass(sub):
            return (
                []
                if not is_dataclass(node) or part in {f.name for f in fields(node)}
                else [f.name for f in fields(node)]
            )
        node = sub
    return [f.name for f in fields(node)]
