"""Text only (`budget=0`): no image token reaches the LLM, on every family, for every pre-LLM pruner
and `none`; the LLM receives the unpruned prompt minus its image tokens and generates exactly what
the model generates on that text prompt by itself. In-LLM pruners refuse 0 in one line. Every
pre-LLM pruner's run at 0 is one run: `pruner=none budget=0` (one hash, one row)."""

from __future__ import annotations

import json

import pytest
import torch
from omegaconf import OmegaConf

from mmtok import store
from mmtok.pruners import PRUNERS, build_pruner
from mmtok.run.compose import compose
from mmtok.run.execute import run
from mmtok.run.identity import config_hash, identity
from mmtok.run.pruner import build_pruner_from, canonical
from mmtok.run.schema import ConfigError
from tests._families import TESTERS
from tests._tiny import QUESTIONS, method_params
from tests.test_pruner_contract import until_eos

PRE_LLM = [name for name, cls in PRUNERS.items() if not cls.in_llm]
IN_LLM = [name for name, cls in PRUNERS.items() if cls.in_llm]
NEW = 6


def _cases():
    return [
        pytest.param(t, name, id=f"{t.model_type}-{name}")
        for t in TESTERS
        for name in PRE_LLM
        if t.applies(PRUNERS[name])
    ]


def _text_only_reference(model, batch) -> tuple[list[list[int]], list[list[int]]]:
    """Per sample: the unpruned prompt (padding dropped) minus its image tokens, and what the model
    generates on that prompt alone (no image inputs, no padding, no pruner)."""
    image_id = model.config.image_token_id
    prompts, outs = [], []
    for ids, mask in zip(batch["input_ids"], batch["attention_mask"]):
        ids = ids[mask.bool()]
        text = ids[ids != image_id]
        with torch.no_grad():
            out = model.generate(input_ids=text[None], attention_mask=torch.ones_like(text)[None],
                                 max_new_tokens=NEW, do_sample=False)  # fmt: skip
        prompts.append(text.tolist())
        outs.append(out[0, text.numel() :].tolist())
    return prompts, outs


@pytest.mark.parametrize(("tester", "name"), _cases())
def test_the_llm_sees_the_prompt_without_its_image_tokens(family_models, tester, name, monkeypatch):
    model, processor = family_models(tester)
    batch = tester.batch(processor)
    image_id = model.config.image_token_id
    prompts, ref = _text_only_reference(model, batch)
    full = ((batch["input_ids"] == image_id) & batch["attention_mask"].bool()).sum(-1).tolist()

    seen = []
    original = type(model).generate

    def spy(self, *args, **kwargs):
        seen.append(kwargs)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(type(model), "generate", spy)
    pruner = build_pruner(name, budget=0, **method_params(PRUNERS[name]))
    with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS), torch.no_grad():
        out = model.generate(**batch, max_new_tokens=NEW, do_sample=False)

    (call,) = seen  # the model's own generate, once, on text ids only: no image, no embeddings
    assert set(call) - {"max_new_tokens", "do_sample"} == {"input_ids", "attention_mask"}
    got = [ids[mask.bool()].tolist() for ids, mask in zip(call["input_ids"], call["attention_mask"])]
    assert got == prompts
    assert call["attention_mask"].shape[1] == max(len(p) for p in prompts)
    assert bool((call["attention_mask"].flip(-1).cumprod(-1).sum(-1) == call["attention_mask"].sum(-1)).all())
    if tester.model_type == "qwen2_5_vl":  # the image's markers stay, side by side
        start, end = model.config.vision_start_token_id, model.config.vision_end_token_id
        assert all(p[p.index(start) + 1] == end for p in prompts)

    # the caller gets its own prompt back in front, then exactly the text-only model's generation
    assert torch.equal(out[:, : batch["input_ids"].shape[1]], batch["input_ids"])
    eos = model.generation_config.eos_token_id
    for b in range(len(prompts)):
        assert until_eos(out[b, batch["input_ids"].shape[1] :], eos) == until_eos(torch.tensor(ref[b]), eos), b

    stats = pruner.last_stats
    assert [(s.vision_tokens, s.vision_tokens_full, s.crops, s.kept_index) for s in stats.samples] == [
        (0, n, 0, []) for n in full
    ]
    if tester.full_tokens is not None:
        assert full == list(tester.full_tokens)
    assert stats.vision_s == 0.0
    assert [s.length for s in pruner.request.spans] == [0, 0, 0]
    width = call["attention_mask"].shape[1]
    for b, (ids, mask) in enumerate(zip(batch["input_ids"], batch["attention_mask"])):
        # the empty span sits where the image was: after the padding and the text before the image
        before = ids[mask.bool()].tolist().index(image_id)
        assert pruner.request.spans[b].start == width - len(prompts[b]) + before


@pytest.mark.parametrize("name", IN_LLM)
def test_in_llm_pruners_refuse_budget_0_in_one_line(name):
    with pytest.raises(ValueError) as info:
        build_pruner(name, budget=0)
    assert str(info.value) == (
        f"pruner {name!r} prunes inside the LLM: budget 0 (text only) is for pre-LLM pruners; use none@0"
    )


def test_budget_0_rules_of_the_pruner_api():
    assert build_pruner("none", budget=0).budget == 0
    with pytest.raises(ValueError, match=r"^pruner 'none' takes no budget \(it keeps every vision token\); budget 0"):
        build_pruner("none", budget=4)
    with pytest.raises(ValueError, match="give either budget or retain_ratio, not both"):
        build_pruner("mmtok", budget=0, retain_ratio=0.2)


# -- runs ---------------------------------------------------------------------------------------------
def _key(*overrides) -> str:
    cfg = canonical(compose(list(overrides)))
    return config_hash(identity(OmegaConf.to_container(cfg, resolve=True), build_pruner_from(cfg)))


def test_every_pre_llm_pruner_at_0_is_one_run():
    """Canonical identity: any pre-LLM pruner (its file, its parameters, an image scale) at budget 0
    hashes as `pruner=none budget=0`, on the command line and as a cell; the unpruned run differs."""
    from mmtok.run.sweep import experiment_cells

    base = ["model=tiny_qwen25vl", "benchmark=pope_local", "limit=4"]
    text_only = _key(*base, "pruner=none", "budget=0")
    for args in (["pruner=mmtok", "budget=0"], ["pruner=divprune", "budget=0"], ["pruner=resize_0.5", "budget=0"],
                 ["pruner=mmtok", "pruner.params.alpha=0.3", "budget=0"]):  # fmt: skip
        assert _key(*base, *args) == text_only, args
    assert _key(*base, "pruner=none") != text_only
    cells = experiment_cells(None, [*base, "cells=[none@0,mmtok@0,random@0,mmtok_resize_0.25@0,none]"])
    assert [c.config_hash == text_only for c in cells] == [True, True, True, True, False]
    assert [(c.pruner, c.budget, c.label) for c in cells[:2]] == [("none", 0, "0"), ("mmtok", 0, "0")]
    cells = experiment_cells(None, [*base, "pruner=random", "budget=0"])  # a job without cells
    assert [(c.cell, c.config_hash) for c in cells] == [("random@0", text_only)]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["pruner=fastv", "budget=0"], "pruner 'fastv' prunes inside the LLM: budget 0 (text only) is for pre-LLM"),
        (["pruner=mmtok", "budget=0", "pruner.retain_ratio=0.2"], "retain_ratio=0.2 replaces the token budget"),
        (["budget=-1"], "budget must be an integer >= 0 (vision tokens kept; 0 = text only) or null to keep all"),
    ],
)
def test_budget_0_errors_come_before_the_model_loads(args, message, tmp_path, monkeypatch):
    import mmtok.run.execute

    def never(cfg):
        raise AssertionError("the model was loaded")

    monkeypatch.setattr(mmtok.run.execute, "load", never)
    with pytest.raises(ConfigError) as info:
        run(compose(["model=tiny_llava", "benchmark=pope_local", f"results_dir={tmp_path}", *args]))
    assert message in str(info.value) and "\n" not in str(info.value)


@pytest.mark.parametrize(
    ("model", "family", "full"),
    [("tiny_llava", "llava", 36), ("tiny_qwen25vl", "qwen2_5_vl", None), ("tiny_llavanext", "llava_next", None)],
)
def test_run_py_budget_0_writes_a_completed_row_with_0_vision_tokens(run_cli, tmp_path, model, family, full):
    args = [f"model={model}", "budget=0", "benchmark=pope_local", "limit=4", "wandb.mode=disabled", "progress=false"]
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    (row,) = store.read_rows(tmp_path / "results" / "runs.csv")
    assert (row["status"], row["model"], row["model_family"], row["pruner"], row["budget"]) == (
        "completed", model, family, "none", "0",
    )  # fmt: skip
    assert f"_{model}_none-0_pope_local_" in row["run_id"]
    assert (float(row["vision_tokens_mean"]), int(row["vision_tokens_min"]), int(row["vision_tokens_max"])) == (0, 0, 0)
    assert float(row["vision_tokens_full_mean"]) > 0 and float(row["image_scale"]) == 1.0
    assert json.loads(row["pruner_params"])["budget"] == 0 and int(row["n_samples"]) == 4
    samples = [json.loads(s) for s in (tmp_path / row["run_dir"] / "samples.jsonl").read_text().splitlines()]
    assert [(s["vision_tokens"], s["crops"], s["prefill_tokens"] == s["text_tokens"]) for s in samples] == [
        (0, 0, True)
    ] * 4
    if full is not None:
        assert {s["vision_tokens_full"] for s in samples} == {full}
