"""One contract for every registered pruner, on tiny LLaVA-1.5 and LLaVA-NeXT checkpoints.

Keep-all identity, exact kept-token counts at the LLM input (pre-LLM) or per decoder layer along the
method's schedule (in-LLM), batch == one-by-one, determinism, an unmodified model afterwards.

`METHODS` is the table that drives it (kvpress-style): every registered method with its default
parameters, its traits read from the class. A new method is covered by registering it; exclusions
go by declared trait (`in_llm`, `supports_batch`, `merges`), never by name. Parameters a method
needs from the test session go by declared field (`method_params`: a `clip_path` gets a tiny CLIP).
"""

from __future__ import annotations

from dataclasses import dataclass

import pytest
import torch

from mmtok.pruners import PRUNERS, build_pruner
from tests._tiny import QUESTIONS, generate, inputs, method_params

FAMILIES = ("llava", "llava_next")
TOKENS_PER_CROP = 36  # tiny tower: 48 px / 8 px patches
MAX_CROPS = {"llava": 1, "llava_next": 5}


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

    def build(self, family: str, per_crop: int | None = None):
        """Default parameters, `per_crop` tokens per crop of the family's largest split: 8 for
        pre-LLM methods; 16 for in-LLM ones, whose budget is a layer average (a staged method's
        first layers always see all 36 tokens of a tiny crop)."""
        per_crop = per_crop or (16 if self.in_llm else 8)
        return make(self.name, budget=per_crop * MAX_CROPS[family])


def make(name: str, budget: int | None, **params):
    """`build_pruner` with the defaults plus what the method needs from the session (`method_params`)."""
    return build_pruner(name, budget=budget, **{**method_params(PRUNERS[name]), **params})


METHODS = [Method(name, cls) for name, cls in PRUNERS.items()]
PRUNING = [m for m in METHODS if m.name != "none"]  # "none" has no budget to honour


def ids(methods):
    return [pytest.param(m, id=m.name) for m in methods]


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


def keep_all(name: str, family: str):
    """A pruner configured so that it keeps every vision token."""
    cls = PRUNERS[name]
    if name == "none" or cls.in_llm:
        return cls.keep_all(**method_params(cls))  # the method's own declaration of "keep everything"
    # per-crop budget == crop size; "hf" layout = HF's own packing for LLaVA-NeXT
    return make(name, budget=TOKENS_PER_CROP * MAX_CROPS[family], next_layout="hf")


PRE_LLM = [m.name for m in METHODS if not m.in_llm and m.name != "none"]
IN_LLM = [m for m in METHODS if m.in_llm]
BATCHED = [m.name for m in METHODS if m.batched]


def until_eos(tokens: torch.Tensor, eos) -> list[int]:
    """Generated ids up to and including the first EOS (padding after it is not the method's)."""
    stops = {eos} if isinstance(eos, int) else set(eos or ())
    out = []
    for t in tokens.tolist():
        out.append(t)
        if t in stops:
            break
    return out


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", list(PRUNERS))
def test_keep_all_reproduces_unpruned_generations(models, family, name):
    model, processor = models[family]
    sizes = [3] if name in BATCHED else [1]
    for b in sizes:
        batch = inputs(processor, QUESTIONS[:b])
        ref = generate(model, batch)
        pruner = keep_all(name, family)
        with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS[:b]):
            out = generate(model, batch)
        assert torch.equal(out, ref), f"{name} keep-all differs from the unpruned model (batch {b})"
        full = [s.vision_tokens_full for s in pruner.last_stats.samples]
        assert [s.vision_tokens for s in pruner.last_stats.samples] == full


def _llm_input_lengths(model):
    seen = []

    def hook(module, args, kwargs):
        emb = kwargs.get("inputs_embeds")
        if emb is not None and not seen:
            seen.append(emb.shape[1])

    return seen, model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", PRE_LLM)
def test_llm_receives_exactly_the_budget(models, family, name):
    model, processor = models[family]
    budget = 8 * MAX_CROPS[family]  # 8 tokens per crop
    for q in range(len(QUESTIONS)):
        batch = inputs(processor, QUESTIONS[q : q + 1], imgs=None if q == 0 else _img(q))
        n_text = int((batch["input_ids"] != model.config.image_token_id).sum())
        crops = 1 if family == "llava" else int(batch["pixel_values"].shape[1])
        pruner = make(name, budget=budget)
        seen, handle = _llm_input_lengths(model)
        try:
            with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS[q : q + 1]):
                generate(model, batch, max_new_tokens=2)
        finally:
            handle.remove()
        assert seen == [n_text + 8 * crops], (name, family, q)
        assert pruner.last_stats.samples[0].vision_tokens == 8 * crops
        assert pruner.request.spans[0].length == 8 * crops


def _img(i):
    from tests._tiny import images

    return [images()[i]]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", [n for n in BATCHED if n != "none"])
def test_batch_equals_one_by_one(models, family, name):
    model, processor = models[family]
    pruner = Method(name, PRUNERS[name]).build(family)
    batch = inputs(processor)
    with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS):
        together = generate(model, batch)
        kept = [s.vision_tokens for s in pruner.last_stats.samples]
    for i, q in enumerate(QUESTIONS):
        single = inputs(processor, [q], imgs=_img(i))
        with pruner(model, tokenizer=processor.tokenizer, questions=[q]):
            alone = generate(model, single)
        assert kept[i] == pruner.last_stats.samples[0].vision_tokens
        # the batched row is left-padded and padded again after its EOS: compare up to EOS
        eos = model.generation_config.eos_token_id
        assert until_eos(together[i], eos) == until_eos(alone[0], eos), (name, family, i)


@pytest.mark.parametrize("name", [n for n, c in PRUNERS.items() if not c.supports_batch])
def test_batch_one_pruners_reject_batches(models, name):
    model, processor = models["llava"]
    pruner = make(name, budget=64)
    with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS):
        with pytest.raises(ValueError, match=f"pruner '{name}' supports batch size 1 only"):
            generate(model, inputs(processor))


@pytest.mark.parametrize("name", [n for n in PRUNERS if n != "none"])
def test_deterministic_and_model_unmodified(models, name):
    model, processor = models["llava_next"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = lambda: [(n, list(m._forward_pre_hooks), list(m._forward_hooks)) for n, m in model.named_modules()]  # noqa: E731
    hooks_before = hooks()
    pruner = Method(name, PRUNERS[name]).build("llava_next")
    batch = inputs(processor, QUESTIONS[:1])
    runs = []
    for _ in range(2):
        with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS[:1]):
            runs.append(generate(model, batch))
    assert torch.equal(runs[0], runs[1])
    assert "generate" not in vars(model)
    assert hooks() == hooks_before  # (transformers keeps output-capturing hooks of its own)
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)


def test_pruning_changes_generations(models):
    """Guard for the tests above: the tiny models are sensitive to which tokens are kept."""
    model, processor = models["llava"]
    batch = inputs(processor, QUESTIONS[:1])
    outs = set()
    for name in PRE_LLM:
        with make(name, budget=2)(model, tokenizer=processor.tokenizer, questions=QUESTIONS[:1]):
            outs.add(tuple(generate(model, batch)[0].tolist()))
    outs.add(tuple(generate(model, batch)[0].tolist()))
    assert len(outs) >= 3


def assert_selecting_every_token_is_identity(name, model, processor):
    """`select` with k = n keeps every index of every crop in order, and the assembled (HF
    layout) sequence is then exactly the unmodified model's image tokens. (The request path never
    calls `select` for k >= n, so keep-all generation tests alone would not exercise it.)"""
    from mmtok.models.adapters import adapter_for
    from mmtok.pruners import SampleContext

    adapter = adapter_for(model)
    pruner = make(name, budget=TOKENS_PER_CROP * adapter.max_crops())
    for i, q in enumerate(QUESTIONS):
        batch = inputs(processor, [q], imgs=_img(i))
        with torch.no_grad():
            image = pruner.encode(adapter, batch["pixel_values"], image_sizes=batch.get("image_sizes"))[
                0
            ]  # tower signals too
            ids = batch["input_ids"][0]
            ctx = SampleContext(0, ids, q, processor.tokenizer, model.get_input_embeddings(), 0, adapter)
            sel = pruner.select(image, TOKENS_PER_CROP, ctx)
            if sel.packed_indices is not None:  # global selection over the packed sequence
                assert sel.packed_indices.tolist() == list(range(adapter.full_length(image)))
            else:
                assert [t.tolist() for t in sel.indices] == [list(range(TOKENS_PER_CROP))] * image.num_crops
            assert torch.equal(adapter.assemble(image, sel, "hf"), adapter.full_sequence(image))


SUBSET = [n for n in PRE_LLM if not PRUNERS[n].merges]  # merging methods: k = n is not the identity


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", SUBSET)
def test_selecting_every_token_is_identity(models, family, name):
    assert_selecting_every_token_is_identity(name, *models[family])


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


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ids(IN_LLM))
def test_in_llm_layers_receive_the_schedule(models, family, method):
    """Every decoder layer's input holds exactly the vision tokens the method's schedule gives for
    the budget; the reported per-layer counts and equivalent tokens are those counts."""
    model, processor = models[family]
    layers = model.config.text_config.num_hidden_layers
    for q in range(len(QUESTIONS)):
        batch = inputs(processor, QUESTIONS[q : q + 1], imgs=None if q == 0 else _img(q))
        n_text = int((batch["input_ids"] != model.config.image_token_id).sum())
        pruner = method.build(family)
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
        assert counted == pruner.layer_schedule(n, model.config), (method.name, family, q)
        assert counted[0] == n and counted[-1] < n, "the schedule must prune on the tiny models"
        assert stats.layer_vision_tokens == counted
        assert stats.equivalent_tokens == pytest.approx(sum(counted) / layers)
        assert stats.vision_tokens <= counted[-1]  # less if the last layer's output is pruned too


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("method", ids(IN_LLM))
def test_in_llm_schedule_follows_the_budget(models, family, method):
    """A larger budget never keeps fewer tokens at any layer and keeps more in total; keep-all
    keeps the whole span at every layer."""
    model, _ = models[family]
    config = model.config
    n = TOKENS_PER_CROP * MAX_CROPS[family]
    small, large = method.build(family, 16), method.build(family, 24)
    s, big = small.layer_schedule(n, config), large.layer_schedule(n, config)
    assert all(b >= a for a, b in zip(s, big)) and sum(big) > sum(s), (method.name, s, big)
    assert method.cls.keep_all().layer_schedule(n, config) == [n] * config.text_config.num_hidden_layers
