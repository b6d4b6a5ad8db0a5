"""The run row: one finished (or failed) run as one typed record; its fields are runs.csv's columns."""

from __future__ import annotations

import json
import math
import types
import typing
from dataclasses import asdict, dataclass, fields
from typing import Any

STAGES = ("vision", "select", "prefill", "decode", "total")
STATS = ("mean", "p50", "p90")

# The paper's metrics plus the per-split / per-part numbers behind them. Every run fills the ones of
# its benchmark; the others stay empty. `metrics_json` keeps every metric the evaluation produced.
METRIC_COLUMNS = (
    "pope_f1_avg",
    "pope_acc_avg",
    "pope_f1_pooled",
    "pope_random_f1",
    "pope_random_acc",
    "pope_popular_f1",
    "pope_popular_acc",
    "pope_adversarial_f1",
    "pope_adversarial_acc",
    "gqa_exact_match",
    "mme_perception",
    "mme_cognition",
    "mme_total",
    "scienceqa_img_exact_match",
    "mmbench_en_dev_gpt_eval_score",
    "textvqa_val_exact_match",
    "seedbench_seed_all",
    "seedbench_seed_image",
    "mmmu_val_mmmu_acc",
    "vqav2_val_exact_match",
)

LATENCY_COLUMNS = tuple(f"{stage}_s_{stat}" for stage in STAGES for stat in STATS)


@dataclass(kw_only=True)
class RunRow:
    """One row of runs.csv (and the run folder's row.json), in column order.

    Built by the runner when a run starts (what ran), completed from the evaluation (what it scored
    and cost); `status` is `completed` or `failed` in every row that is written."""

    # when and what code
    time: str
    run_id: str
    config_hash: str
    status: str = "running"  # running | completed | failed
    error: str | None = None
    git_commit: str
    git_dirty: bool | None
    # what ran
    model: str
    model_path: str
    model_family: str | None = None
    dtype: str
    pruner: str
    pruner_params: dict[str, Any]
    budget: int | None
    image_scale: float | None = None  # the resize baseline's factor (1.0 = the image as given)
    benchmark: str
    tasks: str
    limit: int | None
    seed: int
    batch_size: int
    max_new_tokens: int
    prompt_format: str
    image_preprocess: str
    multi_image: str
    # what it scored
    n_samples: int | None = None
    score_metric: str | None
    score: float | None = None
    pope_f1_avg: float | None = None
    pope_acc_avg: float | None = None
    pope_f1_pooled: float | None = None
    pope_random_f1: float | None = None
    pope_random_acc: float | None = None
    pope_popular_f1: float | None = None
    pope_popular_acc: float | None = None
    pope_adversarial_f1: float | None = None
    pope_adversarial_acc: float | None = None
    gqa_exact_match: float | None = None
    mme_perception: float | None = None
    mme_cognition: float | None = None
    mme_total: float | None = None
    scienceqa_img_exact_match: float | None = None
    mmbench_en_dev_gpt_eval_score: float | None = None
    textvqa_val_exact_match: float | None = None
    seedbench_seed_all: float | None = None
    seedbench_seed_image: float | None = None
    mmmu_val_mmmu_acc: float | None = None
    vqav2_val_exact_match: float | None = None
    metrics_json: dict[str, float] | None = None
    vision_s_mean: float | None = None
    vision_s_p50: float | None = None
    vision_s_p90: float | None = None
    select_s_mean: float | None = None
    select_s_p50: float | None = None
    select_s_p90: float | None = None
    prefill_s_mean: float | None = None
    prefill_s_p50: float | None = None
    prefill_s_p90: float | None = None
    decode_s_mean: float | None = None
    decode_s_p50: float | None = None
    decode_s_p90: float | None = None
    total_s_mean: float | None = None
    total_s_p50: float | None = None
    total_s_p90: float | None = None
    # what it cost
    wall_s: float | None = None
    device: str | None = None
    peak_memory_bytes: int | None = None
    peak_memory_source: str | None = None
    vision_tokens_mean: float | None = None
    vision_tokens_min: int | None = None
    vision_tokens_max: int | None = None
    vision_tokens_full_mean: float | None = None
    equivalent_tokens_mean: float | None = None
    prefill_flops_mean: float | None = None
    new_tokens_mean: float | None = None
    # environment and where the rest is
    torch_version: str
    transformers_version: str
    lmms_eval_version: str
    wandb_mode: str
    run_dir: str

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> RunRow:
        """A row read back from row.json (typed JSON) or runs.csv (strings): each value parsed to its
        field's type. Columns this version does not know are dropped and columns an older row lacks
        are None (an index written by another version)."""
        return cls(**{name: _parse(record.get(name), hint) for name, hint in _field_types().items()})


COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(RunRow))

# Columns that are legitimately empty in a completed row: the other benchmarks' metrics, `error`,
# a `limit` / `budget` of null (whole benchmark / keep all).
OPTIONAL_COLUMNS = frozenset({"error", "limit", "budget", *METRIC_COLUMNS})


def _field_types() -> dict[str, Any]:
    return typing.get_type_hints(RunRow)


def _parse(value: Any, hint: Any) -> Any:
    if not isinstance(value, str):
        return value  # row.json keeps JSON types
    options = typing.get_args(hint) if isinstance(hint, types.UnionType) else (hint,)
    if value == "" and type(None) in options:
        return None
    for option in options:
        kind = typing.get_origin(option) or option
        if kind is bool:
            return value == "true"
        if kind is int:
            return int(value)
        if kind is float:
            number = float(value)
            return None if math.isnan(number) else number
        if kind is dict:
            return json.loads(value)
    return value
