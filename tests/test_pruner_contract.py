"""One contract for every registered pruner on every model family's tiny checkpoint.

Keep-all identity, exact kept-token counts at the LLM input (pre-LLM) or per decoder layer along the
method's schedule (in-LLM), batch == one-by-one, determinism, an unmodified model afterwards, and a
one-line refusal where a method needs a trait the family lacks.

Two tables drive it (kvpress / transformers style): `METHODS`, every registered method with its
default parameters and its traits read from the class, and `TESTERS` (tests/_families.py), one
tester per family declaring its tiny checkpoint, test batch and budgets. A new method is covered by
registering it, a new family by adding its tester. Exclusions go by declared trait (`in_llm`,
`supports_batch`, `merges`, `takes_ratio`, the family's traits against a method's `requires`),
never by name. Parameters a method needs from the test session go by declared field
(`method_params`: a `clip_path` gets a tiny CLIP).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

import pytest
import torch

from mmtok.pruners import PRUNERS, build_pruner, pruners_for
from tests._families import TESTERS, FamilyTester
from tests._tiny import QUESTIONS, generate, method_params


@dataclass(frozen=True)
class Method:
    """One row of the table: a registered method with its default parameters."""

    name: str
    cls: type

    @property
    def in_llm(self) -> bool:
        return self.cls.in_llm

    @property
    def batched(self) -> bool:
        return self.cls.supports_batch

    @property
    def merges(self) -> bool:
        return self.cls.merges

    def build(self, tester: FamilyTester, per_crop: int | None = None):
        """Default parameters, `per_crop` tokens per crop of the family's largest split: 8 for
        pre-LLM methods; 16 for in-LLM ones, whose budget is a layer average (a staged method's
        first layers always see every token of a tiny crop)."""
        per_crop = per_crop or (16 if self.in_llm else 8)
        return make(self.name, budget=tester.budget(per_crop))


def make(name: str, budget: int | None, **params):
    """`build_pruner` with the defaults plus what the method needs from the session (`method_params`)."""
    return build_pruner(name, budget=budget, **{**method_params(PRUNERS[name]), **params})


METHODS = [Method(name, cls) for name, cls in PRUNERS.items()]


def ids(methods):
    return [pytest.param(m, id=m.name) for m in methods]


def cases(select=lambda m: True, extra=lambda t, m: [None]):
    """(tester, method[, extra]) for every family and every method that applies to it and `select`s."""
    out = []
    for t in TESTERS:
        for m in METHODS:
            if t.applies(m.cls) and select(m):
                for x in extra(t, m):
                    label = f"{t.model_type}-{m.name}" + ("" if x is None else f"-{_label(x)}")
                    out.append(pytest.param(t, m, *([] if x is None else [x]), id=label))
    return out


def _label(params: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in params.items())


PRE_LLM = lambda m: not m.in_llm and m.name != "none"  # noqa: E731  ("none" has no budget to honour)


@pytest.fixture(scope="module")
def models(tiny_models):
    """The LLaVA-1.5 / LLaVA-NeXT tiny models by model_type (other modules import this fixture)."""
    return tiny_models


def _run(tester, models, which=(0, 1, 2)):
    model, processor = models(tester)
    return model, processor, tester.batch(processor, which), [QUESTIONS[i] for i in which]


def until_eos(tokens: torch.Tensor, eos) -> list[int]:
    """Generated ids up to and including the first EOS (padding after it is not the method's)."""
    stops = {eos} if isinstance(eos, int) else set(eos or ())
    out = []
    for t in tokens.tolist():
        out.append(t)
        if t in stops:
            break
    return out


# -- which methods run where ------------------------------------------------------------------------
@pytest.mark.parametrize("tester", [pytest.param(t, id=t.model_type) for t in TESTERS])
def test_the_table_splits_by_traits(tester):
    names = {m.name for m in METHODS if tester.applies(m.cls)}
    assert tester.must_run <= names
    assert set(pruners_for(tester.model_type)) == names


def _refusing():
    return [
        pytest.param(t, name, id=f"{t.model_type}-{name}")
        for t in TESTERS
        for name, cls in PRUNERS.items()
        if not t.applies(cls)
    ]


@pytest.mark.parametrize(("tester", "name"), _refusing())
def test_methods_that_do_not_apply_refuse_in_one_line(family_models, tester, name):
    model, processor = family_models(tester)
    pruner = PRUNERS[name].keep_all()
    label = re.escape(tester.spec.label)
    with pytest.raises(
        ValueError, match=rf"^pruner '{name}' does not apply to {label} \({tester.model_type}\): it needs [^\n]+$"
    ):
        with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS[:1]):
            pass
    assert "generate" not in vars(model)


# -- keep-all ------------------------------------------------------------------------------------------
def keep_all_pruners(tester, method):
    """Pruners configured so that they keep every vision token: the method's own declaration of
    "keep everything", and for pre-LLM methods a per-crop budget at the crop size ("hf" layout =
    HF's own packing on tiling families)."""
    cls = method.cls
    out = [cls.keep_all(**method_params(cls))]
    if PRE_LLM(method):
        out.append(make(method.name, budget=tester.keep_all_budget(max(tester.full_tokens or (0,))), next_layout="hf"))
    return out


@pytest.mark.parametrize(("tester", "method"), cases())
def test_keep_all_reproduces_unpruned_generations(family_models, tester, method):
    model, processor = family_models(tester)
    for which in ((1,), (0, 1, 2)) if method.batched else ((1,),):
        batch = tester.batch(processor, which)
        questions = [QUESTIONS[i] for i in which]
        ref = generate(model, batch)
        for pruner in keep_all_pruners(tester, method):
            with pruner(model, tokenizer=processor.tokenizer, questions=questions):
                out = generate(model, batch)
            assert torch.equal(out, ref), f"{method.name} keep-all differs from the unpruned model (batch {len(which)})"
            stats = pruner.last_stats.samples
            assert [s.vision_tokens for s in stats] == [s.vision_tokens_full for s in stats]


# -- pre-LLM budgets -----------------------------------------------------------------------------------
def _prefill(model):
    """(width, real tokens per sample) of the first (prefill) call of the language model."""
    seen = []

    def hook(module, args, kwargs):
        if not seen:
            embeds, mask = kwargs["inputs_embeds"], kwargs.get("attention_mask")
            # no mask: HF dropped an all-ones one (no padding), every row is real
            real = [embeds.shape[1]] * embeds.shape[0] if mask is None else mask.sum(-1).tolist()
            seen.append((embeds.shape[1], real))

    return seen, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


def _budget_cases(tester, method):
    return [c for c in tester.budget_cases if "retain_ratio" not in c or method.cls.takes_ratio]


@pytest.mark.parametrize(("tester", "method", "params"), cases(PRE_LLM, _budget_cases))
def test_llm_receives_exactly_the_budget(family_models, tester, method, params):
    """Each sample alone and (batched methods) all three together: the LLM's prefill holds the text
    plus exactly the budgeted image tokens, and the reported counts and spans say so."""
    model, processor = family_models(tester)
    image_id = model.config.image_token_id
    groups = [(i,) for i in range(3)] + ([(0, 1, 2)] if method.batched else [])
    for which in groups:
        batch = tester.batch(processor, which)
        questions = [QUESTIONS[i] for i in which]
        n_text = ((batch["input_ids"] != image_id) & batch["attention_mask"].bool()).sum(-1).tolist()
        pruner = make(method.name, budget=params.get("budget"), retain_ratio=params.get("retain_ratio"))
        seen, handle = _prefill(model)
        try:
            with pruner(model, tokenizer=processor.tokenizer, questions=questions):
                generate(model, batch, max_new_tokens=2)
        finally:
            handle.remove()
        stats = pruner.last_stats.samples
        full = [s.vision_tokens_full for s in stats]
        if tester.full_tokens is not None:
            assert full == [tester.full_tokens[i] for i in which]
        want = [tester.expected_kept(params, processor, batch, b, n) for b, n in enumerate(full)]
        width, real = seen[0]
        assert real == [t + k for t, k in zip(n_text, want)], (method.name, params, which)
        assert width == max(real)
        assert [s.vision_tokens for s in stats] == want
        assert [len(s.kept_index) for s in stats if s.kept_index is not None] == [
            k for s, k in zip(stats, want) if s.kept_index is not None
        ]
        assert [span.length for span in pruner.request.spans] == want


# -- batches -------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("tester", "method"), cases(lambda m: m.batched and m.name != "none"))
def test_batch_equals_one_by_one(family_models, tester, method):
    model, processor = family_models(tester)
    pruner = method.build(tester)
    with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS):
        together = generate(model, tester.batch(processor))
        kept = [s.vision_tokens for s in pruner.last_stats.samples]
    eos = model.generation_config.eos_token_id
    for i, q in enumerate(QUESTIONS):
        with pruner(model, tokenizer=processor.tokenizer, questions=[q]):
            alone = generate(model, tester.batch(processor, (i,)))
        assert kept[i] == pruner.last_stats.samples[0].vision_tokens
        # the batched row is left-padded and padded again after its EOS: compare up to EOS
        assert until_eos(together[i], eos) == until_eos(alone[0], eos), (method.name, tester.model_type, i)


@pytest.mark.parametrize(("tester", "method"), cases(lambda m: not m.batched))
def test_batch_one_pruners_reject_batches(family_models, tester, method):
    model, processor = family_models(tester)
    name = method.name
    pruner = make(name, budget=64 * tester.max_crops)
    with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS):
        with pytest.raises(ValueError, match=f"pruner '{name}' supports batch size 1 only"):
            generate(model, tester.batch(processor))


# -- no side effects -----------------------------------------------------------------------------------
@pytest.mark.parametrize(("tester", "method"), cases())
def test_deterministic_and_model_unmodified(family_models, tester, method):
    model, processor = family_models(tester)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = lambda: [(n, list(m._forward_pre_hooks), list(m._forward_hooks)) for n, m in model.named_modules()]  # noqa: E731
    hooks_before = hooks()
    pruner = method.cls.keep_all(**method_params(method.cls)) if method.name == "none" else method.build(tester)
    for which in ((0,), (1,)):
        batch = tester.batch(processor, which)
        runs = []
        for _ in range(2):
            with pruner(model, tokenizer=processor.tokenizer, questions=[QUESTIONS[i] for i in which]):
                runs.append(generate(model, batch))
        assert torch.equal(runs[0], runs[1]), (method.name, which)
        assert "generate" not in vars(model)
    assert hooks() == hooks_before  # (transformers keeps output-capturing hooks of its own)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


@pytest.mark.parametrize("tester", [pytest.param(t, id=t.model_type) for t in TESTERS])
def test_pruning_changes_generations(family_models, tester):
    """Guard for the tests above: the tiny models are sensitive to which tokens are kept."""
    model, processor = family_models(tester)
    batch = tester.batch(processor, (0,))
    outs = set()
    for m in METHODS:
        if tester.applies(m.cls) and PRE_LLM(m):
            with make(m.name, budget=tester.budget(2))(model, tokenizer=processor.tokenizer, questions=QUESTIONS[:1]):
                outs.add(tuple(generate(model, batch)[0].tolist()))
    outs.add(tuple(generate(model, batch)[0].tolist()))
    assert len(outs) >= 3


# -- selection with k = n ------------------------------------------------------------------------------
def assert_selecting_every_token_is_identity(name, model, processor, tester: FamilyTester | None = None):
    """`select` with k = n keeps every index of every crop in order, and the assembled (HF
    layout) sequence is then exactly the unmodified model's image tokens. (The request path never
    calls `select` for k >= n, so keep-all generation tests alone would not exercise it.)"""
    from mmtok.models.adapters import adapter_for
    from mmtok.pruners import SampleContext
    from tests._tiny import images, inputs

    adapter = adapter_for(model)
    for i, q in enumerate(QUESTIONS):
        batch = tester.batch(processor, (i,)) if tester is not None else inputs(processor, [q], imgs=[images()[i]])
        image_inputs = {k: batch[k] for k in adapter.image_keys if k in batch}
        with torch.no_grad():
            probe = adapter.encode(batch["pixel_values"], **image_inputs)[0]
            n = probe.tokens_per_crop
            pruner = make(name, budget=n * adapter.max_crops())
            image = pruner.encode(adapter, batch["pixel_values"], **image_inputs)[0]  # tower signals too
            ids = batch["input_ids"][0]
            ctx = SampleContext(0, ids, q, processor.tokenizer, model.get_input_embeddings(), 0, adapter)
            sel = pruner.select(image, n, ctx)
            if sel.packed_indices is not None:  # global selection over the packed sequence
                assert sel.packed_indices.tolist() == list(range(adapter.full_length(image)))
            else:
                assert [t.tolist() for t in sel.indices] == [list(range(n))] * image.num_crops
            assert torch.equal(adapter.assemble(image, sel, "hf"), adapter.full_sequence(image))


@pytest.mark.parametrize(("tester", "method"), cases(lambda m: PRE_LLM(m) and not m.merges))
def test_selecting_every_token_is_identity(family_models, tester, method):
    """(merging methods: k = n is not the identity)"""
    assert_selecting_every_token_is_identity(method.name, *family_models(tester), tester)


# -- in-LLM schedules ----------------------------------------------------------------------------------
def _decoder_rows(model):
    """Rows each decoder layer receives in the first (prefill) pass, via forward pre-hooks."""
    layers = model.model.language_model.layers
    seen: dict[int, int] = {}

    def hook_for(i):
        def hook(module, args, kwargs):
            hidden = args[0] if args else kwargs["hidden_states"]
            seen.setdefault(i, hidden.shape[1])

        return hook

    handles = [layer.register_forward_pre_hook(hook_for(i), with_kwargs=True) for i, layer in enumerate(layers)]
    return seen, handles


@pytest.mark.parametrize(("tester", "method"), cases(lambda m: m.in_llm))
def test_in_llm_layers_receive_the_schedule(family_models, tester, method):
    """Every decoder layer's input holds exactly the vision tokens the method's schedule gives for
    the budget; the reported per-layer counts and equivalent tokens are those counts."""
    model, processor = family_models(tester)
    layers = model.config.text_config.num_hidden_layers
    for q in range(len(QUESTIONS)):
        batch = tester.batch(processor, (q,))
        n_text = int((batch["input_ids"] != model.config.image_token_id).sum())
        pruner = method.build(tester)
        seen, handles = _decoder_rows(model)
        try:
            with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS[q : q + 1]):
                generate(model, batch, max_new_tokens=2)
        finally:
            for h in handles:
                h.remove()
        stats = pruner.last_stats.samples[0]
        n = stats.vision_tokens_full
        counted = [seen[i] - n_text for i in range(layers)]
        assert counted == pruner.layer_schedule(n, model.config), (method.name, tester.model_type, q)
        assert counted[0] == n and counted[-1] < n, "the schedule must prune on the tiny models"
        assert stats.layer_vision_tokens == counted
        assert stats.equivalent_tokens == pytest.approx(sum(counted) / layers)
        assert stats.vision_tokens <= counted[-1]  # less if the last layer's output is pruned too


@pytest.mark.parametrize(("tester", "method"), cases(lambda m: m.in_llm))
def test_in_llm_schedule_follows_the_budget(family_models, tester, method):
    """A larger budget never keeps fewer tokens at any layer and keeps more in total; keep-all
    keeps the whole span at every layer."""
    model, _ = family_models(tester)
    config = model.config
    n = tester.keep_all_budget(max(tester.full_tokens or (0,)))
    small, large = method.build(tester, 16), method.build(tester, 24)
    s, big = small.layer_schedule(n, config), large.layer_schedule(n, config)
    assert all(b >= a for a, b in zip(s, big)) and sum(big) > sum(s), (method.name, s, big)
    assert method.cls.keep_all().layer_schedule(n, config) == [n] * config.text_config.num_hidden_layers
