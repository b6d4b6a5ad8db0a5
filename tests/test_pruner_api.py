"""Pruner construction errors, budget rules and the LLaVA-NeXT assembly layouts."""

from __future__ import annotations

import warnings

import pytest
import torch

from mmtok.models.adapters import CropSelection
from mmtok.models.llava.adapter import LlavaNextAdapter
from mmtok.pruners import PRUNERS, build_pruner
from tests._tiny import QUESTIONS, generate, images, inputs


@pytest.fixture(scope="module")
def next_model(tiny_models):
    return tiny_models["llava_next"]


def test_unknown_pruner_names_the_valid_choices():
    with pytest.raises(ValueError) as err:
        build_pruner("fastvv", budget=4)
    msg = str(err.value)
    assert msg.startswith("unknown pruner 'fastvv'; valid: ") and "\n" not in msg
    assert all(name in msg for name in PRUNERS)


@pytest.mark.parametrize("budget", [-1, -3, 2.5, True])
def test_bad_budget(budget):
    with pytest.raises(ValueError, match=r"budget must be an integer >= 0 \(0: text only; None keeps all\)"):
        build_pruner("random", budget=budget)


def test_unknown_parameter_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) tau for pruner 'mmtok'; valid: .*tau_t"):
        build_pruner("mmtok", budget=4, tau=0.1)


def test_none_takes_no_budget():
    with pytest.raises(ValueError, match="pruner 'none' takes no budget"):
        build_pruner("none", budget=4)


def test_unsupported_model_class():
    from transformers import LlamaConfig, LlamaForCausalLM

    model = LlamaForCausalLM(
        LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=8, num_hidden_layers=1, num_attention_heads=1)
    )
    with pytest.raises(
        TypeError,
        match="unsupported model class LlamaForCausalLM; valid: LlavaForConditionalGeneration, "
        "LlavaNextForConditionalGeneration",
    ):
        with build_pruner("random", budget=4)(model):
            pass


def test_next_budget_below_one_per_crop(next_model):
    model, processor = next_model
    with build_pruner("random", budget=4)(model):
        with pytest.raises(
            ValueError, match=r"budget 4 is below one token per crop for llava_next \(5 crops\); use budget >= 5"
        ):
            generate(model, inputs(processor, QUESTIONS[:1]))


def test_budget_above_crop_size_warns_and_keeps_all(next_model):
    model, processor = next_model
    batch = inputs(processor, QUESTIONS[:1])
    pruner = build_pruner("random", budget=5 * 37, next_layout="hf")
    with pytest.warns(UserWarning, match="per-crop budget 37 exceeds the 36 tokens of a crop; keeping all"):
        with pruner(model):
            out = generate(model, batch)
    assert torch.equal(out, generate(model, batch))


def test_mmtok_needs_questions(next_model):
    model, processor = next_model
    with build_pruner("mmtok", budget=40)(model):
        with pytest.raises(ValueError, match="mmtok needs each sample's question text and the tokenizer"):
            generate(model, inputs(processor, QUESTIONS[:1]))


def test_nested_application_is_refused(next_model):
    model, _ = next_model
    p = build_pruner("random", budget=40)
    with p(model):
        with pytest.raises(RuntimeError, match="already applied"):
            with p(model):
                pass
    assert "generate" not in vars(model)


# -- LLaVA-NeXT assembly -------------------------------------------------------------------------
def _image(model, processor, idx=0):
    adapter = LlavaNextAdapter(model)
    batch = processor(images=[images()[idx]], text=["<image>"], return_tensors="pt")
    with torch.no_grad():
        return adapter, adapter.encode(batch["pixel_values"], image_sizes=batch["image_sizes"])[0]


def test_hf_layout_keep_all_equals_hf_packing(next_model):
    model, processor = next_model
    for idx in range(3):
        adapter, image = _image(model, processor, idx)
        every = CropSelection(indices=[torch.arange(36)] * image.num_crops)
        batch = processor(images=[images()[idx]], text=["<image>"], return_tensors="pt")
        with torch.no_grad():
            got = adapter.assemble(image, every, "hf")
            ref = model.model.get_image_features(
                batch["pixel_values"], batch["image_sizes"], return_dict=True
            ).pooler_output[0]
        assert torch.equal(got, ref)


def test_paper_layout_is_base_then_stitched_raster(next_model):
    model, processor = next_model
    adapter, image = _image(model, processor, 0)
    rows, cols = image.grid
    assert image.num_crops == 1 + rows * cols
    # keep token 0 and the last token of every crop
    sel = CropSelection(indices=[torch.tensor([0, 35])] * image.num_crops)
    got = adapter.assemble(image, sel, "paper")
    side = 6
    expected = [image.proj[0, 0], image.proj[0, 35]]
    # stitched grid: tile (r, c) covers rows r*6.., cols c*6..; raster order over the big grid
    picks = []
    for tile in range(rows * cols):
        r, c = divmod(tile, cols)
        picks += [(r * side + 0, c * side + 0, tile, 0), (r * side + 5, c * side + 5, tile, 35)]
    for _y, _x, tile, tok in sorted(picks):
        expected.append(image.proj[1 + tile, tok])
    assert torch.equal(got, torch.stack(expected))


def test_hf_layout_drops_newlines_of_empty_rows(next_model):
    from transformers.models.llava_next.modeling_llava_next import unpad_image

    model, processor = next_model
    for idx in range(3):
        adapter, image = _image(model, processor, idx)
        # keep the first token of every crop: one kept token in the top row of each tile row
        sel = CropSelection(indices=[torch.tensor([0])] * image.num_crops)
        got = adapter.assemble(image, sel, "hf")
        rows, cols, side = *image.grid, 6
        # reference: mark kept tokens on the stitched grid, unpad it like HF, read rows in order
        ids = torch.full((1, rows * side, cols * side), -1.0)
        for tile in range(rows * cols):
            r, c = divmod(tile, cols)
            ids[0, r * side, c * side] = 1 + tile
        ids = unpad_image(ids, image.image_size)[0]
        expected = [image.proj[0, 0]]
        for row in ids:
            tiles = [int(t) for t in row if t >= 0]
            if tiles:
                expected += [image.proj[t, 0] for t in tiles] + [model.model.image_newline]
        assert torch.equal(got, torch.stack(expected).to(got.dtype)), idx


def test_random_seed_changes_the_subset_and_is_reproducible(next_model):
    model, processor = next_model
    adapter, image = _image(model, processor, 0)
    ctx = _ctx(adapter, model, processor, QUESTIONS[0])
    pick = lambda seed: [i.tolist() for i in build_pruner("random", budget=40, seed=seed).select(image, 8, ctx).indices]  # noqa: E731
    assert pick(0) == pick(0) and pick(0) != pick(1)
    assert all(len(i) == 8 and i == sorted(i) for i in pick(0))


def _ctx(adapter, model, processor, question):
    from mmtok.pruners import SampleContext

    ids = processor.tokenizer(question, return_tensors="pt").input_ids[0]
    return SampleContext(
        index=0,
        input_ids=ids,
        question=question,
        tokenizer=processor.tokenizer,
        embed_tokens=model.get_input_embeddings(),
        seed=0,
        adapter=adapter,
    )


def test_mmtok_wiring_uses_question_rows_projected_and_pre_projector_features(next_model):
    """The pruner's choice equals `mmtok_select` fed by hand: embedding-table rows of the cleaned
    question (no BOS), projected tokens, and CLIP hidden_states[-2] without CLS, per crop."""
    from mmtok.pruners.mmtok import mmtok_select

    model, processor = next_model
    adapter, image = _image(model, processor, 1)
    q = QUESTIONS[2]
    tok = processor.tokenizer
    words = "many people there A one B two C three D four".split()  # the quirk drops option "A"
    words.remove("A")
    ids = tok(words, is_split_into_words=True).input_ids
    assert ids[0] == tok.bos_token_id
    text = model.get_input_embeddings().weight[torch.tensor(ids[1:])]
    with torch.no_grad():
        tower = model.model.vision_tower(
            processor(images=[images()[1]], text=["<image>"], return_tensors="pt")["pixel_values"][0][
                : image.num_crops
            ],
            output_hidden_states=True,
        )
        pre = tower.hidden_states[-2][:, 1:]
        proj = model.model.multi_modal_projector(pre)
        expected = mmtok_select(text, proj, pre, 5)
        got = build_pruner("mmtok", budget=25).select(image, 5, _ctx(adapter, model, processor, q))
    assert [i.tolist() for i in got.indices] == expected.tolist()


def test_mmtok_with_an_empty_question_uses_the_image_term_only(next_model):
    from mmtok.pruners.mmtok import mmtok_select

    model, processor = next_model
    adapter, image = _image(model, processor, 0)
    got = build_pruner("mmtok", budget=25).select(image, 5, _ctx(adapter, model, processor, "<image>"))
    empty = model.get_input_embeddings().weight[:0]
    expected = mmtok_select(empty, image.proj, image.pre[:, 1:], 5)
    assert [i.tolist() for i in got.indices] == expected.tolist()


def test_max_length_counts_the_original_prompt(next_model):
    """HF measures max_length against the prompt it gets; pruned, that prompt is shorter. The
    request path converts it so `max_length` means the same with and without a pruner."""
    model, processor = next_model
    batch = inputs(processor, QUESTIONS[:1])
    length = batch["input_ids"].shape[1] + 4
    with torch.no_grad():
        ref = model.generate(**batch, max_length=length, do_sample=False)
        with build_pruner("random", budget=10)(model):
            out = model.generate(**batch, max_length=length, do_sample=False)
    assert ref.shape[1] == out.shape[1] == length


def test_paper_layout_keep_all_has_every_crop_token_and_grows_with_the_budget(next_model):
    model, processor = next_model
    batch = inputs(processor, QUESTIONS[:1])
    crops = batch["pixel_values"].shape[1]
    kept = []
    for budget in (5 * 35, 5 * 36, 5 * 40):
        pruner = build_pruner("random", budget=budget)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with pruner(model):
                generate(model, batch, max_new_tokens=1)
        kept.append(pruner.last_stats.samples[0].vision_tokens)
    assert kept == [35 * crops, 36 * crops, 36 * crops]


def test_in_llm_pruners_refuse_beam_search(next_model):
    model, processor = next_model
    with build_pruner("fastv", budget=100)(model):
        with pytest.raises(ValueError, match="pruner 'fastv' supports num_beams=1 and num_return_sequences=1 only"):
            model.generate(**inputs(processor, QUESTIONS[:1]), max_new_tokens=2, num_beams=2)


def test_check_config_needs_only_the_config(next_model):
    model, _ = next_model
    build_pruner("mmtok", budget=5).check_config(model.config)
    with pytest.raises(ValueError, match=r"budget 4 is below one token per crop for llava_next \(5 crops\)"):
        build_pruner("mmtok", budget=4).check_config(model.config)
    with pytest.raises(ValueError, match="fastv: layer K=20 must be below the LLM's 16 layers"):
        build_pruner("fastv", budget=100, layer=20).check_config(model.config)
