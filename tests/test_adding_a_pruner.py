"""docs/adding-a-pruner.md works as printed: its examples meet the pruner contract, copying them into
real method modules leaves the suite green, and a bad in-LLM layer fails before anything loads."""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import subprocess
import sys
import types
from pathlib import Path

import pytest
import torch
import yaml

from mmtok.pruners import build_pruner
from tests._registry import registry_snapshot
from tests._tiny import QUESTIONS, generate, images, inputs
from tests.test_pruner_contract import (  # noqa: F401
    _decoder_rows,
    assert_selecting_every_token_is_identity,
    models,
)

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "adding-a-pruner.md"


def example(marker: str) -> str:
    """The fenced block right after `<!-- example: <marker> -->` in the doc."""
    block = re.search(rf"<!-- example: {re.escape(marker)} -->\s*```\w+\n(.*?)```", DOC.read_text(), re.S)
    assert block, f"docs/adding-a-pruner.md lost its {marker!r} example"
    return block.group(1)


@contextlib.contextmanager
def example_module(marker: str, module_name: str):
    """The doc's example run as a module of its own, in a registry snapshot restored on exit. A copy
    of the example saved as a real method module may hold its name already: it steps aside meanwhile."""
    code = example(marker)
    with registry_snapshot() as registry:
        for name in re.findall(r'name: ClassVar\[str\] = "(\w+)"', code):
            registry.pop(name, None)
        module = types.ModuleType(module_name)
        module.__file__ = str(DOC)
        sys.modules[module_name] = module
        try:
            exec(compile(code, str(DOC), "exec", dont_inherit=True), module.__dict__)
            yield module
        finally:
            del sys.modules[module_name]


@pytest.fixture
def norm_pruner():
    with example_module("custom pruner", "docs_example_norm") as module:
        yield module.NormPruner


@pytest.fixture
def lasttoken_pruner():
    with example_module("custom in-LLM pruner", "docs_example_lasttoken") as module:
        yield module.LastTokenPruner


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_docs_pruner_keeps_all_counts_and_batches(models, norm_pruner, family):  # noqa: F811
    model, processor = models[family]
    crops_max = 1 if family == "llava" else 5
    batch = inputs(processor)
    ref = generate(model, batch)
    with build_pruner("norm", budget=36 * crops_max, next_layout="hf")(model):
        assert torch.equal(generate(model, batch), ref)
    pruner = build_pruner("norm", budget=8 * crops_max)
    with pruner(model):
        together = generate(model, batch)
    crops = [s.crops for s in pruner.last_stats.samples]
    assert [s.vision_tokens for s in pruner.last_stats.samples] == [8 * c for c in crops]
    for i, q in enumerate(QUESTIONS):
        single = inputs(processor, [q], imgs=[images()[i]])
        with pruner(model):
            assert generate(model, single)[0].tolist() == together[i].tolist()
    assert not torch.equal(together, ref)
    assert_selecting_every_token_is_identity("norm", model, processor)


def test_docs_pruner_config_names_the_pruner(norm_pruner):
    config = yaml.safe_load(example("custom pruner config"))
    assert config == {"name": "norm", "params": {}}
    build_pruner(config["name"], budget=8, **config["params"])


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_docs_in_llm_pruner_keeps_all_and_follows_its_schedule(models, lasttoken_pruner, family):  # noqa: F811
    model, processor = models[family]
    batch = inputs(processor)
    ref = generate(model, batch)
    with build_pruner("lasttoken")(model):
        assert torch.equal(generate(model, batch), ref)
    layers = model.config.text_config.num_hidden_layers
    single = inputs(processor, QUESTIONS[:1])
    n_text = int((single["input_ids"] != model.config.image_token_id).sum())
    pruner = build_pruner("lasttoken", budget=8)
    seen, handles = _decoder_rows(model)
    try:
        with pruner(model):
            generate(model, single, max_new_tokens=2)
    finally:
        for h in handles:
            h.remove()
    n = pruner.last_stats.samples[0].vision_tokens_full
    counted = [seen[i] - n_text for i in range(layers)]
    assert counted == pruner.layer_schedule(n, model.config) == [n, n] + [8] * (layers - 2)
    assert pruner.last_stats.samples[0].layer_vision_tokens == counted
    assert [t.layer for t in pruner.last_trace] == [1] and pruner.last_trace[0].keep[0].numel() == 8


def test_docs_in_llm_pruner_refuses_a_layer_the_model_lacks_from_its_config(models, lasttoken_pruner):  # noqa: F811
    config = models["llava"][0].config
    layers = config.text_config.num_hidden_layers
    build_pruner("lasttoken", budget=8, layer=layers - 1).check_config(config)
    message = f"lasttoken: prune layer {layers} does not exist ({layers} decoder layers); valid: 0 to {layers - 1}"
    with pytest.raises(ValueError, match=f"^{re.escape(message)}$"):
        build_pruner("lasttoken", budget=8, layer=layers + 1).check_config(config)


def test_a_bad_in_llm_layer_fails_before_the_model_loads(mmtok_cache, tiny_llava_path, lasttoken_pruner, tmp_path,
                                                         monkeypatch):  # fmt: skip
    """The runner checks the prune layers against the checkpoint's config: one line, no load, no run folder."""
    import mmtok.run.execute
    from mmtok.run.compose import compose
    from mmtok.run.schema import ConfigError

    def never(cfg):
        raise AssertionError("the model was loaded before the prune layers were checked")

    monkeypatch.setattr(mmtok.run.execute, "load", never)
    cfg = compose(
        [f"cache_dir={mmtok_cache}", "model=tiny_llava", "benchmark=pope_local", "progress=false", "limit=2",
         f"results_dir={tmp_path}", "wandb.mode=disabled", "pruner=none", "pruner.name=lasttoken", "budget=8",
         "+pruner.params.layer=40"]
    )  # fmt: skip
    with pytest.raises(
        ConfigError, match=r"^lasttoken: prune layer 39 does not exist \(\d+ decoder layers\); valid: 0 to \d+$"
    ):
        mmtok.run.execute.run(cfg)
    assert list(tmp_path.iterdir()) == []


@pytest.fixture(scope="module")
def repo_with_the_examples(tmp_path_factory):
    """A copy of the repository in which a newcomer saved both examples verbatim as method modules,
    each with its YAML (what the issue's trap did with the README's example)."""
    root = tmp_path_factory.mktemp("newcomer") / "repo"
    skip = shutil.ignore_patterns("__pycache__", "*.pyc", ".ruff_cache")
    for part in ("mmtok", "tests", "configs", "docs"):
        shutil.copytree(ROOT / part, root / part, ignore=skip)
    for name in ("pyproject.toml", "run.py"):
        shutil.copy2(ROOT / name, root / name)
    (root / "mmtok" / "pruners" / "norm.py").write_text(example("custom pruner"))
    (root / "configs" / "pruner" / "norm.yaml").write_text(example("custom pruner config"))
    (root / "mmtok" / "pruners" / "lasttoken.py").write_text(example("custom in-LLM pruner"))
    (root / "configs" / "pruner" / "lasttoken.yaml").write_text("name: lasttoken\nparams:\n  layer: 2\n")
    return root


WHO = "PRUNERS['norm'].__module__, PRUNERS['lasttoken'].__module__"


def _offline(root: Path, mmtok_cache: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.update(PYTHONPATH=str(root), MMTOK_CACHE=str(mmtok_cache), HF_HUB_OFFLINE="1", WANDB_MODE="disabled")
    return env


def test_the_examples_copied_into_method_modules_leave_the_registry_tests_green(repo_with_the_examples, mmtok_cache):
    """The trap: a test that registers the example's name must not break the registry for a user who
    saved the same example as `mmtok/pruners/norm.py`. The example test runs first, then the
    registry tests see both copied methods, each with its config."""
    root = repo_with_the_examples
    tests = [
        "tests/test_adding_a_pruner.py::test_docs_pruner_config_names_the_pruner",
        "tests/test_registry.py",
    ]
    proc = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:randomly", *tests],
        cwd=root, env=_offline(root, mmtok_cache), capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert re.search(r"\b6 passed\b", proc.stdout), proc.stdout[-1000:]
    names = subprocess.run(
        [sys.executable, "-c", f"from mmtok.pruners import PRUNERS; print({WHO})"],
        cwd=root, env=_offline(root, mmtok_cache), capture_output=True, text=True, check=True,
    ).stdout.split()  # fmt: skip
    assert names == ["mmtok.pruners.norm", "mmtok.pruners.lasttoken"]


def test_a_copied_in_llm_method_with_a_bad_layer_fails_in_one_line_without_a_run_folder(
    repo_with_the_examples, mmtok_cache, tiny_llava_path, tmp_path
):
    root = repo_with_the_examples
    args = [f"cache_dir={mmtok_cache}", "model=tiny_llava", "benchmark=pope_local", "limit=2", "progress=false",
            f"results_dir={tmp_path / 'results'}", "wandb.mode=disabled", "pruner=lasttoken", "budget=8",
            "pruner.params.layer=40"]  # fmt: skip
    proc = subprocess.run(
        [sys.executable, "run.py", *args], cwd=root, env=_offline(root, mmtok_cache), capture_output=True, text=True
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert proc.stderr.strip().splitlines()[-1].startswith("error: lasttoken: prune layer 39 does not exist (")
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "results" / "runs").exists()
