"""The datasets we build: small local benchmarks in the real formats of the hub datasets lmms-eval
reads (POPE, GQA, MME: `local`; MMStar: `mmstar`; OCRBench: `ocrbench`), and the synthetic scene
benchmarks the trained testbed model is scored on (scenes_pope, scenes_gqa: `scenes`,
`scene_questions`, `scene_tasks`), each with the lmms-eval task YAML written next to its parquet
files (`tasks`). A leaf: it imports nothing of mmtok outside this package.

    ds = build_dataset(".cache/testbed/pope-n24", "pope", n=24, seed=0)
    evaluate(..., tasks=[ds.task], include_path=str(ds.include_path))
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from mmtok.data import local, mmstar, ocrbench, scene_tasks
from mmtok.data.tasks import benchmark as dataset_format
from mmtok.data.tasks import write_task_yaml


@dataclass(frozen=True)
class LocalDataset:
    benchmark: str  # the format's name: pope | gqa | mme | mmstar | ocrbench | scenes_pope | scenes_gqa
    task: str  # lmms-eval task name
    include_path: Path  # pass to evaluate(include_path=...)
    yaml_path: Path
    files: tuple[Path, ...]
    n: int  # rows of the test split


BUILDERS = {
    "pope": local.build_pope,
    "gqa": local.build_gqa,
    "mme": local.build_mme,
    "mmstar": mmstar.build_mmstar,
    "ocrbench": ocrbench.build_ocrbench,
    "scenes_pope": scene_tasks.build_scenes_pope,
    "scenes_gqa": scene_tasks.build_scenes_gqa,
}


def build_dataset(out_dir: str | Path, name: str, *, n: int = 60, seed: int = 0) -> LocalDataset:
    """Write the `name` dataset (n test rows) and its task YAML into `out_dir`; deterministic in
    (name, n, seed)."""
    bench = dataset_format(name)  # one-line error for an unknown format
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rng = random.Random(f"{name}:{seed}")
    files = BUILDERS[name](out_dir, n, rng)
    yaml_path = write_task_yaml(out_dir, name)
    return LocalDataset(name, bench.task, out_dir.resolve(), yaml_path, tuple(files), n)


__all__ = ["BUILDERS", "LocalDataset", "build_dataset", "dataset_format"]
