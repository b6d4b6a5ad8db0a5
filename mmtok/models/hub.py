"""Whether a path names a hub repository, and where its files are in the local HF cache (never the network)."""

from __future__ import annotations

import os
import re

_HUB_ID_RE = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")


def is_hub_id(path: str) -> bool:
    return bool(_HUB_ID_RE.match(path)) and not os.path.exists(path)


def cached_hub_snapshot(repo_id: str) -> str | None:
    """The local HF-cache file of `repo_id`'s config.json, or None (never touches the network)."""
    from huggingface_hub import try_to_load_from_cache

    try:
        found = try_to_load_from_cache(repo_id, "config.json")
    except Exception:  # malformed id or unreadable cache: treat as not cached
        return None
    return found if isinstance(found, str) else None
