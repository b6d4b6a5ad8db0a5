"""runs.csv: the index of the run folders, appended under a file lock, rebuilt from the folders.

Rows are appended by rewriting the file to a temporary name and renaming it over the old one, so
concurrent runs (several processes, SLURM array jobs on a shared filesystem) each add one intact
row and a reader never sees half a row. The run folders are the source of truth: `rebuild_index`
(`make index`) rewrites the index from their row.json files, and a column added later widens the
index instead of orphaning it.
"""

from __future__ import annotations

import csv
import io
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from mmtok.store.folders import folder_row_list
from mmtok.store.row import COLUMNS, RunRow


class ResultsError(RuntimeError):
    """runs.csv cannot be used as it is (one-line message)."""


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, float):
        return "" if math.isnan(value) else repr(value)
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, sort_keys=True, default=str)
    return str(value).replace("\r", " ").replace("\n", " ")


def _csv_line(values: Iterable[Any]) -> str:
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow(list(values))
    return buf.getvalue()


def _header_line() -> str:
    return _csv_line(COLUMNS)


def index_columns(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """This version's COLUMNS, then any other column an older/newer index or row carried (sorted)."""
    return (*COLUMNS, *sorted(set(extra) - set(COLUMNS)))


def _write_index(csv_path: Path, header: tuple[str, ...], rows: Iterable[dict]) -> None:
    tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
    with open(tmp, "w", encoding="utf-8", newline="") as f:
        f.write(_csv_line(header))
        for row in rows:
            f.write(_csv_line(_cell(row.get(c)) for c in header))
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, csv_path)


def append_row(csv_path: str | Path, row: RunRow | dict[str, Any]) -> int:
    """Append `row` (keys ⊆ COLUMNS) to runs.csv under its lock; returns its 1-based data-row number.

    runs.csv is an index of the run folders (each holds its own row.json), not the source of truth:
    a file written by a version with other columns is rewritten under the union of both headers
    (old rows keep their values, new columns stay empty for them), never refused or dropped."""
    from filelock import FileLock

    row = row.as_dict() if isinstance(row, RunRow) else dict(row)
    unknown = set(row) - set(COLUMNS)
    if unknown:
        raise ResultsError(f"row has columns that runs.csv does not document: {', '.join(sorted(unknown))}")
    csv_path = Path(csv_path)
    csv_path.parent.mkdir(parents=True, exist_ok=True)
    with FileLock(str(csv_path) + ".lock", timeout=600):
        existing = csv_path.read_text(encoding="utf-8") if csv_path.exists() else ""
        header_line = existing.split("\n", 1)[0] if existing else ""
        if existing and header_line.strip() == _header_line().strip():
            if not existing.endswith("\n"):
                existing += "\n"
            n_rows = sum(1 for _ in csv.DictReader(io.StringIO(existing))) + 1
            tmp = csv_path.with_name(f".{csv_path.name}.{os.getpid()}.tmp")
            with open(tmp, "w", encoding="utf-8", newline="") as f:
                f.write(existing + _csv_line(_cell(row.get(c)) for c in COLUMNS))
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, csv_path)
            return n_rows
        old = list(csv.DictReader(io.StringIO(existing))) if existing else []
        old_header = next(csv.reader(io.StringIO(header_line)), []) if existing else []
        if existing and not {"run_id", "config_hash", "status"} <= set(old_header):
            raise ResultsError(
                f"{csv_path} is not a runs index (no run_id/config_hash/status columns); "
                f"move it aside or pass results_dir=<another folder>"
            )
        _write_index(csv_path, index_columns(old_header), [*old, row])
        return len(old) + 1


def rebuild_index(results_dir: str | Path) -> tuple[Path, int]:
    """Rewrite `<results_dir>/runs.csv` from the run folders' row.json files (`make index`).

    Rows of the old index whose folder is gone are kept (nothing is lost); the header is the union
    of this version's columns and every column any row carries. Returns (path, number of rows)."""
    from filelock import FileLock

    results_dir = Path(results_dir)
    csv_path = results_dir / "runs.csv"
    results_dir.mkdir(parents=True, exist_ok=True)
    with FileLock(str(csv_path) + ".lock", timeout=600):
        folder_rows = folder_row_list(results_dir)
        seen = {r.get("run_id") for r in folder_rows}
        kept = [r for r in read_rows(csv_path) if r.get("run_id") not in seen]
        rows = sorted([*kept, *folder_rows], key=lambda r: (str(r.get("time") or ""), str(r.get("run_id") or "")))
        extra = {k for r in rows for k in r}
        _write_index(csv_path, index_columns(extra), rows)
    return csv_path, len(rows)


def read_rows(csv_path: str | Path) -> list[dict[str, str]]:
    csv_path = Path(csv_path)
    if not csv_path.exists():
        return []
    with open(csv_path, encoding="utf-8", newline="") as f:
        return list(csv.DictReader(f))


def all_rows(results_dir: str | Path) -> list[dict[str, Any]]:
    """The run folders' rows plus index rows that have no folder (older or copied-in results)."""
    results_dir = Path(results_dir)
    rows = folder_row_list(results_dir)
    seen = {r.get("run_id") for r in rows}
    return [*(r for r in read_rows(results_dir / "runs.csv") if r.get("run_id") not in seen), *rows]


def find_completed(csv_path: str | Path, key: str) -> tuple[int, dict[str, Any]] | None:
    """(1-based row number in runs.csv, or 0 when the index lacks it; row) of the latest completed
    run whose config_hash is `key`, from the run folders next to `csv_path` and the index itself
    (so a rebuilt, reordered or stale index never makes a finished run look missing)."""
    csv_path = Path(csv_path)
    positions = {r.get("run_id"): i for i, r in enumerate(read_rows(csv_path), start=1)}
    found, best = None, None
    for row in all_rows(csv_path.parent):
        if row.get("config_hash") != key or row.get("status") != "completed":
            continue
        pos = positions.get(row.get("run_id"), 0)
        order = (0, pos, "") if pos else (1, 0, str(row.get("time") or ""))
        if best is None or order >= best:
            found, best = (pos, row), order
    return found
