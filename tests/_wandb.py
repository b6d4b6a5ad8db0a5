"""Reading a wandb offline run file back (tests check what a run mirrored to wandb)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def wandb_offline_records(run_folder: str | Path) -> dict[str, dict[str, Any]]:
    """What an offline run file holds: {"config": {...}, "history": {...}, "summary": {...}} (last values)."""
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    files = sorted(Path(run_folder).glob("run-*.wandb"))
    if not files:
        raise FileNotFoundError(f"no run-*.wandb file in {run_folder}")
    out: dict[str, dict[str, Any]] = {"config": {}, "history": {}, "summary": {}}
    ds = datastore.DataStore()
    ds.open_for_scan(str(files[0]))
    while True:
        data = ds.scan_data()
        if data is None:
            break
        rec = pb.Record()
        rec.ParseFromString(data)
        kind = rec.WhichOneof("record_type")
        items = {
            "history": lambda: rec.history.item,
            "summary": lambda: rec.summary.update,
            "config": lambda: rec.config.update,
            "run": lambda: rec.run.config.update,
        }.get(kind)
        if items is None:
            continue
        target = out["config" if kind == "run" else kind]
        for item in items():
            key = item.key or "/".join(item.nested_key)
            try:
                target[key] = json.loads(item.value_json)
            except ValueError:
                target[key] = item.value_json
    return out
