"""The README's "add your own pruner" example works as printed and meets the pruner contract."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

from mmtok.pruners import PRUNERS, build_pruner
from tests._tiny import QUESTIONS, generate, images, inputs
from tests.test_pruner_contract import assert_selecting_every_token_is_identity, models  # noqa: F401

README = Path(__file__).resolve().parents[1] / "README.md"


@pytest.fixture
def norm_pruner():
    text = README.read_text()
    block = re.search(r"<!-- example: custom pruner -->\s*```python\n(.*?)```", text, re.S)
    assert block, "README lost its custom-pruner example"
    namespace: dict = {}
    exec(compile(block.group(1), str(README), "exec"), namespace)
    try:
        yield namespace["NormPruner"]
    finally:
        PRUNERS.pop("norm", None)


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_readme_pruner_keeps_all_counts_and_batches(models, norm_pruner, family):  # noqa: F811
    model, processor = models[family]
    crops_max = 1 if family == "llava" else 5
    batch = inputs(processor)
    ref = generate(model, batch)
    with build_pruner("norm", budget=36 * crops_max, next_layout="hf")(model):
        assert torch.equal(generate(model, batch), ref)
    pruner = build_pruner("norm", budget=8 * crops_max)
    with pruner(model):
        together = generate(model, batch)
    crops = [s["crops"] for s in pruner.last_stats["samples"]]
    assert [s["vision_tokens"] for s in pruner.last_stats["samples"]] == [8 * c for c in crops]
    for i, q in enumerate(QUESTIONS):
        single = inputs(processor, [q], imgs=[images()[i]])
        with pruner(model):
            assert generate(model, single)[0].tolist() == together[i].tolist()
    assert not torch.equal(together, ref)
    assert_selecting_every_token_is_identity("norm", model, processor)
