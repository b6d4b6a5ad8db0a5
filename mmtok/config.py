"""The run configuration: structured schemas (Hydra ConfigStore) and the checks that run before any
model loads.

`configs/config.yaml` starts its defaults list with `run_schema` (the `RunConfig` dataclass below),
so every key the YAMLs or the command line set is type-checked and a misspelt key is an error.

Bad input must fail fast with ONE line that names the valid choices. Hydra's own errors for a
missing group option or a key typo are multi-line, so `preflight(argv)` runs before `hydra.main`:
it checks the config-group choices against the YAML files, composes the config with Hydra's compose
API, and runs `validate` (value ranges, choices, and whether the model can be found locally).
Nothing here imports torch, so a bad command fails in about a second.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, DictConfig, OmegaConf

from mmtok.choices import IMAGE_PREPROCESS, MULTI_IMAGE, PROMPT_FORMATS, check_family_options
from mmtok.models.registry import family_names

ROOT = Path(__file__).resolve().parent.parent
CONFIG_DIR = ROOT / "configs"

# Config groups a user picks with `group=option`; their options are the YAML files in configs/<group>/.
GROUPS = ("model", "pruner", "benchmark", "experiment")

WANDB_MODES = ("online", "offline", "disabled")
DTYPES = ("float16", "bfloat16", "float32", "auto")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")
TINY_FAMILIES = family_names()  # = their model_type
SUMMARIES = ("pope", "gqa", "mme")
TESTBEDS = ("pope", "gqa", "mme", "scenes_pope", "scenes_gqa")
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")
_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ConfigError(ValueError):
    """Bad user input; its message is one line naming the valid choices."""


# -- schemas --------------------------------------------------------------------------------------
@dataclass
class ModelConfig:
    name: str = MISSING  # the label in result rows (llava15_7b, ...)
    path: str = MISSING  # a hub id (llava-hf/llava-1.5-7b-hf) or a local checkpoint folder
    tiny: str | None = None  # llava | llava_next | qwen2_5_vl: build a tiny random checkpoint at `path` on first use
    dtype: str = "float16"
    attn_implementation: str = "sdpa"
    device: str = "cuda"  # the default for the top-level `device`
    threads: int | None = None  # the default for the top-level `threads`
    download: bool = False  # allow from_pretrained to download a hub id that is not in the HF cache
    # the checkpoint's model_type, declared by hub-model configs so that a machine without the
    # weights (a report, a sweep's preflight) knows the family; checked against config.json when on disk
    family: str | None = None
    # Qwen2.5-VL image sizing: images are resized to a pixel count in [min_pixels, max_pixels]
    # (null keeps the checkpoint's). Other families take neither. Left out of the run identity when null.
    min_pixels: int | None = None
    max_pixels: int | None = None


@dataclass
class PrunerConfig:
    name: str = MISSING  # a key of mmtok.pruners.PRUNERS
    params: dict[str, Any] = field(default_factory=dict)  # the pruner dataclass's fields (not budget)
    # The release's Qwen budget: every crop keeps int(ratio x its tokens), instead of `budget` (set
    # budget=null). The same as pruner.params.retain_ratio; the pruner checks it.
    retain_ratio: float | None = None


@dataclass
class BenchmarkConfig:
    name: str = MISSING  # the label in result rows (pope, gqa, ...)
    tasks: list[str] = field(default_factory=list)  # lmms-eval task names (empty for a testbed)
    summary: str | None = None  # pope | gqa | mme: the paper's aggregate metrics
    score: str | None = None  # the headline metric key (the paper's number), copied to `score`
    testbed: str | None = None  # pope | gqa | mme: build a small local dataset of this format
    testbed_n: int = 24  # testbed size (per POPE split)
    include_path: str | None = None  # a folder of extra lmms-eval task YAMLs
    multi_image: str = "error"  # the default for the top-level `multi_image` (seed: middle, mmmu: first)
    # The generation cap of the task's own lmms-eval 0.7.3 YAML (1024, llava_hf's default, where the
    # YAML sets none): the paper protocol's `max_new_tokens` (experiment files interpolate it).
    task_max_new_tokens: int = 1024


@dataclass
class WandbConfig:
    mode: str = "offline"  # online | offline | disabled; offline writes into the run folder
    project: str = "mmtok"
    entity: str | None = None
    tags: list[str] = field(default_factory=list)


@dataclass
class RunConfig:
    model: ModelConfig = MISSING
    pruner: PrunerConfig = MISSING
    benchmark: BenchmarkConfig = MISSING
    budget: int | None = None  # vision tokens kept before the LLM; null keeps all
    limit: int | None = None  # samples per lmms-eval task; null = the whole benchmark
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads (torch.set_num_threads); null = torch's default
    seed: int = 0
    batch_size: int = 1
    max_new_tokens: int = 16
    prompt_format: str = "hf"  # hf (the checkpoint's chat template) | vicuna_v1 (original LLaVA)
    image_preprocess: str = "crop"  # crop (HF centre crop) | pad (original LLaVA pad-to-square)
    multi_image: str = "error"  # documents with several images: error | first | middle (one image reaches the LLM)
    # Cells one job runs in turn on one loaded model: "none" (keep all) or "<pruner>@<budget>"; empty
    # = the single run of pruner/budget. Each cell writes its own run folder and resumes on its own.
    cells: list[str] = field(default_factory=list)
    force: bool = False  # rerun even if runs.csv has a completed row for this config
    progress: bool = True
    results_dir: str = "results"
    cache_dir: str = ".cache"  # tiny checkpoints and local testbeds are built here on first use
    wandb: WandbConfig = field(default_factory=WandbConfig)


def register() -> None:
    from hydra.core.config_store import ConfigStore

    ConfigStore.instance().store(name="run_schema", node=RunConfig)
    # `${mmtok_root:}`: the repository root, so a committed checkpoint loads from any working folder
    OmegaConf.register_new_resolver("mmtok_root", lambda: str(ROOT), replace=True)


register()

# Keys that do not change what a run measures (left out of the resume hash).
OPERATIONAL_KEYS = ("force", "progress", "results_dir", "cache_dir", "wandb", "cells")

_CELL_RE = re.compile(r"^([a-z0-9_]+)(?:@(\d+))?$")


def parse_cell(cell: str) -> tuple[str, int | None]:
    """ "mmtok@64" → ("mmtok", 64); "none" → ("none", None). One-line ConfigError otherwise."""
    m = _CELL_RE.match(str(cell).strip())
    pruners = group_options("pruner")
    if m is None:
        raise ConfigError(f"bad cell {cell!r}; write <pruner>@<budget> (e.g. mmtok@64) or none")
    name, budget = m.group(1), m.group(2)
    if name not in pruners:
        raise ConfigError(f"unknown pruner {name!r} in cell {cell!r}; valid: {_choices(pruners)}")
    if name == "none":
        if budget is not None:
            raise ConfigError(f"cell {cell!r}: pruner none keeps every token; write it as none")
        return name, None
    if budget is None or int(budget) < 1:
        raise ConfigError(f"cell {cell!r} needs a budget >= 1: {name}@<budget>")
    return name, int(budget)


# -- option lists ---------------------------------------------------------------------------------
def group_options(group: str, config_dir: Path = CONFIG_DIR) -> list[str]:
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def _choices(values) -> str:
    return ", ".join(str(v) for v in values)


# -- value checks ---------------------------------------------------------------------------------
def validate(cfg: DictConfig, *, check_model: bool = True) -> None:
    """Raise ConfigError (one line) for any bad value; torch-free and fast."""

    def positive(key: str, value, what: str, allow_none: bool) -> None:
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be {what}; got {value!r}")

    positive("budget", cfg.budget, "a positive integer (vision tokens kept) or null to keep all", True)
    positive("limit", cfg.limit, "an integer >= 1 (samples per task) or null for the whole benchmark", True)
    positive("threads", cfg.threads, "an integer >= 1 (torch CPU threads) or null for torch's default", True)
    positive("batch_size", cfg.batch_size, "an integer >= 1", False)
    positive("max_new_tokens", cfg.max_new_tokens, "an integer >= 1", False)
    positive("benchmark.testbed_n", cfg.benchmark.testbed_n, "an integer >= 1", False)
    for key, value, valid in (
        ("prompt_format", cfg.prompt_format, PROMPT_FORMATS),
        ("image_preprocess", cfg.image_preprocess, IMAGE_PREPROCESS),
        ("multi_image", cfg.multi_image, MULTI_IMAGE),
        ("benchmark.multi_image", cfg.benchmark.multi_image, MULTI_IMAGE),
        ("wandb.mode", cfg.wandb.mode, WANDB_MODES),
        ("model.dtype", cfg.model.dtype, DTYPES),
        ("model.attn_implementation", cfg.model.attn_implementation, ATTN_IMPLEMENTATIONS),
    ):
        if value not in valid:
            raise ConfigError(f"unknown {key} {value!r}; valid: {_choices(valid)}")
    if cfg.model.get("family") is not None and cfg.model.family not in TINY_FAMILIES:
        raise ConfigError(f"unknown model.family {cfg.model.family!r}; valid: {_choices(TINY_FAMILIES)} or null")
    if cfg.model.tiny is not None and cfg.model.tiny not in TINY_FAMILIES:
        raise ConfigError(f"unknown model.tiny {cfg.model.tiny!r}; valid: {_choices(TINY_FAMILIES)} or null")
    if not _DEVICE_RE.match(str(cfg.device)):
        raise ConfigError(f"unknown device {cfg.device!r}; valid: cpu, cuda, cuda:N, mps")
    bench = cfg.benchmark
    if bench.summary is not None and bench.summary not in SUMMARIES:
        raise ConfigError(f"unknown benchmark.summary {bench.summary!r}; valid: {_choices(SUMMARIES)} or null")
    if bench.testbed is not None and bench.testbed not in TESTBEDS:
        raise ConfigError(f"unknown benchmark.testbed {bench.testbed!r}; valid: {_choices(TESTBEDS)} or null")
    if bench.summary == "mme" and cfg.limit is not None and cfg.limit % 2:
        raise ConfigError(f"MME questions come in pairs (acc+ scores both): limit must be even; got {cfg.limit}")
    if bench.testbed is None and not bench.tasks:
        raise ConfigError(f"benchmark {bench.name!r} names no lmms-eval tasks (benchmark.tasks) and no testbed")
    positive("benchmark.task_max_new_tokens", cfg.benchmark.task_max_new_tokens, "an integer >= 1", False)
    for cell in cfg.cells:
        parse_cell(cell)
    if not str(cfg.pruner.name).strip():
        raise ConfigError(f"pruner.name is empty; valid: {_choices(group_options('pruner'))}")
    positive("model.min_pixels", cfg.model.min_pixels, "an integer >= 1 (pixels) or null for the checkpoint's", True)
    positive("model.max_pixels", cfg.model.max_pixels, "an integer >= 1 (pixels) or null for the checkpoint's", True)
    if cfg.model.min_pixels is not None and cfg.model.max_pixels is not None:
        if cfg.model.min_pixels > cfg.model.max_pixels:
            raise ConfigError(
                f"model.min_pixels ({cfg.model.min_pixels}) exceeds model.max_pixels ({cfg.model.max_pixels})"
            )
    if check_model:
        check_model_source(cfg.model)
        check_family(cfg)


def model_family(model: DictConfig) -> str | None:
    """The checkpoint's `model_type` without loading anything: `model.tiny`, else the config.json of
    the local folder or of the cached hub snapshot, else the config's declared `model.family`; None
    when none of them says (a local config of a checkpoint not downloaded yet)."""
    if model.tiny is not None:
        return str(model.tiny)
    on_disk = _model_type_on_disk(str(model.path))
    declared = model.get("family")
    if on_disk is not None and declared is not None and on_disk != declared:
        raise ConfigError(
            f"model {model.path!r} (model={model.name}) is a {on_disk!r} checkpoint but its config declares "
            f"family={declared}; fix model.family"
        )
    return on_disk or declared


def _model_type_on_disk(path: str) -> str | None:
    import json

    found = os.path.join(path, "config.json") if os.path.isdir(path) else None
    if found is None and is_hub_id(path):
        found = cached_hub_snapshot(path)
    if found is None or not os.path.isfile(found):
        return None
    try:
        with open(found, encoding="utf-8") as f:
            return json.load(f).get("model_type")
    except (OSError, ValueError):
        return None


def check_family(cfg: DictConfig, model_type: str | None = None) -> None:
    """The pruner (and every cell's pruner) applies to the model's family, and the protocol options
    and image sizing are the family's. `model_type` None: read it from disk (`model_family`)."""
    from mmtok.models.registry import FAMILIES, TRAITS, pixel_bounds_families

    model_type = model_type or model_family(cfg.model)
    if model_type is None:
        return  # not on disk yet (model.download=true): the runner checks after reading its config
    if model_type not in FAMILIES:
        raise ConfigError(
            f"model {cfg.model.path!r} (model={cfg.model.name}) is a {model_type!r} checkpoint; "
            f"supported model types: {_choices(FAMILIES)}"
        )
    try:
        check_family_options(model_type, cfg.prompt_format, cfg.image_preprocess)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not FAMILIES[model_type].pixel_bounds and (cfg.model.min_pixels is not None or cfg.model.max_pixels is not None):
        raise ConfigError(
            f"model.min_pixels / model.max_pixels size {pixel_bounds_families()} images; "
            f"model={cfg.model.name} is {model_type}: "
            f"set them to null"
        )
    # A job with cells runs the cells' pruners, not its own `pruner`.
    runs = [(parse_cell(c)[0], f" (cell {c})") for c in cfg.cells] or [(str(cfg.pruner.name), "")]
    # Every pruner's `requires` names traits of TRAITS, so a family that has them all runs every
    # pruner: skip importing the pruners (and torch) for it, keeping the preflight fast.
    if set(TRAITS) <= FAMILIES[model_type].traits:
        return
    from mmtok.pruners import check_applies

    for name, where in runs:
        try:
            check_applies(name, model_type)
        except ValueError as exc:
            raise ConfigError(f"{exc}{where}") from None


def is_hub_id(path: str) -> bool:
    return bool(_HUB_ID_RE.match(path)) and not os.path.exists(path)


def hub_offline() -> bool:
    return any(
        os.environ.get(v, "").strip().upper() in ("1", "ON", "YES", "TRUE")
        for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE")
    )


def cached_hub_snapshot(repo_id: str) -> str | None:
    """The local HF-cache file of `repo_id`'s config.json, or None (never touches the network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # malformed id or unreadable cache: treat as not cached
        return None
    return found if isinstance(found, str) else None


def check_model_source(model: DictConfig) -> None:
    """A tiny model is built on first use; a local folder must exist; a hub id must be cached
    (unless model.download=true and the hub is reachable)."""
    if OmegaConf.is_missing(model, "path"):
        raise ConfigError(f"model={model.name} needs model.path=<a local checkpoint folder or a hub id>")
    path = str(model.path)
    if model.tiny is not None:
        return
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ConfigError(
                f"model path {path!r} (model={model.name}) has no config.json; "
                f"point model.path at a HF checkpoint folder"
            )
        return
    if not is_hub_id(path):
        raise ConfigError(
            f"model path {path!r} (model={model.name}) does not exist; pass model.path=<a local checkpoint folder> "
            f"or a hub id such as llava-hf/llava-1.5-7b-hf"
        )
    if cached_hub_snapshot(path) is not None:
        return
    how = f"pre-download it with `hf download {path}` (or `huggingface-cli download {path}`)"
    if hub_offline():
        raise ConfigError(
            f"model {path!r} is not in the local HF cache and HF_HUB_OFFLINE=1 forbids downloading; "
            f"{how} on a machine with network (same HF_HOME), or pass model.path=<local folder>"
        )
    if not model.download:
        hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise ConfigError(
            f"model {path!r} is not in the local HF cache (HF_HOME={hf_home}); "
            f"{how}, pass model.download=true to let this run fetch it, or pass model.path=<local folder>"
        )


# -- composing and the pre-hydra check ------------------------------------------------------------
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
        raise ConfigError(f"unknown config key {key!r}; valid keys there: {_choices(valid)}{hint}") from None


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
                raise ConfigError(f"unknown {group} {v!r}; valid: {_choices(valid)}")


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
    import itertools
    import math

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


# -- one-line errors from Hydra / OmegaConf --------------------------------------------------------
def one_line(exc: BaseException) -> str:
    """A Hydra / OmegaConf error as one line."""
    from omegaconf.errors import OmegaConfBaseException

    key = unknown_key(exc)
    if key is not None:
        return f"unknown config key {key!r}; valid keys there: {_choices(schema_keys(key))}"
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
    from dataclasses import fields, is_dataclass

    node: Any = RunConfig
    for part in str(dotted).split(".")[:-1]:
        sub = {f.name: f.type for f in fields(node)}.get(part) if is_dataclass(node) else None
        sub = globals().get(sub, sub) if isinstance(sub, str) else sub
        if not is_dataclass(sub):
            return (
                []
                if not is_dataclass(node) or part in {f.name for f in fields(node)}
                else [f.name for f in fields(node)]
            )
        node = sub
    return [f.name for f in fields(node)]
