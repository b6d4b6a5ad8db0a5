"""Value checks on a composed run config: ranges, choices, the model's source and family. One-line
`ConfigError`s, torch-free and fast: they run for every cell of a sweep before anything loads."""

from __future__ import annotations

import re

from omegaconf import DictConfig, OmegaConf

from mmtok.eval.protocol import (
    IMAGE_PREPROCESS,
    MULTI_IMAGE,
    PROMPT_FORMATS,
    SUMMARIES,
    check_family_options,
    mme_limit_problem,
)
from mmtok.models.registry import FAMILIES, TRAITS, family_names, pixel_bounds_families
from mmtok.models.source import ModelSourceError, check_model_source, model_type_on_disk
from mmtok.run.cells import parse_cell
from mmtok.run.compose import choices, group_options
from mmtok.run.schema import ATTN_IMPLEMENTATIONS, CONFIG_DIR, DTYPES, WANDB_MODES, ConfigError

TINY_FAMILIES = family_names()  # = their model_type
TESTBEDS = ("pope", "gqa", "mme", "mmstar", "ocrbench", "scenes_pope", "scenes_gqa")
_DEVICE_RE = re.compile(r"^(cpu|cuda(:\d+)?|mps)$")


def validate(cfg: DictConfig, *, check_model: bool = True) -> None:
    """Raise ConfigError (one line) for any bad value; torch-free and fast."""

    def positive(key: str, value, what: str, allow_none: bool) -> None:
        if value is None and allow_none:
            return
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"{key} must be {what}; got {value!r}")

    budget = cfg.budget
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
        raise ConfigError(
            f"budget must be an integer >= 0 (vision tokens kept; 0 = text only) or null to keep all; got {budget!r}"
        )
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
            raise ConfigError(f"unknown {key} {value!r}; valid: {choices(valid)}")
    if cfg.model.get("family") is not None and cfg.model.family not in TINY_FAMILIES:
        raise ConfigError(f"unknown model.family {cfg.model.family!r}; valid: {choices(TINY_FAMILIES)} or null")
    if cfg.model.tiny is not None and cfg.model.tiny not in TINY_FAMILIES:
        raise ConfigError(f"unknown model.tiny {cfg.model.tiny!r}; valid: {choices(TINY_FAMILIES)} or null")
    if not _DEVICE_RE.match(str(cfg.device)):
        raise ConfigError(f"unknown device {cfg.device!r}; valid: cpu, cuda, cuda:N, mps")
    bench = cfg.benchmark
    if bench.summary is not None and bench.summary not in SUMMARIES:
        raise ConfigError(f"unknown benchmark.summary {bench.summary!r}; valid: {choices(SUMMARIES)} or null")
    if bench.testbed is not None and bench.testbed not in TESTBEDS:
        raise ConfigError(f"unknown benchmark.testbed {bench.testbed!r}; valid: {choices(TESTBEDS)} or null")
    if bench.summary == "mme" and mme_limit_problem(cfg.limit):
        raise ConfigError(mme_limit_problem(cfg.limit))
    if bench.testbed is None and not bench.tasks:
        raise ConfigError(f"benchmark {bench.name!r} names no lmms-eval tasks (benchmark.tasks) and no testbed")
    positive("benchmark.task_max_new_tokens", cfg.benchmark.task_max_new_tokens, "an integer >= 1", False)
    for cell in cfg.cells:
        parse_cell(cell)
    if not str(cfg.pruner.name).strip():
        raise ConfigError(f"pruner.name is empty; valid: {choices(group_options('pruner'))}")
    check_then(cfg)
    scale = cfg.pruner.get("image_scale", 1.0)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or not 0.0 < scale <= 1.0:
        raise ConfigError(
            f"pruner.image_scale must be a number in (0, 1] (the image's sides are scaled by it before the "
            f"processor; 1 = as given); got {scale!r}"
        )
    positive("model.min_pixels", cfg.model.min_pixels, "an integer >= 1 (pixels) or null for the checkpoint's", True)
    positive("model.max_pixels", cfg.model.max_pixels, "an integer >= 1 (pixels) or null for the checkpoint's", True)
    if cfg.model.min_pixels is not None and cfg.model.max_pixels is not None:
        if cfg.model.min_pixels > cfg.model.max_pixels:
            raise ConfigError(
                f"model.min_pixels ({cfg.model.min_pixels}) exceeds model.max_pixels ({cfg.model.max_pixels})"
            )
    if check_model:
        check_source(cfg.model)
        check_family(cfg)


THEN_KEYS = ("name", "budget", "params")


def check_then(cfg: DictConfig) -> None:
    """`pruner.then` (an in-LLM stage after the pre-LLM selection) is null or {name, budget, params}
    with a positive (or null) budget below the run's token budget. Whether the names are a pre-LLM and
    an in-LLM method is checked when the pruner is built (`mmtok.pruners.Composed`), before loading."""
    then = cfg.pruner.get("then")
    if then is None:
        return
    if not isinstance(then, DictConfig):
        raise ConfigError(f"pruner.then must be {{name, budget, params}} or null; got {then!r}")
    unknown = sorted(set(then.keys()) - set(THEN_KEYS))
    if unknown:
        raise ConfigError(f"unknown key(s) {', '.join(unknown)} in pruner.then; valid: {choices(THEN_KEYS)}")
    if not str(then.get("name") or "").strip():
        raise ConfigError("pruner.then needs a name: the in-LLM pruner after the selection (+pruner.then.name=fastv)")
    budget = then.get("budget")
    if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 1):
        raise ConfigError(f"pruner.then.budget must be a positive integer or null to keep all; got {budget!r}")
    if then.get("params") is not None and not isinstance(then.params, DictConfig):
        raise ConfigError(f"pruner.then.params must be a mapping of the stage's fields; got {then.params!r}")
    if budget is not None and cfg.budget is not None and budget >= cfg.budget:
        raise ConfigError(
            f"pruner.then.budget ({budget}) must be below the pre-LLM budget ({cfg.budget}): "
            f"the stage would keep every token the LLM receives"
        )


def check_source(model: DictConfig) -> None:
    """A tiny model is built on first use; any other must be found locally (`mmtok.models.source`)."""
    if OmegaConf.is_missing(model, "path"):
        raise ConfigError(f"model={model.name} needs model.path=<a local checkpoint folder or a hub id>")
    if model.tiny is not None:
        return
    try:
        check_model_source(str(model.name), str(model.path), download=bool(model.download))
    except ModelSourceError as exc:
        raise ConfigError(str(exc)) from None


def model_family(model: DictConfig) -> str | None:
    """The checkpoint's `model_type` without loading anything: `model.tiny`, else the config.json of
    the local folder or of the cached hub snapshot, else the config's declared `model.family`; None
    when none of them says (a local config of a checkpoint not downloaded yet)."""
    if model.tiny is not None:
        return str(model.tiny)
    on_disk = model_type_on_disk(str(model.path))
    declared = model.get("family")
    if on_disk is not None and declared is not None and on_disk != declared:
        raise ConfigError(
            f"model {model.path!r} (model={model.name}) is a {on_disk!r} checkpoint but its config declares "
            f"family={declared}; fix model.family"
        )
    return on_disk or declared


def check_family(cfg: DictConfig, model_type: str | None = None) -> None:
    """The pruner (and every cell's pruner) applies to the model's family, and the protocol options
    and image sizing are the family's. `model_type` None: read it from disk (`model_family`)."""
    model_type = model_type or model_family(cfg.model)
    if model_type is None:
        return  # not on disk yet (model.download=true): the runner checks after reading its config
    if model_type not in FAMILIES:
        raise ConfigError(
            f"model {cfg.model.path!r} (model={cfg.model.name}) is a {model_type!r} checkpoint; "
            f"supported model types: {choices(FAMILIES)}"
        )
    try:
        check_family_options(model_type, cfg.prompt_format, cfg.image_preprocess)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None
    if not FAMILIES[model_type].pixel_bounds and (cfg.model.min_pixels is not None or cfg.model.max_pixels is not None):
        raise ConfigError(
            f"model.min_pixels / model.max_pixels size {pixel_bounds_families()} images; "
            f"model={cfg.model.name} is {model_type}: set them to null"
        )
    # A job with cells runs the cells' pruners (a cell names a file: its method, and its stage if it
    # has one), not its own `pruner` (nor its stage, `pruner.then`).
    runs = [(name, f" (cell {c})") for c in cfg.cells for name in _file_methods(parse_cell(c)[0])]
    if not cfg.cells:
        runs.append((str(cfg.pruner.name), ""))
        if cfg.pruner.get("then") is not None:
            runs.append((str(cfg.pruner.then.name), " (pruner.then)"))
    # Every pruner's `requires` names traits of TRAITS, so a family that has them all runs every
    # pruner: skip importing the pruners (and torch) for it, keeping the preflight fast.
    if set(TRAITS) <= FAMILIES[model_type].traits:
        return
    from mmtok.pruners import check_applies  # defers torch

    for name, where in runs:
        try:
            check_applies(name, model_type)
        except ValueError as exc:
            raise ConfigError(f"{exc}{where}") from None


def _file_methods(file: str) -> list[str]:
    """The registered methods a `configs/pruner/<file>.yaml` runs: its `name`, and its stage's
    (`then.name`) for a composition (a variant file's stem is not a method name)."""
    node = OmegaConf.load(CONFIG_DIR / "pruner" / f"{file}.yaml")
    node = node.pruner if "pruner" in node else node  # a _global_ file (none.yaml)
    then = node.get("then")
    return [str(node.name)] + ([] if then is None else [str(then.name)])
