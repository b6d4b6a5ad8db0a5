"""The run configuration's schema: the structured dataclasses Hydra type-checks every key against.

`configs/config.yaml` starts its defaults list with `run_schema` (`RunConfig`), so every key the
YAMLs or the command line set is type-checked and a misspelt key is an error. Nothing here imports
torch: the checks that use it run before any model loads.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from omegaconf import MISSING, OmegaConf

ROOT = Path(__file__).resolve().parent.parent.parent
CONFIG_DIR = ROOT / "configs"

# Config groups a user picks with `group=option`; their options are the YAML files in configs/<group>/.
GROUPS = ("model", "pruner", "benchmark", "experiment")

WANDB_MODES = ("online", "offline", "disabled")
DTYPES = ("float16", "bfloat16", "float32", "auto")
ATTN_IMPLEMENTATIONS = ("sdpa", "eager", "flash_attention_2")

# Keys that do not change what a run measures (left out of the resume hash).
OPERATIONAL_KEYS = ("force", "progress", "results_dir", "cache_dir", "wandb", "cells")


class ConfigError(ValueError):
    """Bad user input; its message is one line naming the valid choices."""


@dataclass
class ModelConfig:
    name: str = MISSING  # the label in result rows (the model config's name)
    path: str = MISSING  # a hub id (owner/name) or a local checkpoint folder
    tiny: str | None = (
        None  # a family's model_type (mmtok.models.registry): build its tiny random checkpoint at `path` on first use
    )
    dtype: str = "float16"
    attn_implementation: str = "sdpa"
    device: str = "cuda"  # the default for the top-level `device`
    threads: int | None = None  # the default for the top-level `threads`
    download: bool = False  # allow from_pretrained to download a hub id that is not in the HF cache
    # the checkpoint's model_type, declared by hub-model configs so that a machine without the
    # weights (a report, a sweep's preflight) knows the family; checked against config.json when on disk
    family: str | None = None
    # Image sizing of families that size images by pixel count (FamilySpec.pixel_bounds): images are
    # resized to a pixel count in [min_pixels, max_pixels] (null keeps the checkpoint's). Other
    # families take neither. Left out of the run identity when null.
    min_pixels: int | None = None
    max_pixels: int | None = None


@dataclass
class PrunerConfig:
    name: str = MISSING  # a key of mmtok.pruners.PRUNERS
    params: dict[str, Any] = field(default_factory=dict)  # the pruner dataclass's fields (not budget)
    # A ratio budget (the MMTok release's rule where the token count follows the image): every crop
    # keeps int(ratio x its tokens), instead of `budget` (set budget=null). The same as
    # pruner.params.retain_ratio; the pruner checks it.
    retain_ratio: float | None = None
    # Composition: an in-LLM stage after this (pre-LLM) selection, in the same run: {name, budget,
    # params} or null. Untyped because OmegaConf cannot set keys inside a null structured node
    # (`+pruner.then.name=fastv` must work); `mmtok.run.validate.check_then` checks its keys.
    then: Any = None
    # The resize baseline (the paper's Table 7): every image is downscaled by this factor on both
    # sides (LANCZOS) before the processor, then runs unpruned or through the pruner. 1.0 = as given.
    image_scale: float = 1.0


@dataclass
class BenchmarkConfig:
    name: str = MISSING  # the label in result rows (pope, gqa, ...)
    tasks: list[str] = field(default_factory=list)  # lmms-eval task names (empty for a testbed)
    summary: str | None = None  # pope | gqa | mme | mmstar | ocrbench: the paper's aggregate metrics
    score: str | None = None  # the headline metric key (the paper's number), copied to `score`
    testbed: str | None = None  # pope | gqa | mme | mmstar | ocrbench: build a small local dataset of this format
    testbed_n: int = 24  # testbed size (per POPE split)
    include_path: str | None = None  # a folder of extra lmms-eval task YAMLs
    multi_image: str = "error"  # the default for the top-level `multi_image` (seed: middle, mmmu: first)
    # The generation cap of the task's own lmms-eval 0.7.3 YAML (1024, lmms-eval's HF wrapper default, where the
    # YAML sets none): the paper protocol's `max_new_tokens` (experiment files interpolate it).
    task_max_new_tokens: int = 1024
    # The questions of the task's whole evaluation split (its hub dataset card), so `make status` can
    # count the generations a table needs offline; null where not declared. Never part of a run's identity.
    questions: int | None = None


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
    budget: int | None = None  # vision tokens kept before the LLM; null keeps all; 0 = text only
    limit: int | None = None  # samples per lmms-eval task; null = the whole benchmark
    device: str = "cpu"
    threads: int | None = None  # torch CPU threads (torch.set_num_threads); null = torch's default
    seed: int = 0
    batch_size: int = 1
    max_new_tokens: int = 16
    prompt_format: str = "hf"  # hf (the checkpoint's chat template) | vicuna_v1 (the original conversation template)
    image_preprocess: str = "crop"  # crop (HF centre crop) | pad (the original pad-to-square)
    multi_image: str = "error"  # documents with several images: error | first | middle (one image reaches the LLM)
    # Cells one job runs in turn on one loaded model: "none" (keep all), "<pruner>@<budget>" or
    # "<pruner>@r<ratio>" (mmtok.run.cells); empty
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
