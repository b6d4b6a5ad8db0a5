"""The shared in-LLM machinery: row-restricted attention, the masks transformers 5.23 hands the
decoder layers, mask/position rewriting in prefill and decode, and clean hook removal."""

from __future__ import annotations

import pytest
import torch

from mmtok.pruners import attention_rows
from mmtok.pruners.fastv import FastVPruner
from mmtok.pruners.sparsevlm import SparseVLMPruner
from tests._tiny import QUESTIONS, generate, inputs

N = 36  # vision tokens of a tiny LLaVA-1.5 image


@pytest.fixture(scope="module")
def models(tiny_models):
    return tiny_models


def _capture(layer, store):
    """Forward pre-hook recording (hidden length, attention_mask, position_ids) of every call."""

    def hook(module, args, kwargs):
        store.append((args[0].shape[1], kwargs["attention_mask"], kwargs["position_ids"].clone()))

    return layer.register_forward_pre_hook(hook, with_kwargs=True)


# -- attention_rows against eager attention ---------------------------------------------------
def _tiny_llama(attn: str):
    from transformers import LlamaConfig, LlamaModel

    torch.manual_seed(0)
    cfg = LlamaConfig(
        vocab_size=50,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,  # grouped-query attention: key heads must be repeated
        initializer_range=0.5,
        attn_implementation=attn,
    )
    return LlamaModel(cfg).eval()


@pytest.mark.parametrize("attn,padded", [("sdpa", False), ("sdpa", True), ("eager", True)])
def test_attention_rows_equals_eager_probabilities(attn, padded):
    """None mask (SDPA, no padding), bool 4-D mask (SDPA, padding), additive float mask (eager)."""
    model = _tiny_llama(attn)
    reference = _tiny_llama("eager")
    reference.load_state_dict(model.state_dict())
    ids = torch.randint(0, 50, (2, 9), generator=torch.Generator().manual_seed(1))
    mask = torch.ones_like(ids)
    if padded:
        mask[0, :3] = 0
    captured = {}
    handle = model.layers[1].register_forward_pre_hook(
        lambda m, a, k: captured.update(hidden=a[0], **k), with_kwargs=True
    )
    with torch.no_grad():
        pos = (mask.cumsum(1) - 1).clamp(min=0)
        model(input_ids=ids, attention_mask=mask, position_ids=pos)
        ref = reference(input_ids=ids, attention_mask=mask, position_ids=pos, output_attentions=True).attentions[1]
    handle.remove()
    assert (captured["attention_mask"] is None) == (attn == "sdpa" and not padded)
    rows = torch.tensor([[8, 5], [8, 3]])
    got = attention_rows(
        model.layers[1], captured["hidden"], rows, captured["position_embeddings"], captured["attention_mask"]
    )
    expected = torch.stack([ref[b, :, rows[b]].mean(0) for b in range(2)])
    assert got.shape == (2, 2, 9)
    torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-4)


# -- what create_causal_mask gives the layers (the cases inllm.py follows) ----------------------
def test_transformers_masks_for_prefill_and_decode(models):
    model, processor = models["llava"]
    layer0 = model.model.language_model.layers[0]
    for questions, padded in ((QUESTIONS[:1], False), (QUESTIONS[:2], True)):
        batch = inputs(processor, questions)
        length = batch["input_ids"].shape[1]
        seen = []
        handle = _capture(layer0, seen)
        generate(model, batch, max_new_tokens=3)
        handle.remove()
        (p_len, p_mask, p_pos), (d_len, d_mask, d_pos) = seen[0], seen[1]
        assert p_len == length and d_len == 1
        valid = batch["attention_mask"].bool()
        if not padded:
            assert p_mask is None and d_mask is None
        else:
            causal = torch.ones(length, length, dtype=torch.bool).tril()
            assert p_mask.dtype == torch.bool and p_mask.shape == (2, 1, length, length)
            assert torch.equal(p_mask, causal[None, None] & valid[:, None, None, :])
            assert d_mask.shape == (2, 1, 1, length + 1)
            assert torch.equal(d_mask[:, 0, 0, :length], valid) and bool(d_mask[..., length:].all())
        # positions come from the attention mask and keep counting in decode
        assert torch.equal(p_pos, (valid.long().cumsum(1) - 1).clamp(min=0))
        assert torch.equal(d_pos[:, 0], valid.sum(1))


# -- rewriting in decode: masks sliced to the pruned cache ------------------------------------
def test_decode_masks_follow_the_pruned_cache(models):
    model, processor = models["llava"]
    layers = model.model.language_model.layers
    batch = inputs(processor, QUESTIONS[:2])  # left padding: 4-D masks in prefill and decode
    length = batch["input_ids"].shape[1]
    full, pruned = [], []
    pruner = FastVPruner(budget=6, budget_mode="kept")
    with pruner(model, tokenizer=processor.tokenizer):
        handles = [_capture(layers[1], full), _capture(layers[2], pruned)]
        generate(model, batch, max_new_tokens=3)
        for h in handles:
            h.remove()
    kept_len = length - N + 6
    assert [s[0] for s in pruned] == [kept_len, 1, 1]
    valid = batch["attention_mask"].bool()
    for step in (1, 2):
        mask = pruned[step][1]
        assert mask.shape == (2, 1, 1, kept_len + step)
        columns = _kept_columns(pruner, model.config.image_token_id, batch, length, step)
        assert torch.equal(mask, torch.gather(full[step][1], 3, columns))
        # padding stays masked, every kept token and every generated token stays visible
        assert int(mask[:, 0, 0].sum(1)[0]) == kept_len + step - int((~valid[0]).sum())
    # a prefill row of the shortened sequence is the causal row over kept real tokens
    assert pruned[0][1].shape == (2, 1, kept_len, kept_len)


def _kept_columns(pruner, image_id, batch, length, step):
    """Per sample, the original key columns the pruned layers keep (prompt kept rows + new)."""
    cols = []
    for b in range(batch["input_ids"].shape[0]):
        start = int((batch["input_ids"][b] == image_id).nonzero()[0])
        keep = pruner.last_trace[0].keep[b]
        cols.append(torch.cat([torch.arange(start), start + keep, torch.arange(start + N, length + step)]))
    return torch.stack(cols)[:, None, None, :]


def test_eager_model_gets_additive_masks_and_same_tokens(models, tiny_llava_eager):
    """The rewritten masks follow the model's mask style (additive float under eager)."""

    model, processor = models["llava"]
    eager = tiny_llava_eager
    batch = inputs(processor, QUESTIONS[:2])
    outs = []
    for m in (model, eager):
        with FastVPruner(budget=6, budget_mode="kept")(m, tokenizer=processor.tokenizer):
            outs.append(generate(m, batch, max_new_tokens=4))
    assert torch.equal(outs[0], outs[1])


# -- the pass detection: only our image requests are touched -----------------------------------
def test_text_only_generate_inside_the_block_is_untouched(models):
    model, processor = models["llava"]
    text = processor.tokenizer(["USER: what color is the sky? ASSISTANT:"], return_tensors="pt")
    ref = model.generate(**text, max_new_tokens=4, do_sample=False)
    image_batch = inputs(processor, QUESTIONS[:1])
    with FastVPruner(budget=4, budget_mode="kept")(model, tokenizer=processor.tokenizer):
        generate(model, image_batch)  # leaves a consumed request behind
        out = model.generate(**text, max_new_tokens=4, do_sample=False)
    assert torch.equal(out, ref)


@pytest.mark.parametrize(
    "pruner",
    [FastVPruner(budget=4, budget_mode="kept"), SparseVLMPruner(counts=(10, 5, 2))],
    ids=["fastv", "sparsevlm"],
)
def test_no_hooks_left_after_the_block(models, pruner):
    model, processor = models["llava"]
    layers = model.model.language_model.layers
    forward_hooks = [list(layer._forward_hooks) for layer in layers]  # transformers' own, if any
    with pruner(model, tokenizer=processor.tokenizer):
        assert layers[0]._forward_pre_hooks and layers[-1]._forward_pre_hooks
        generate(model, inputs(processor, QUESTIONS[:1]))
    assert "generate" not in vars(model)
    assert all(not layer._forward_pre_hooks for layer in layers)
    assert [list(layer._forward_hooks) for layer in layers] == forward_hooks
    with pytest.raises(RuntimeError, match="boom"), pruner(model, tokenizer=processor.tokenizer):
        raise RuntimeError("boom")  # hooks go also when the block raises
    assert "generate" not in vars(model)
    assert all(not layer._forward_pre_hooks for layer in layers)
    assert [list(layer._forward_hooks) for layer in layers] == forward_hooks
