"""A run's identity: what determines its results, hashed into the `config_hash` that resume and the
tables look runs up by, and the run id that names its folder.

The identity is the resolved config without the operational keys, with the pruner's full parameter
set (dataclass defaults included). It is versioned, not patched: `IDENTITY_VERSION` 1 is the form
every existing run was hashed with. Keys added to the config since then are listed in `ADDED_KEYS`
with the value that behaves as before they existed; at that value they stay out of the hash, so
older runs still resume, and any other value is hashed. Keys that only feed another key (its default)
are in `DERIVED_KEYS` and never hashed: what acts is hashed where it acts. A change that must re-hash
everything bumps `IDENTITY_VERSION`, which then enters the hashed identity itself.

A text-only run (budget 0) is identified in its canonical form, `pruner=none budget=0`, whatever
pre-LLM pruner asked for it (`mmtok.run.pruner.canonical`, applied by the runner and the sweep
planner before this), so all `<pruner>@0` cells are one run.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import datetime
from typing import Any

from omegaconf import DictConfig

from mmtok.run.schema import OPERATIONAL_KEYS

IDENTITY_VERSION = 1

# (path in the resolved config, the value that behaves as before the key existed)
ADDED_KEYS: tuple[tuple[tuple[str, ...], Any], ...] = (
    (("pruner", "params", "retain_ratio"), None),  # ratio budgets: unset = the token budget decides
    (("multi_image",), "error"),  # single-image documents only, as before the option
    (("model", "min_pixels"), None),  # image sizing of families that size by pixels: the checkpoint's
    (("model", "max_pixels"), None),
    (("pruner", "image_scale"), 1.0),  # the resize baseline: 1.0 = the image as given
    # MMTok's variants (docs/mmtok.md, "Variants"): at these values, the main text's MMTok
    (("pruner", "params", "terms"), "both"),
    (("pruner", "params", "similarity"), "softmax"),
    (("pruner", "params", "adaptive_tau_v"), False),
    (("pruner", "params", "word_pooling"), "none"),
    (("pruner", "params", "pooling_stage"), "pre"),
    (("pruner", "params", "exclude_padding"), False),
    # an in-LLM stage after the pre-LLM selection (`pruner.then`, `mmtok.pruners.Composed`): the
    # composed pruner's params() carry it under "then"; a single pruner's have no such key
    (("pruner", "params", "then"), None),
)
# Keys that only supply another key's default (or are read off the checkpoint): never an identity.
DERIVED_KEYS: tuple[tuple[str, ...], ...] = (
    ("benchmark", "multi_image"),  # the default of the top-level multi_image
    ("benchmark", "task_max_new_tokens"),  # feeds max_new_tokens
    ("benchmark", "questions"),  # the split's size, read by `make status` only
    ("model", "family"),  # read off config.json when on disk
)


def identity(resolved: dict, pruner) -> dict:
    """What determines a run's results (see the module docstring)."""
    ident = {k: v for k, v in resolved.items() if k not in OPERATIONAL_KEYS}
    ident["pruner"] = {"name": resolved["pruner"]["name"], "params": pruner.params()}
    ident["pruner"]["image_scale"] = resolved["pruner"].get("image_scale", 1.0)
    ident["benchmark"] = dict(resolved["benchmark"])
    ident["model"] = dict(resolved["model"])
    if resolved["model"].get("tiny"):  # built from code: where the cache lives is not an identity
        ident["model"].pop("path", None)
    for path in DERIVED_KEYS:
        _drop(ident, path)
    for path, before in ADDED_KEYS:
        if _get(ident, path, before) == before:
            _drop(ident, path)
    if IDENTITY_VERSION > 1:
        ident["identity_version"] = IDENTITY_VERSION
    return ident


def _get(tree: dict, path: tuple[str, ...], default: Any) -> Any:
    for key in path:
        if not isinstance(tree, dict) or key not in tree:
            return default
        tree = tree[key]
    return tree


def _drop(tree: dict, path: tuple[str, ...]) -> None:
    for key in path[:-1]:
        tree = tree.get(key, {})
    if isinstance(tree, dict):
        tree.pop(path[-1], None)


def config_hash(ident: dict) -> str:
    blob = json.dumps(ident, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def budget_label(cfg: DictConfig) -> str:
    """The budget part of a run id: the token budget, `r<ratio>` for a retain ratio, `all` for neither."""
    if cfg.budget is not None:
        return str(cfg.budget)
    ratio = cfg.pruner.get("retain_ratio")
    ratio = (cfg.pruner.params or {}).get("retain_ratio") if ratio is None else ratio
    return "all" if ratio is None else f"r{float(ratio):g}"


def pruner_label(cfg: DictConfig) -> str:
    """The pruner part of a run id: its name, `<name>+<stage><stage budget>` with an in-LLM stage."""
    then = cfg.pruner.get("then")
    if then is None:
        return str(cfg.pruner.name)
    stage_budget = "all" if then.get("budget") is None else then.budget
    return f"{cfg.pruner.name}+{then.name}{stage_budget}"


def new_run_id(cfg: DictConfig, key: str) -> str:
    budget = budget_label(cfg)
    scale = cfg.pruner.get("image_scale", 1.0)
    budget += "" if scale == 1.0 else f"-s{float(scale):g}"  # the resize baseline: the image's scale
    stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
    label = pruner_label(cfg)
    return f"{stamp}_{cfg.model.name}_{label}-{budget}_{cfg.benchmark.name}_{key[:8]}{secrets.token_hex(2)}"
