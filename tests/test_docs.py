"""The README and docs/ stay true: every relative link resolves, every repository path, module and
`make` target they name exists, every `python run.py` command they show composes, and the README
stays a landing page (at most 200 lines)."""

from __future__ import annotations

import ast
import re
import shlex
from pathlib import Path

import pytest

from mmtok.run.compose import compose

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
CODE_BLOCK = re.compile(r"```[a-z]*\n(.*?)```", re.S)


def _ids(pages):
    return [str(p.relative_to(ROOT)) for p in pages]


def test_readme_is_a_landing_page():
    assert len((ROOT / "README.md").read_text().splitlines()) <= 200


def test_docs_folder_has_the_reference_pages():
    wanted = {
        "configuration", "results", "pruners", "adding-a-pruner", "families", "adding-a-family", "benchmarks",
        "reproducing", "environment", "testbed", "mmtok", "architecture",
    }  # fmt: skip
    assert wanted <= {p.stem for p in PAGES}


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_relative_links_resolve(page):
    broken = []
    for target in re.findall(r"\]\(([^)\s]+)\)", page.read_text()):
        if re.match(r"[a-z]+:", target) or target.startswith("#"):
            continue
        if not (page.parent / target.split("#", 1)[0]).exists():
            broken.append(target)
    assert broken == []


# files the guides tell a reader to create (docs/adding-a-pruner.md; tests/test_adding_a_pruner.py creates them)
TO_CREATE = {
    "mmtok/pruners/norm.py",
    "configs/pruner/norm.yaml",
    "mmtok/pruners/lasttoken.py",
    "configs/pruner/lasttoken.yaml",
}
_PATH = re.compile(r"`((?:mmtok|configs|scripts|tests|results|requirements|docs|\.ci)/[^`\s:]*)")


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_named_paths_exist(page):
    """Paths a run writes (git-ignored: results/runs.csv, .cache/, a local launcher file) are not checked."""
    ignored = [line.strip().rstrip("/") for line in (ROOT / ".gitignore").read_text().splitlines() if line.strip()]
    missing = [
        p
        for p in _PATH.findall(page.read_text())
        if not any(c in p for c in "<>*{}…")
        and p not in TO_CREATE
        and not any(p.rstrip("/").startswith(i) for i in ignored)
        and not (ROOT / p.rstrip("/.,")).exists()
    ]
    assert missing == []


def _defines(path: Path, name: str) -> bool:
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.name == name:
            return True
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            if any(isinstance(t, ast.Name) and t.id == name for t in targets):
                return True
        if isinstance(node, ast.ImportFrom) and any((a.asname or a.name) == name for a in node.names):
            return True
    return False


def _resolves(dotted: str) -> bool:
    """`mmtok.a.b` is a module, or `mmtok.a.b.name` a name defined at the top of module `mmtok.a.b`."""
    parts = dotted.split(".")
    for cut in range(len(parts), 0, -1):
        base = ROOT.joinpath(*parts[:cut])
        module = base.with_suffix(".py") if base.with_suffix(".py").exists() else base / "__init__.py"
        if module.exists():
            rest = parts[cut:]
            return not rest or (len(rest) <= 2 and _defines(module, rest[0]))
    return False


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_named_modules_and_names_exist(page):
    names = set(re.findall(r"`(mmtok(?:\.\w+)+)", page.read_text()))
    assert sorted(n for n in names if not _resolves(n)) == []


def _make_targets() -> set[str]:
    text = (ROOT / "Makefile").read_text()
    targets = {t for line in re.findall(r"^([\w.$() -]+):", text, re.M) for t in line.split()}
    for line in re.findall(r"^TABLES\s*:=\s*(.*)$", text, re.M):
        targets.update(line.split())
    return targets


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_make_targets_exist(page):
    named = set(re.findall(r"`make ([a-z][\w-]*)", page.read_text()))
    named |= {m for b in CODE_BLOCK.findall(page.read_text()) for m in re.findall(r"^make ([a-z][\w-]*)", b, re.M)}
    assert sorted(named - _make_targets()) == []


def _run_commands(page: Path) -> list[list[str]]:
    out = []
    for block in CODE_BLOCK.findall(page.read_text()):
        for line in block.splitlines():
            line = line.split("#", 1)[0].strip()
            if line.startswith("python run.py") and "--help" not in line:
                args = shlex.split(line)[2:]
                # a sweep: its first value stands for the list (preflight checks every value)
                out.append([a.split(",", 1)[0] if "=" in a else a for a in args if not a.startswith("-")])
    return out


@pytest.mark.parametrize("page", PAGES, ids=_ids(PAGES))
def test_documented_run_commands_compose(page):
    for args in _run_commands(page):
        compose(args)  # raises ConfigError (one line) for an unknown group option or key


def test_results_page_lists_every_sample_record_field():
    """samples.jsonl's fields are SampleRecord's; docs/results.md names each one."""
    from dataclasses import fields

    from mmtok.eval.records import SampleRecord

    text = (ROOT / "docs" / "results.md").read_text()
    listed = text.split("`mmtok.eval.records.SampleRecord` per question:", 1)[1].split(")", 1)[0]
    assert re.findall(r"`(\w+)`", listed) == [f.name for f in fields(SampleRecord)]
