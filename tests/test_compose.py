"""Composition: a pre-LLM selection followed by an in-LLM stage in one run (`pruner.then`, `Composed`).

The in-LLM contract on the composed schedule, on every family's tiny checkpoint (tests/_families.py):
every decoder layer receives the pre-LLM count k up to the stage's prune layer and then the stage's
own schedule on k; both stages keeping everything reproduce the unpruned model's generations exactly,
and a stage keeping everything reproduces the pre-LLM pruner alone exactly; batch = one by one; the
model is unmodified afterwards. Which pairs run: every in-LLM stage after MMTok, and every pre-LLM
method before FastV, where the family has both (by declared traits). Then the config side: the syntax,
one-line errors before anything loads, the identity (single pruners hash as before), the run id,
the Table 14 file, and `mmtok_llm`'s selection against a plain re-derivation from the hidden states.
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from mmtok.pruners import PRUNERS, Composed, build_pruner
from mmtok.run.compose import compose
from mmtok.run.identity import config_hash, identity, pruner_label
from mmtok.run.pruner import build_pruner_from
from mmtok.run.schema import ConfigError
from mmtok.run.validate import validate
from mmtok.selection.mmtok import mmtok_select
from tests._families import TESTERS
from tests._tiny import QUESTIONS, generate, method_params
from tests.test_pruner_contract import _decoder_rows, until_eos

PRE = 8  # pre-LLM tokens per crop of the largest split


def _first(tester, name, per_crop=PRE, **params):
    return build_pruner(name, budget=tester.budget(per_crop), **{**method_params(PRUNERS[name]), **params})


def _stage(tester, name, **params):
    # half the tokens the LLM receives at most: every stage prunes on the tiny models
    return build_pruner(name, budget=tester.budget(PRE) // 2, **params)


def _pairs():
    out = []
    pre = [n for n, c in PRUNERS.items() if not c.in_llm and n != "none"]
    inllm = [n for n, c in PRUNERS.items() if c.in_llm]
    for t in TESTERS:
        pairs = [("mmtok", s) for s in inllm] + [(f, "fastv") for f in pre if f != "mmtok"]
        for first, stage in pairs:
            if (PRUNERS[first].requires | PRUNERS[stage].requires) <= t.traits:
                out.append(pytest.param(t, first, stage, id=f"{t.model_type}-{first}+{stage}"))
    return out


PAIRS = _pairs()


@pytest.mark.parametrize(("tester", "first", "stage"), PAIRS)
def test_layers_receive_the_composed_schedule(family_models, tester, first, stage):
    model, processor = family_models(tester)
    layers = model.config.text_config.num_hidden_layers
    for q in range(len(QUESTIONS)):
        batch = tester.batch(processor, (q,))
        n_text = int((batch["input_ids"] != model.config.image_token_id).sum())
        pruner = Composed(_first(tester, first), _stage(tester, stage))
        seen, handles = _decoder_rows(model)
        try:
            with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS[q : q + 1]):
                generate(model, batch, max_new_tokens=2)
        finally:
            for h in handles:
                h.remove()
        stats = pruner.last_stats.samples[0]
        counted = [seen[i] - n_text for i in range(layers)]
        k = counted[0]
        want_k = tester.expected_kept({"budget": tester.budget(PRE)}, processor, batch, 0, stats.vision_tokens_full)
        assert k == want_k < stats.vision_tokens_full, (first, stage, q)
        assert counted == pruner.layer_schedule(k, model.config), (first, stage, tester.model_type, q)
        assert counted[-1] < k, "the stage must prune on the tiny models"
        assert stats.layer_vision_tokens == counted and stats.vision_tokens <= counted[-1]
        assert stats.equivalent_tokens == pytest.approx(sum(counted) / layers)
        assert stats.kept_index is None or len(stats.kept_index) == k


def _keep_all(name, **params):
    return PRUNERS[name].keep_all(**{**method_params(PRUNERS[name]), **params})


@pytest.mark.parametrize(("tester", "first", "stage"), PAIRS)
def test_keep_all_of_both_reproduces_the_unpruned_model(family_models, tester, first, stage):
    model, processor = family_models(tester)
    batched = PRUNERS[first].supports_batch and PRUNERS[stage].supports_batch
    for which in ((1,), (0, 1, 2)) if batched else ((1,),):
        batch = tester.batch(processor, which)
        ref = generate(model, batch)
        pruner = Composed(_keep_all(first), _keep_all(stage))
        with pruner(model, tokenizer=processor.tokenizer, questions=[QUESTIONS[i] for i in which]):
            out = generate(model, batch)
        assert torch.equal(out, ref), (first, stage, which)
        assert all(s.vision_tokens == s.vision_tokens_full for s in pruner.last_stats.samples)


@pytest.mark.parametrize(("tester", "first", "stage"), PAIRS)
def test_a_stage_keeping_everything_is_the_pre_llm_pruner_alone(family_models, tester, first, stage):
    model, processor = family_models(tester)
    batch = tester.batch(processor, (0,))
    alone = _first(tester, first)
    with alone(model, tokenizer=processor.tokenizer, questions=QUESTIONS[:1]):
        ref = generate(model, batch)
    pruner = Composed(_first(tester, first), _keep_all(stage))
    with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS[:1]):
        out = generate(model, batch)
    assert torch.equal(out, ref), (first, stage)
    assert pruner.last_stats.samples[0].kept_index == alone.last_stats.samples[0].kept_index


@pytest.mark.parametrize(
    ("tester", "first", "stage"),
    [p for p in PAIRS if PRUNERS[p.values[1]].supports_batch and PRUNERS[p.values[2]].supports_batch],
)
def test_batch_equals_one_by_one_and_the_model_is_unmodified(family_models, tester, first, stage):
    model, processor = family_models(tester)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    pruner = Composed(_first(tester, first), _stage(tester, stage))
    with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS):
        together = generate(model, tester.batch(processor))
    eos = model.generation_config.eos_token_id
    for i, q in enumerate(QUESTIONS):
        with pruner(model, tokenizer=processor.tokenizer, questions=[q]):
            alone = generate(model, tester.batch(processor, (i,)))
        assert until_eos(together[i], eos) == until_eos(alone[0], eos), (first, stage, i)
    assert "generate" not in vars(model)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_every_in_llm_method_and_family_is_paired():
    """Guard for the table above: every in-LLM method runs after a selection on some family."""
    stages = {p.values[2] for p in PAIRS}
    assert stages == {n for n, c in PRUNERS.items() if c.in_llm}
    assert {p.values[0].model_type for p in PAIRS} == {t.model_type for t in TESTERS}


# -- mmtok_llm: the re-selection -----------------------------------------------------------------------
@pytest.mark.parametrize("tester", [pytest.param(t, id=t.model_type) for t in TESTERS])
def test_mmtok_llm_selects_by_coverage_of_the_layer_states(family_models, tester):
    """Its picks equal `mmtok_select` on the hidden states layer K receives (through K's input norm),
    re-derived from a plain forward of the same pruned prompt with `output_hidden_states`."""
    model, processor = family_models(tester)
    lm = model.model.language_model
    first, stage = _first(tester, "mmtok"), _stage(tester, "mmtok_llm", layer=3)
    pruner = Composed(first, stage)
    for q in range(3):
        batch = tester.batch(processor, (q,))
        with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS[q : q + 1]):
            generate(model, batch, max_new_tokens=1)
        request = pruner.request
        keep = stage.last_trace[0].keep[0]
        # the same pre-LLM prompt, unpruned inside: the layer-3 input states
        with first(model, tokenizer=processor.tokenizer, questions=QUESTIONS[q : q + 1]):
            captured = {}

            def grab(module, args, kwargs):
                captured.setdefault("h", args[0] if args else kwargs["hidden_states"])

            hook = lm.layers[3].register_forward_pre_hook(grab, with_kwargs=True)
            try:
                generate(model, batch, max_new_tokens=1)
            finally:
                hook.remove()
        states = lm.layers[3].input_layernorm(captured["h"])[0]
        span = request.spans[0]
        end = span.start + span.length
        vision = states[span.start : end]
        tau_t = stage.for_family(model.config.model_type).tau_t
        want = mmtok_select(states[end:], vision, vision, stage.budget, tau_t=tau_t)
        assert keep.tolist() == want.tolist() and len(keep) == stage.budget


def test_mmtok_llm_alone_and_its_family_defaults():
    assert build_pruner("mmtok_llm", budget=4).for_family("llava").tau_t == 0.02
    assert build_pruner("mmtok_llm", budget=4).for_family("qwen2_5_vl").tau_t == 0.01
    cfg = OmegaConf.create({"text_config": {"num_hidden_layers": 40}})
    assert build_pruner("mmtok_llm", budget=80, layer=24).layer_schedule(160, cfg) == [160] * 24 + [80] * 16
    with pytest.raises(ValueError, match=r"^mmtok_llm: layer K=40 must be below the LLM's 40 layers; valid: 1 to 39$"):
        build_pruner("mmtok_llm", budget=80, layer=40).check_config(cfg)


# -- the config side -----------------------------------------------------------------------------------
TINY = ["model=tiny_llava", "benchmark=pope_local"]


def _built(overrides):
    cfg = compose([*TINY, *overrides])
    validate(cfg)
    return cfg, build_pruner_from(cfg)


def test_the_command_line_syntax_builds_the_composition():
    cfg, pruner = _built(
        ["budget=8", "+pruner.then.name=fastv", "+pruner.then.budget=4", "+pruner.then.params.layer=3"]
    )
    assert isinstance(pruner, Composed) and pruner.first.budget == 8
    assert (pruner.stage.name, pruner.stage.budget, pruner.stage.layer) == ("fastv", 4, 3)
    assert pruner_label(cfg) == "mmtok+fastv4"
    _, same = _built(["budget=8", "pruner.then={name: fastv, budget: 4, params: {layer: 3}}"])
    assert same.params() == pruner.params()
    assert pruner.params()["then"] == {"name": "fastv", **pruner.stage.params()}


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["+pruner.then.name=divprune", "+pruner.then.budget=4"], "pruner.then.name 'divprune' selects before the LLM"),
        (["+pruner.then.name=fastv", "+pruner.then.budget=8"], r"pruner.then.budget \(8\) must be below the pre-LLM"),
        (["+pruner.then.name=fastv", "+pruner.then.bugdet=4"], "unknown key\\(s\\) bugdet in pruner.then; valid: name"),
        (["+pruner.then.budget=4"], "pruner.then needs a name"),
        (["+pruner.then.name=fastv", "+pruner.then.budget=0"], "pruner.then.budget must be a positive integer"),
        (["+pruner.then.name=fastvv"], r"unknown pruner.then.name 'fastvv'; valid \(in-LLM pruners\): dart, fastv"),
        (["+pruner.then.name=fastv", "+pruner.then.params.k=2"], "pruner.then: unknown parameter\\(s\\) k for pruner"),
        (["pruner=fastv", "+pruner.then.name=dart"], "pruner 'fastv' acts inside the LLM; valid first pruners: "),
        (["pruner=none", "+pruner.then.name=dart"], "pruner 'none' keeps every token"),
    ],
)
def test_bad_compositions_fail_in_one_line_before_loading(overrides, message):
    budget = [] if "pruner=none" in overrides else ["budget=8"]  # none keeps all (budget: null)
    with pytest.raises(ConfigError, match=message) as info:
        _built([*budget, *overrides])
    assert "\n" not in str(info.value)


def test_a_layer_the_llm_lacks_fails_from_the_checkpoint_config(tiny_llava_path):
    from mmtok.models.loading import load_config

    _, pruner = _built(
        ["budget=8", "+pruner.then.name=mmtok_llm", "+pruner.then.budget=4", "+pruner.then.params.layer=24"]
    )
    with pytest.raises(ValueError, match=r"^mmtok_llm: layer K=24 must be below the LLM's 16 layers; valid: 1 to 15$"):
        pruner.check_config(load_config(str(tiny_llava_path)))


def test_the_stage_is_checked_against_the_family_before_loading():
    with pytest.raises(ConfigError, match=r"^pruner 'pdrop' does not apply to Qwen2.5-VL .* \(pruner.then\)$"):
        validate(compose(["model=tiny_qwen25vl", "budget=8", "+pruner.then.name=pdrop", "+pruner.then.budget=4"]))


def test_single_pruners_hash_as_before_and_the_stage_is_in_the_identity():
    """No `then`: the identity has no trace of it (every existing run hash is unchanged); with one,
    the stage's name, budget and parameters are hashed."""
    plain = compose(TINY)
    ident = identity(OmegaConf.to_container(plain, resolve=True), build_pruner_from(plain))
    assert "then" not in ident["pruner"]["params"] and "then" not in ident["pruner"]
    keys = set()
    for stage_budget in (2, 4):
        for layer in (2, 3):
            cfg, p = _built(
                ["+pruner.then.name=fastv", f"+pruner.then.budget={stage_budget}", f"+pruner.then.params.layer={layer}"]
            )
            keys.add(config_hash(identity(OmegaConf.to_container(cfg, resolve=True), p)))
    assert len(keys) == 4 and config_hash(ident) not in keys


def test_table14_file_and_cell():
    from mmtok.run.cells import cell_config

    cfg = compose(["model=llavanext_13b", "pruner=mmtok_then_mmtok_l24", "benchmark=pope_local"])
    assert cfg.budget == 160 and cfg.pruner.name == "mmtok"
    pruner = build_pruner_from(cfg, model_type="llava_next")
    assert (pruner.stage.name, pruner.stage.budget, pruner.stage.layer) == ("mmtok_llm", 80, 24)
    from transformers import LlavaNextConfig

    hf = LlavaNextConfig(text_config={"model_type": "llama", "num_hidden_layers": 40})  # 13B's 40 layers, 5 crops
    assert pruner.layer_schedule(160, hf) == [160] * 24 + [80] * 16
    assert pruner.input_capacity(hf) == 160 == pruner.stage.capacity(hf)
    pruner.check_config(hf)
    job = compose(["model=llavanext_13b", "benchmark=pope_local", "cells=[mmtok_then_mmtok_l24@160,mmtok@160]"])
    composed, plain = (cell_config(job, c) for c in job.cells)
    assert composed.pruner.then.name == "mmtok_llm" and composed.budget == 160
    assert plain.pruner.get("then") is None
    # a composed job does not lend its stage to a plain cell of the same method
    lent = cell_config(
        compose(["model=llavanext_13b", "pruner=mmtok_then_mmtok_l24", "benchmark=pope_local"]), "mmtok@64"
    )
    assert lent.pruner.get("then") is None and lent.budget == 64


def test_a_composed_job_is_enumerated_with_its_stage(tmp_path):
    """`make status` / sweep narrowing hash a job without cells as the job itself, stage included."""
    from mmtok.run.sweep import experiment_cells

    overrides = ["model=tiny_llava", "pruner=mmtok_then_mmtok_l24", "benchmark=pope_local", f"results_dir={tmp_path}"]
    (cell,) = experiment_cells(None, overrides)
    cfg = compose(overrides)
    assert cell.config_hash == config_hash(identity(OmegaConf.to_container(cfg, resolve=True), build_pruner_from(cfg)))
    plain = compose([o for o in overrides if not o.startswith("pruner=")] + ["budget=160"])
    assert cell.config_hash != config_hash(
        identity(OmegaConf.to_container(plain, resolve=True), build_pruner_from(plain))
    )


def test_the_stage_budget_is_relative_to_what_the_selection_lets_through(tiny_llava_path):
    from mmtok.models.loading import load_config

    config = load_config(str(tiny_llava_path))  # 36 tokens per image, 16 layers
    by_budget = Composed(build_pruner("mmtok", budget=8), build_pruner("fastv", budget=4))
    by_ratio = Composed(build_pruner("mmtok", retain_ratio=0.5), build_pruner("fastv", budget=9))
    assert by_budget.input_capacity(config) == 8 and by_ratio.input_capacity(config) == 18
    # FastV's equivalent label 4 of 8 received tokens: R = round((4 * 16 - 2 * 8) / 14) = 3
    assert by_budget.layer_schedule(8, config) == [8, 8] + [3] * 14
    assert by_ratio.layer_schedule(18, config) == [18, 18] + [round((9 * 16 - 2 * 18) / 14)] * 14
    assert Composed(build_pruner("mmtok"), build_pruner("fastv")).input_capacity(config) is None


def test_a_composed_run_writes_its_row_through_the_evaluation(mmtok_cache, tiny_llava_path, tmp_path):
    """The whole runner path (lmms-eval wrapper included): a completed row whose samples follow the
    composed schedule, the stage in `pruner_params`, the stage in the run id; resumed as the same run."""
    from mmtok.run.execute import run

    overrides = [
        f"cache_dir={mmtok_cache}", "model=tiny_llava", "benchmark=pope_local", "progress=false", "max_new_tokens=4",
        f"results_dir={tmp_path}", "wandb.mode=disabled", "limit=4", "budget=8",
        "+pruner.then.name=mmtok_llm", "+pruner.then.budget=4", "+pruner.then.params.layer=5",
    ]  # fmt: skip
    out = run(compose(overrides))
    assert out.status == "completed" and "_mmtok+mmtok_llm4-8_" in out.run_id
    assert out.row.pruner == "mmtok" and out.row.pruner_params["then"]["name"] == "mmtok_llm"
    assert out.row.pruner_params["then"]["budget"] == 4 and out.row.pruner_params["then"]["layer"] == 5
    for s in out.samples:
        assert s.layer_vision_tokens == [8] * 5 + [4] * 11 and s.vision_tokens == 4
        assert s.vision_tokens_full == 36 and s.equivalent_tokens == pytest.approx((5 * 8 + 11 * 4) / 16)
    assert run(compose(overrides)).status == "skipped"


def test_cells_naming_files_are_checked_by_the_methods_they_run(monkeypatch):
    """A cell names a pruner file: the family check reads its method (and its stage), so a variant or
    composition file on a family without every trait is checked, not refused as an unknown name."""
    from mmtok.run import validate as V

    validate(compose(["model=tiny_qwen25vl", "benchmark=pope_local", "cells=[mmtok_then_mmtok_l24@8,mmtok@8]"]))
    assert V._file_methods("mmtok_then_mmtok_l24") == ["mmtok", "mmtok_llm"] and V._file_methods("none") == ["none"]
    monkeypatch.setattr(V, "_file_methods", lambda file: ["mmtok", "pdrop"])  # a stage Qwen cannot run
    with pytest.raises(
        ConfigError, match=r"^pruner 'pdrop' does not apply to Qwen2.5-VL .*\(cell mmtok_then_mmtok_l24@8\)$"
    ):
        validate(compose(["model=tiny_qwen25vl", "benchmark=pope_local", "cells=[mmtok_then_mmtok_l24@8]"]))
