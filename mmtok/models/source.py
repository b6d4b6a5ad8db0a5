"""Where a checkpoint comes from, probed without loading anything: a local folder, a cached hub
snapshot, or neither (a one-line `ModelSourceError` saying what to do). Torch-free."""

from __future__ import annotations

import json
import os
import re

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


class ModelSourceError(ValueError):
    """The checkpoint cannot be found locally (one-line message saying what to do)."""


def model_type_on_disk(path: str) -> str | None:
    """`model_type` from the config.json of the folder `path` or of the cached hub snapshot; None
    when neither is on disk (or readable)."""
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


def check_model_source(name: str, path: str, *, download: bool = False) -> None:
    """A local folder must hold a config.json; a hub id must be cached (unless `download` and the
    hub is reachable). `name` is the config's label, for the message."""
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            raise ModelSourceError(
                f"model path {path!r} (model={name}) has no config.json; point model.path at a HF checkpoint folder"
            )
        return
    if not is_hub_id(path):
        raise ModelSourceError(
            f"model path {path!r} (model={name}) does not exist; pass model.path=<a local checkpoint folder> "
            f"or a hub id (owner/name)"
        )
    if cached_hub_snapshot(path) is not None:
        return
    how = f"pre-download it with `hf download {path}` (or `huggingface-cli download {path}`)"
    if hub_offline():
        raise ModelSourceError(
            f"model {path!r} is not in the local HF cache and HF_HUB_OFFLINE=1 forbids downloading; "
            f"{how} on a machine with network (same HF_HOME), or pass model.path=<local folder>"
        )
    if not download:
        hf_home = os.environ.get("HF_HOME", "~/.cache/huggingface")
        raise ModelSourceError(
            f"model {path!r} is not in the local HF cache (HF_HOME={hf_home}); "
            f"{how}, pass model.download=true to let this run fetch it, or pass model.path=<local folder>"
        )
