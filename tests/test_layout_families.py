"""Nothing outside `mmtok/models/<family>/` names a model family (issue 15, "one folder per family").

Greps every source file of the package outside the family folders for the families' names and
HF model types (case-insensitive: identifiers, strings, comments and docstrings alike) and fails
naming each offending line. The family names come from the registry, so a new family's folder
extends the check by itself.
"""

from __future__ import annotations

import re
from pathlib import Path

from mmtok.models.registry import FAMILIES

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "mmtok"
FAMILY_DIRS = sorted({PACKAGE / "models" / spec.adapter.split(".")[2] for spec in FAMILIES.values()})

# Not yet moved, each for a reason (remove an entry when its file no longer names a family):
EXCEPTIONS = {
    # the paper's tables are of named checkpoints: their model keys (llava15_7b, qwen25vl_7b, ...) and
    # the paper's per-model benchmark sets are data about the paper, not a dispatch on a family
    "mmtok/report/specs.py",
    "mmtok/report/averages.py",
    # the testbed trains and evaluates one fixed LLaVA-1.5-architecture checkpoint: its data and
    # model are that family's by construction
    "mmtok/testbed/",
    # the vLLM plugin subclasses vLLM's own class of each family; it installs beside vLLM without the
    # framework (it may import only mmtok.selection), so it cannot reach the family folders
    "mmtok/serving/",
}


def _words() -> list[str]:
    """The names to look for: every model type, and the stem of every family's name ("llava", "qwen")."""
    words = set(FAMILIES)
    for model_type in FAMILIES:
        words.add(re.split(r"[_\d]", model_type)[0])
    return sorted(words, key=len, reverse=True)


PATTERN = re.compile("|".join(re.escape(w) for w in _words()), re.IGNORECASE)


def _sources() -> list[Path]:
    out = []
    for path in sorted(PACKAGE.rglob("*")):
        if path.suffix not in (".py", ".yaml") or not path.is_file():
            continue
        if any(d in path.parents for d in FAMILY_DIRS):
            continue
        rel = path.relative_to(ROOT).as_posix()
        if any(rel == e or (e.endswith("/") and rel.startswith(e)) for e in EXCEPTIONS):
            continue
        out.append(path)
    return out


def test_the_pattern_covers_every_family():
    assert PATTERN.search("llava_next") and PATTERN.search("LLaVA-1.5") and PATTERN.search("Qwen2.5-VL")
    assert FAMILY_DIRS, "no family folder found"
    assert all(d.is_dir() for d in FAMILY_DIRS)


def test_nothing_outside_the_family_folders_names_a_family():
    hits = []
    for path in _sources():
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
            if PATTERN.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{number}: {line.strip()}")
    assert not hits, "family names outside mmtok/models/<family>/:\n" + "\n".join(hits)


def test_every_exception_still_exists():
    """An exception for a file that is gone (moved, split) must go too."""
    for entry in EXCEPTIONS:
        assert (ROOT / entry).exists(), f"stale exception {entry}"
