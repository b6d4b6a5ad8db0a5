"""The wandb mirror of a run (online, or offline into the run folder)."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def log_wandb(
    run_dir: Path,
    *,
    mode: str,
    project: str,
    entity: str | None,
    tags: list[str],
    name: str,
    config: dict,
    metrics: dict[str, float],
    summary: dict[str, Any],
) -> Path | None:
    """Log one run (metrics as step 0, metrics + row aggregates in the summary); returns the wandb
    run folder (offline: `run_dir/wandb/offline-run-*`), or None when disabled."""
    if mode == "disabled":
        return None
    import wandb

    run = wandb.init(
        mode=mode,
        project=project,
        entity=entity,
        tags=list(tags) or None,
        name=name,
        dir=str(run_dir),
        config=config,
        settings=wandb.Settings(console="off", silent=True),
    )
    try:
        numeric = {k: v for k, v in metrics.items() if isinstance(v, (int, float)) and not isinstance(v, bool)}
        run.log(numeric)
        run.summary.update({k: v for k, v in summary.items() if v is not None})
        folder = Path(run.dir).parent if run.dir else None
    finally:
        run.finish()
    if mode == "offline" and folder is not None:
        _wait_for_offline_file(folder)
    return folder


def _offline_record_kinds(run_folder: Path) -> set[str]:
    from wandb.proto import wandb_internal_pb2 as pb
    from wandb.sdk.internal import datastore

    kinds: set[str] = set()
    for path in sorted(Path(run_folder).glob("run-*.wandb")):
        ds = datastore.DataStore()
        try:
            ds.open_for_scan(str(path))
            while (data := ds.scan_data()) is not None:
                rec = pb.Record()
                rec.ParseFromString(data)
                kinds.add(rec.WhichOneof("record_type"))
        except Exception:  # a file still being written: read again later
            continue
    return kinds


def _wait_for_offline_file(run_folder: Path, patience_s: float = 60.0) -> None:
    """wandb's writer (wandb-core) may still be writing the run file when `finish()` returns; wait
    until it holds the run's exit record, so the folder is complete (syncable, readable) on return."""
    import time
    import warnings

    deadline = time.monotonic() + patience_s
    while "exit" not in _offline_record_kinds(run_folder):
        if time.monotonic() > deadline:
            warnings.warn(
                f"wandb offline run file in {run_folder} is still incomplete after {patience_s:.0f} s", stacklevel=2
            )
            return
        time.sleep(0.05)
