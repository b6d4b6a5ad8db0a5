"""The vLLM plugin's method table and request checks (mmtok.serving.methods), in the main env
(no vLLM needed): defaults equal the HF pruners', refusals name the valid methods, the plugin
package imports nothing of ours but mmtok.selection. The engine tests are tests_vllm/ (make test-vllm)."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from mmtok.pruners import PRUNERS, build_pruner
from mmtok.serving import methods as M


def test_defaults_are_the_hf_pruners():
    mmtok = build_pruner("mmtok", budget=16).for_family("llava")
    assert (M.MMTOK_ALPHA, M.MMTOK_TAU_T_LLAVA, M.MMTOK_TAU_V) == (mmtok.alpha, mmtok.tau_t, mmtok.tau_v)
    assert mmtok.keep_option_letters is False  # the plugin tokenises the question as the release does
    assert M.DIVPRUNE_ARITHMETIC == build_pruner("divprune", budget=16).arithmetic
    vis = build_pruner("vispruner", budget=16)
    assert (M.VISPRUNER_IMPORTANT_RATIO, M.VISPRUNER_STEP) == (vis.important_ratio, vis.step)
    assert M.SEED == build_pruner("random", budget=16).seed
    assert M.ModelParams() == M.ModelParams.from_config(SimpleNamespace())


def test_every_pruner_is_served_or_refused_with_its_reason():
    """The plugin's method lists name real pruners of the right stage; any other registered pruner (a
    user's own included) is refused in one line naming what vLLM can run."""
    for name in (*M.METHODS, *M.NOT_PORTED):
        assert name == "none" or not PRUNERS[name].in_llm, name
    for name in M.IN_LLM:
        assert PRUNERS[name].in_llm and "prunes inside the LLM's layers" in M.refusal(name)
    for name in M.NOT_PORTED:
        assert M.refusal(name).startswith(f"pruning method {name!r} is not ported to vLLM")
    for name in set(PRUNERS) - {*M.METHODS, *M.IN_LLM, *M.NOT_PORTED}:
        assert M.refusal(name) == f"unknown pruning method {name!r}; valid in vLLM: {', '.join(M.METHODS)}"
    assert M.refusal("mmtok") is None


def test_resolve_request_over_model_defaults():
    config = SimpleNamespace(mmtok_method="divprune", mmtok_budget=64)
    assert M.resolve(config, {}) == M.PruneRequest("divprune", 64)
    assert M.resolve(config, {"mmtok_budget": 16}) == M.PruneRequest("divprune", 16)
    assert M.resolve(config, {"mmtok_method": "none"}) == M.PruneRequest("none", None)
    assert M.resolve(config, {"mmtok_budget": None}) == M.PruneRequest("none", None)
    assert M.resolve(SimpleNamespace(), {}) == M.PruneRequest("none", None)
    q = "Is there a red object?"
    assert M.resolve(config, {"mmtok_method": "mmtok", "mmtok_question": q}) == M.PruneRequest("mmtok", 64, q)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mmtok_method": "fastv"}, "pruning method 'fastv' prunes inside the LLM's layers"),
        ({"mmtok_method": "nope"}, "unknown pruning method 'nope'; valid in vLLM: none, mmtok, divprune"),
        ({"mmtok_budget": 0}, "mmtok_budget must be an integer >= 1"),
        ({"mmtok_budget": True}, "mmtok_budget must be an integer >= 1"),
        ({"mmtok_method": "mmtok"}, "mmtok needs the question text"),
    ],
)
def test_one_line_errors(kwargs, message):
    with pytest.raises(ValueError, match=message) as info:
        M.resolve(SimpleNamespace(mmtok_method="random", mmtok_budget=16), kwargs)
    assert "\n" not in str(info.value)


def test_kept_count_and_keep_all_rows():
    assert M.kept_count(M.PruneRequest("mmtok", 16, "q"), 576) == 16
    assert M.kept_count(M.PruneRequest("mmtok", 999, "q"), 576) == 576
    assert M.kept_count(M.PruneRequest("none", None), 576) == 576
    proj = torch.randn(10, 4)
    image = M.ImageSignals(proj=proj, patches=torch.randn(10, 3))
    rows, idx = M.select_rows("divprune", 10, image, M.ModelParams())
    assert rows is proj and idx.tolist() == list(range(10))


def test_random_rows_are_the_hf_pruners():
    """Random: seeded from the prompt ids as `Pruner.sample_seed`, drawn by `random_select`."""
    from mmtok.pruners import SampleContext

    ids = [1, 5, 4, 4, 4, 7]
    pruner = build_pruner("random", budget=3)
    ctx = SampleContext(0, torch.tensor(ids), None, None, None, 0, None)
    assert M.prompt_seed(0, ids) == pruner.sample_seed(ctx)
    image = M.ImageSignals(proj=torch.randn(9, 4), patches=torch.randn(9, 2))
    _, idx = M.select_rows("random", 3, image, M.ModelParams(), seed=M.prompt_seed(0, ids))
    gen = torch.Generator().manual_seed(pruner.sample_seed(ctx))
    from mmtok.selection.random import random_select

    assert idx.tolist() == random_select(9, 3, generator=gen).tolist()


def test_plugin_imports_only_selection_of_ours():
    """mmtok.serving (without vLLM's model classes, which need vLLM) pulls in no other part of
    mmtok and not vLLM itself: it installs beside vLLM's transformers without the eval stack."""
    code = (
        "import sys, mmtok.serving, mmtok.serving.methods, mmtok.serving.checkpoint;"
        "print(sorted(m for m in sys.modules if m.startswith('mmtok') or m == 'vllm'))"
    )
    root = Path(__file__).resolve().parent.parent
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=root)
    loaded = set(ast.literal_eval(out.stdout.strip()))
    assert "vllm" not in loaded
    assert {m for m in loaded if m != "mmtok" and not m.startswith(("mmtok.serving", "mmtok.selection"))} == set()
