"""The run folder `<results_dir>/runs/<run_id>/`: config.yaml, samples.jsonl, metrics.json, row.json
(and wandb/), each written atomically (a temporary name renamed over the final one)."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any


def folder_row_list(results_dir: str | Path) -> list[dict[str, Any]]:
    """Every run folder's row.json under `<results_dir>/runs/` (the source of truth), oldest first.
    A completed row counts only when its folder also holds metrics.json and samples.jsonl."""
    out = []
    for path in sorted(Path(results_dir).glob("runs/*/row.json")):
        try:
            row = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # a half-copied folder: not a result
        if row.get("status") == "completed" and not all(
            (path.parent / f).exists() for f in ("metrics.json", "samples.jsonl")
        ):
            continue
        out.append(row)
    return sorted(out, key=lambda r: (str(r.get("time") or ""), str(r.get("run_id") or "")))


def write_json(path: Path, obj: Any) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n", encoding="utf-8")
    os.replace(tmp, path)


def write_samples(path: Path, samples: list[dict]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as f:
        for s in samples:
            f.write(json.dumps(s, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)
