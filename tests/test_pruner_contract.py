"""One contract for every registered pruner, on tiny LLaVA-1.5 and LLaVA-NeXT checkpoints.

Keep-all identity, exact kept-token counts at the LLM input, batch == one-by-one, determinism,
an unmodified model afterwards. A new pruner is covered by adding it to the registry (and, if it
is in-LLM, saying below how to make it keep everything).
"""

from __future__ import annotations

import pytest
import torch

from mmtok.pruners import PRUNERS, build_pruner
from tests._tiny import QUESTIONS, generate, inputs

FAMILIES = ("llava", "llava_next")
TOKENS_PER_CROP = 36  # tiny tower: 48 px / 8 px patches
MAX_CROPS = {"llava": 1, "llava_next": 5}


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


def keep_all(name: str, family: str):
    """A pruner configured so that it keeps every vision token."""
    if name == "none":
        return build_pruner("none")
    if PRUNERS[name].in_llm:
        return build_pruner(name, budget=100_000)  # in-LLM: kept counts >= the image span
    # per-crop budget == crop size; "hf" layout = HF's own packing for LLaVA-NeXT
    return build_pruner(name, budget=TOKENS_PER_CROP * MAX_CROPS[family], next_layout="hf")


PRE_LLM = [n for n, c in PRUNERS.items() if not c.in_llm and n != "none"]
BATCHED = [n for n, c in PRUNERS.items() if c.supports_batch]


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
        full = [s["vision_tokens_full"] for s in pruner.last_stats["samples"]]
        assert [s["vision_tokens"] for s in pruner.last_stats["samples"]] == full


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
        pruner = build_pruner(name, budget=budget)
        seen, handle = _llm_input_lengths(model)
        try:
            with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS[q : q + 1]):
                generate(model, batch, max_new_tokens=2)
        finally:
            handle.remove()
        assert seen == [n_text + 8 * crops], (name, family, q)
        assert pruner.last_stats["samples"][0]["vision_tokens"] == 8 * crops
        assert pruner.request.spans[0].length == 8 * crops


def _img(i):
    from tests._tiny import images

    return [images()[i]]


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", [n for n in BATCHED if n != "none"])
def test_batch_equals_one_by_one(models, family, name):
    model, processor = models[family]
    budget = 8 * MAX_CROPS[family]
    pruner = build_pruner(name, budget=budget)
    batch = inputs(processor)
    with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS):
        together = generate(model, batch)
        kept = [s["vision_tokens"] for s in pruner.last_stats["samples"]]
    for i, q in enumerate(QUESTIONS):
        single = inputs(processor, [q], imgs=_img(i))
        with pruner(model, tokenizer=processor.tokenizer, questions=[q]):
            alone = generate(model, single)
        assert kept[i] == pruner.last_stats["samples"][0]["vision_tokens"]
        # the batched row is left-padded; compare the generated tokens only
        assert together[i].tolist() == alone[0].tolist(), (name, family, i)


@pytest.mark.parametrize("name", [n for n, c in PRUNERS.items() if not c.supports_batch])
def test_batch_one_pruners_reject_batches(models, name):
    model, processor = models["llava"]
    pruner = build_pruner(name, budget=64)
    with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS):
        with pytest.raises(ValueError, match=f"pruner '{name}' supports batch size 1 only"):
            generate(model, inputs(processor))


@pytest.mark.parametrize("name", [n for n in PRUNERS if n != "none"])
def test_deterministic_and_model_unmodified(models, name):
    model, processor = models["llava_next"]
    before = {k: v.clone() for k, v in model.state_dict().items()}
    hooks = lambda: [(n, list(m._forward_pre_hooks), list(m._forward_hooks)) for n, m in model.named_modules()]  # noqa: E731
    hooks_before = hooks()
    pruner = build_pruner(name, budget=40)
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
        with build_pruner(name, budget=2)(model, tokenizer=processor.tokenizer, questions=QUESTIONS[:1]):
            outs.add(tuple(generate(model, batch)[0].tolist()))
    outs.add(tuple(generate(model, batch)[0].tolist()))
    assert len(outs) >= 3


def assert_selecting_every_token_is_identity(name, model, processor):
    """`select` with k = n keeps every index of every crop in order, and the assembled (HF
    layout) sequence is then exactly the unmodified model's image tokens. (The request path never
    calls `select` for k >= n, so keep-all generation tests alone would not exercise it.)"""
    from mmtok.models.adapters import adapter_for
    from mmtok.pruners.base import SampleContext

    adapter = adapter_for(model)
    pruner = build_pruner(name, budget=TOKENS_PER_CROP * adapter.max_crops())
    for i, q in enumerate(QUESTIONS):
        batch = inputs(processor, [q], imgs=_img(i))
        with torch.no_grad():
            image = adapter.encode(batch["pixel_values"], batch.get("image_sizes"))[0]
            ids = batch["input_ids"][0]
            ctx = SampleContext(0, ids, q, processor.tokenizer, model.get_input_embeddings(), 0, adapter)
            sel = pruner.select(image, TOKENS_PER_CROP, ctx)
            if sel.packed_indices is not None:  # global selection over the packed sequence
                assert sel.packed_indices.tolist() == list(range(adapter.full_length(image)))
            else:
                assert [t.tolist() for t in sel.indices] == [list(range(TOKENS_PER_CROP))] * image.num_crops
            assert torch.equal(adapter.assemble(image, sel, "hf"), adapter.full_sequence(image))


SUBSET = [n for n in PRE_LLM if n != "visionzip"]  # visionzip merges: k = n is not the identity


@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("name", SUBSET)
def test_selecting_every_token_is_identity(models, family, name):
    assert_selecting_every_token_is_identity(name, *models[family])
