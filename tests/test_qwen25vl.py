"""Qwen2.5-VL foundation: tiny checkpoint, the clean request path, pruned requests, MMTok's Qwen features.

Everything runs on a tiny random-weight Qwen2.5-VL built in code and reloaded with `from_pretrained`.
"""

from __future__ import annotations

import pytest
import torch

from mmtok.models.qwen2_5_vl import adapter as Q
from mmtok.models.qwen2_5_vl.tiny import Qwen25VLImageProcessor, build_tiny_qwen25vl, load_tiny_qwen25vl
from tests._tiny import QUESTIONS, images

# Merged grids 4x6, 3x5 and 5x7 (one LLM token = 16x16 pixels; windows of 2x2 tokens): odd sides
# leave partial windows, so the window order differs from raster order in every image.
SIZES = [(60, 90), (48, 80), (80, 112)]
MAX_NEW = 10


@pytest.fixture(scope="module")
def tiny_qwen(tmp_path_factory):
    path = build_tiny_qwen25vl(tmp_path_factory.mktemp("tiny-qwen25vl") / "ckpt")
    model, processor = load_tiny_qwen25vl(path)
    return model, processor


def _prompt(processor, question):
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}]
    return processor.apply_chat_template(conv, add_generation_prompt=True)


def _batch(processor, which=(0, 1, 2), sizes=SIZES):
    imgs = images(sizes)
    return processor(
        images=[imgs[i] for i in which],
        text=[_prompt(processor, QUESTIONS[i]) for i in which],
        return_tensors="pt",
        padding=True,
    )


def _native(model, batch):
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=MAX_NEW, do_sample=False)
    return out[:, batch["input_ids"].shape[1] :]


def _ours(model, request):
    with torch.no_grad():
        return Q.generate(model, request, max_new_tokens=MAX_NEW, do_sample=False)


def _until_eos(tokens, eos_ids):
    out = []
    for t in tokens.tolist():
        out.append(t)
        if t in eos_ids:
            break
    return out


def _eos(model):
    eos = model.generation_config.eos_token_id
    return set(eos if isinstance(eos, list) else [eos])


def _kept(counts, seed=0):
    """Per sample, a third of its image tokens (at least one), in scrambled order."""
    g = torch.Generator().manual_seed(seed)
    return [torch.randperm(n, generator=g)[: max(1, n // 3)] for n in counts]


# -- the checkpoint ---------------------------------------------------------------------------------


def test_tiny_checkpoint_reloads_with_qwen_layout(tiny_qwen, tmp_path):
    model, processor = tiny_qwen
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration"
    assert isinstance(processor, Qwen25VLImageProcessor) and not hasattr(processor, "video_processor")
    vision = model.config.vision_config
    assert vision.spatial_merge_size == 2 and list(vision.fullatt_block_indexes) == [1, 3] and vision.depth == 4
    tok = processor.tokenizer
    for special in ("<|vision_start|>", "<|image_pad|>", "<|vision_end|>", "<|im_start|>", "<|im_end|>"):
        assert tok.convert_tokens_to_ids(special) != tok.unk_token_id
        assert tok.convert_ids_to_tokens(tok(special)["input_ids"]) == [special]
    text = _prompt(processor, "Is there a cat?")
    assert text == (
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n<|im_start|>user\n"
        "<|vision_start|><|image_pad|><|vision_end|>Is there a cat?<|im_end|>\n<|im_start|>assistant\n"
    )
    batch = _batch(processor)
    assert batch["image_grid_thw"].tolist() == [[1, 8, 12], [1, 6, 10], [1, 10, 14]]
    assert (batch["input_ids"] == model.config.image_token_id).sum(-1).tolist() == [24, 15, 35]
    assert batch["mm_token_type_ids"].sum(-1).tolist() == [24, 15, 35]
    # the processor round-trips on its own (the stock Qwen2_5_VLProcessor would need torchvision)
    processor.save_pretrained(tmp_path)
    again = Qwen25VLImageProcessor.from_pretrained(tmp_path)
    assert again(images=images(SIZES[:1]), text=[text], return_tensors="pt")["image_grid_thw"].tolist() == [[1, 8, 12]]


def test_window_attention_reorders_the_test_images(tiny_qwen):
    model, processor = tiny_qwen
    grid = _batch(processor)["image_grid_thw"]
    index = Q.window_index(model, grid)
    assert sorted(index.tolist()) == list(range(24 + 15 + 35))
    first = index[:24].tolist()  # image 0: 4x6 tokens, 2x3 windows of 2x2
    assert first[:8] == [0, 1, 6, 7, 2, 3, 8, 9]
    second = index[24:39].tolist()  # image 1: 3x5 tokens; last window row and column are partial
    assert second != sorted(second)


# -- keep-all: the clean path equals native generate -----------------------------------------------


@pytest.mark.parametrize("which", [(0,), (1,), (2,), (0, 1, 2)])
def test_keep_all_equals_native_generate(tiny_qwen, which):
    model, processor = tiny_qwen
    batch = _batch(processor, which)
    native = _native(model, batch)
    with torch.no_grad():
        request = Q.build_request(model, batch)
    ours = _ours(model, request)
    eos = _eos(model)
    for n, o in zip(native, ours, strict=True):
        assert _until_eos(o, eos) == _until_eos(n, eos)
    if len(which) == 3:  # the comparison is not vacuous: samples differ and run several tokens
        assert len({tuple(_until_eos(n, eos)) for n in native}) == 3
        assert max(len(_until_eos(n, eos)) for n in native) >= 6


def test_keep_all_needs_mrope_positions(tiny_qwen):
    """Without the 3-row positions (the trap: M-RoPE silently off) generations change, so the test above can fail."""
    model, processor = tiny_qwen
    batch = _batch(processor)
    with torch.no_grad():
        request = Q.build_request(model, batch)
        flat = model.generate(
            inputs_embeds=request.inputs_embeds,
            attention_mask=request.attention_mask,
            max_new_tokens=MAX_NEW,
            do_sample=False,
        )
    assert flat.tolist() != _native(model, batch).tolist()


def test_build_request_requires_mm_token_type_ids(tiny_qwen):
    model, processor = tiny_qwen
    batch = dict(_batch(processor, (0,)))
    batch.pop("mm_token_type_ids")
    with pytest.raises(ValueError, match="mm_token_type_ids"):
        Q.build_request(model, batch)


# -- pruned requests ---------------------------------------------------------------------------------


def _reference(model, request, full, b, steps=MAX_NEW, next_position=None):
    """No-cache greedy: feed the kept tokens with their original positions, then each new token at the
    unpruned sequence's next positions (max original position + 1, + 1 per step)."""
    emb = model.get_input_embeddings()
    real = request.attention_mask[b].bool()
    embeds = request.inputs_embeds[b, real][None]
    pos = request.position_ids[:, b, real][:, None]
    start = int(full.position_ids[:, b][:, full.attention_mask[b].bool()].max()) + 1
    start = start if next_position is None else next_position
    out = []
    with torch.no_grad():
        for step in range(steps):
            token = int(model(inputs_embeds=embeds, position_ids=pos, use_cache=False).logits[0, -1].argmax())
            out.append(token)
            if token in _eos(model):
                break
            embeds = torch.cat([embeds, emb(torch.tensor([[token]]))], dim=1)
            pos = torch.cat([pos, torch.full((3, 1, 1), start + step)], dim=-1)
    return out


def test_pruned_request_keeps_original_positions(tiny_qwen):
    model, processor = tiny_qwen
    with torch.no_grad():
        full = Q.build_request(model, _batch(processor))
    kept = _kept(full.image_token_counts)
    pruned = Q.keep_image_tokens(full, kept)
    assert pruned.image_token_counts == [8, 5, 11]
    for b in range(3):
        real_full = full.attention_mask[b].bool()
        pos_full = full.position_ids[:, b, real_full]
        is_image = full.image_mask[b, real_full]
        image_pos = pos_full[:, is_image]
        expect = torch.cat([pos_full[:, ~is_image], image_pos[:, kept[b]]], dim=1)
        real = pruned.attention_mask[b].bool()
        got = pruned.position_ids[:, b, real]
        # same multiset of (t, h, w) columns, in sequence order
        as_set = sorted(map(tuple, expect.T.tolist()))
        assert sorted(map(tuple, got.T.tolist())) == as_set
        assert got[0].diff().ge(0).all()  # the temporal/text row never goes back: sequence order kept
        assert torch.equal(got[:, -6:], pos_full[:, -6:])  # the text after the image keeps its positions
        assert int(pruned.next_position[b]) == int(pos_full.max()) + 1
        # embeddings travel with their positions
        image_rows = full.inputs_embeds[b, real_full][is_image]
        got_image = pruned.inputs_embeds[b, real][pruned.image_mask[b, real]]
        assert torch.equal(got_image, image_rows[kept[b].sort().values])
    assert pruned.attention_mask[:, 0].tolist() == [0, 0, 1]  # left-padded again to the longest


def test_pruned_generation_equals_no_cache_reference(tiny_qwen):
    model, processor = tiny_qwen
    with torch.no_grad():
        full = Q.build_request(model, _batch(processor))
    pruned = Q.keep_image_tokens(full, _kept(full.image_token_counts))
    ours = _ours(model, pruned)
    eos = _eos(model)
    refs = [_reference(model, pruned, full, b) for b in range(3)]
    for b in range(3):
        assert _until_eos(ours[b], eos) == refs[b]
    assert max(len(r) for r in refs) >= 6
    # the image tokens matter: dropping two thirds of them changes what the model says
    keep_all = _ours(model, full)
    assert [_until_eos(k, eos) for k in keep_all] != refs
    # the decode offset matters: continuing at the pruned length instead of the unpruned position differs
    wrong = [_reference(model, pruned, full, b, next_position=int(pruned.attention_mask[b].sum())) for b in range(3)]
    assert wrong != refs


def test_pruned_batch_equals_one_by_one(tiny_qwen):
    model, processor = tiny_qwen
    with torch.no_grad():
        full = Q.build_request(model, _batch(processor))
    kept = _kept(full.image_token_counts, seed=1)
    batched = _ours(model, Q.keep_image_tokens(full, kept))
    eos = _eos(model)
    for b in range(3):
        with torch.no_grad():
            alone = Q.build_request(model, _batch(processor, (b,)))
        single = _ours(model, Q.keep_image_tokens(alone, [kept[b]]))
        assert _until_eos(batched[b], eos) == _until_eos(single[0], eos)


@pytest.mark.parametrize("fraction", [1, 3, 100])
def test_llm_receives_exactly_the_kept_image_tokens(tiny_qwen, fraction):
    model, processor = tiny_qwen
    with torch.no_grad():
        full = Q.build_request(model, _batch(processor))
        images_ = Q.encode_images(model, *(_batch(processor)[k] for k in ("pixel_values", "image_grid_thw")))
    counts = full.image_token_counts
    kept = [torch.arange(0, n, fraction) for n in counts]
    seen = []

    def hook(module, args, kwargs):
        if kwargs["past_key_values"] is None or kwargs["past_key_values"].get_seq_length() == 0:
            seen.append((kwargs["inputs_embeds"], kwargs["attention_mask"]))

    handle = model.model.language_model.register_forward_pre_hook(hook, with_kwargs=True)
    try:
        _ours(model, Q.keep_image_tokens(full, kept))
    finally:
        handle.remove()
    assert len(seen) == 1  # one prefill
    embeds, _ = seen[0]
    for b, image in enumerate(images_):
        # count prefill rows that are exactly one of this image's merged tokens
        rows = embeds[b]
        match = (rows[:, None, :] == image.merged[None]).all(-1)
        assert int(match.any(-1).sum()) == len(kept[b])
        assert match.any(0).nonzero().view(-1).tolist() == kept[b].tolist()


def test_keep_image_tokens_rejects_bad_indices(tiny_qwen):
    model, processor = tiny_qwen
    with torch.no_grad():
        full = Q.build_request(model, _batch(processor, (1,)))
    with pytest.raises(ValueError, match=r"\[0, 15\)"):
        Q.keep_image_tokens(full, [torch.tensor([0, 15])])
    with pytest.raises(ValueError, match="repeat"):
        Q.keep_image_tokens(full, [torch.tensor([2, 2])])
    with pytest.raises(ValueError, match="2 samples"):
        Q.keep_image_tokens(full, [torch.tensor([0]), torch.tensor([1])])


# -- MMTok's Qwen features ---------------------------------------------------------------------------


def _loop_window_order(grids, window):
    """Raster unit ids (over all images) in the order the tower's window attention visits them."""
    order, offset = [], 0
    for _, h, w in grids:
        for wr in range(0, h, window):
            for wc in range(0, w, window):
                for r in range(wr, min(wr + window, h)):
                    for c in range(wc, min(wc + window, w)):
                        order.append(offset + r * w + c)
        offset += h * w
    return order


def test_qwen_features_match_plain_loop(tiny_qwen):
    model, processor = tiny_qwen
    batch = _batch(processor)
    vis = model.model.visual
    captured = {}
    handle = vis.blocks[-1].register_forward_hook(lambda m, a, out: captured.__setitem__("last", out))
    try:
        with torch.no_grad():
            got = Q.encode_images(model, batch["pixel_values"], batch["image_grid_thw"])
            merger = [vis.merger]
    finally:
        handle.remove()
    hidden = captured["last"]  # [patches, D_vis] in window order
    window = vis.window_size // vis.spatial_merge_size // vis.patch_size
    grids = [(1, h // 2, w // 2) for _, h, w in batch["image_grid_thw"].tolist()]
    order = _loop_window_order(grids, window)
    assert order == Q.window_index(model, batch["image_grid_thw"]).tolist()
    assert order != sorted(order)
    offset = 0
    for image, (_, h, w) in zip(got, grids, strict=True):
        assert image.grid == (1, h, w) and image.num_tokens == h * w
        for u in range(h * w):
            p = order.index(offset + u)  # where raster unit u sits in the tower's sequence
            unit_rows = hidden[4 * p : 4 * p + 4]
            torch.testing.assert_close(image.vit[u], unit_rows.mean(0), rtol=0, atol=1e-6)
            with torch.no_grad():
                torch.testing.assert_close(image.merged[u], merger[0](unit_rows)[0], rtol=1e-5, atol=1e-5)
        offset += h * w
    # the merged tokens are exactly what the native model scatters into the LLM input
    with torch.no_grad():
        native = model.model.get_image_features(batch["pixel_values"], batch["image_grid_thw"]).pooler_output
    for image, ref in zip(got, native, strict=True):
        assert torch.equal(image.merged, ref)


def test_two_images_in_one_sample(tiny_qwen):
    """Kept indices run over all of a sample's image tokens in sequence order; keep-all equals native."""
    model, processor = tiny_qwen
    conv = [{"role": "user", "content": [{"type": "image"}, {"type": "image"}, {"type": "text", "text": QUESTIONS[1]}]}]
    imgs = images(SIZES)
    batch = processor(
        images=[imgs[0], imgs[1], imgs[2]],
        text=[processor.apply_chat_template(conv, add_generation_prompt=True), _prompt(processor, QUESTIONS[2])],
        return_tensors="pt",
        padding=True,
    )
    eos = _eos(model)
    with torch.no_grad():
        full = Q.build_request(model, batch)
    assert full.image_token_counts == [24 + 15, 35]
    native = _native(model, batch)
    ours = _ours(model, full)
    for n, o in zip(native, ours, strict=True):
        assert _until_eos(o, eos) == _until_eos(n, eos)
    kept = [torch.tensor([3, 23, 24, 38]), torch.tensor([0, 34])]  # both images of sample 0 keep tokens
    pruned = Q.keep_image_tokens(full, kept)
    got = _ours(model, pruned)
    for b in range(2):
        assert _until_eos(got[b], eos) == _reference(model, pruned, full, b)
    real = pruned.attention_mask[0].bool()
    image_pos = pruned.position_ids[:, 0, real][:, pruned.image_mask[0, real]]
    full_real = full.attention_mask[0].bool()
    full_image_pos = full.position_ids[:, 0, full_real][:, full.image_mask[0, full_real]]
    assert torch.equal(image_pos, full_image_pos[:, kept[0]])


def test_release_budget_and_text_rules(tiny_qwen):
    model, processor = tiny_qwen
    assert [Q.retain_count(n, 0.2) for n in (24, 17, 37, 4)] == [4, 3, 7, 0]  # products off integers
    assert Q.retain_count(35, 1.0) == 35
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        Q.retain_count(35, 0.0)
    tok = processor.tokenizer
    question = "Is there a cat in the image?\nAnswer the question using a single word or phrase."
    rows = Q.release_question_embeddings(model.get_input_embeddings(), tok, question)
    words = ["Question:", "Is", "there", "a", "cat", "in", "the", "image?", "Answer", "the", "question", "using"]
    words += ["a", "single", "word", "or", "phrase."]
    ids = [i for w in words for i in tok.encode(w, add_special_tokens=False)]
    assert torch.equal(rows, model.get_input_embeddings().weight[ids])


def test_pruning_to_zero_image_tokens_keeps_the_text(tiny_qwen):
    """k = 0 (the release drops every image token): the text keeps its positions and decoding still works."""
    model, processor = tiny_qwen
    with torch.no_grad():
        full = Q.build_request(model, _batch(processor))
    pruned = Q.keep_image_tokens(full, [torch.tensor([], dtype=torch.long)] * 3)
    assert pruned.image_token_counts == [0, 0, 0]
    got = _ours(model, pruned)
    for b in range(3):
        assert _until_eos(got[b], _eos(model)) == _reference(model, pruned, full, b)
