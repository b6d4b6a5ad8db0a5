"""Evaluation-layer pieces that need no model: prompts, padding, FLOPs, metrics, testbeds, YAMLs."""

from __future__ import annotations

import pyarrow.parquet as pq
import pytest
from PIL import Image

from mmtok.data import build_dataset
from mmtok.data.local import COLORS, MME_CATEGORIES
from mmtok.data.tasks import write_task_yaml
from mmtok.eval.metrics import pope_split_metrics, summarize
from mmtok.eval.prompts import build_prompt, pick_image, preprocess_image
from mmtok.models.llava.prompts import VICUNA_V1_SYSTEM, expand2square, mean_color
from mmtok.models.llava.tiny import build_tiny
from mmtok.timing import layer_flops, peak_memory_bytes, prefill_flops, prefill_flops_per_layer
from tests._records import sample_record


@pytest.fixture(scope="module")
def processor(tmp_path_factory):
    from transformers import AutoProcessor

    return AutoProcessor.from_pretrained(build_tiny(tmp_path_factory.mktemp("tiny") / "l", "llava"))


# -- prompts / preprocessing -------------------------------------------------------------------
def test_prompt_formats_exact_strings(processor):
    q = "Is there a cat in the image?\nAnswer the question using a single word or phrase."
    assert build_prompt(processor, q, "hf", "llava") == f"USER: <image>\n{q} ASSISTANT:"
    assert build_prompt(processor, q, "vicuna_v1", "llava") == (
        "A chat between a curious human and an artificial intelligence assistant. The assistant gives "
        "helpful, detailed, and polite answers to the human's questions. USER: <image>\n"
        f"{q} ASSISTANT:"
    )
    assert VICUNA_V1_SYSTEM.endswith("questions.")


def test_prompt_errors(processor):
    with pytest.raises(ValueError, match="unknown prompt_format 'llama3'; valid: hf, vicuna_v1"):
        build_prompt(processor, "q", "llama3", "llava")
    with pytest.raises(ValueError, match="already contains the image placeholder"):
        build_prompt(processor, "<image>\nq", "hf", "llava")
    with pytest.raises(ValueError, match="unknown image_preprocess 'squash'"):
        preprocess_image(Image.new("RGB", (4, 4)), processor, "squash", "llava")


def test_pad_to_square_uses_the_mean_colour(processor):
    red = (200, 0, 0)
    wide = Image.new("RGB", (60, 30), red)
    padded = preprocess_image(wide, processor, "pad", "llava")
    mean = mean_color(processor)
    assert mean == (122, 116, 104)  # int(255 * CLIP mean), as the original LLaVA computes it
    assert padded.size == (60, 60)
    assert padded.getpixel((0, 0)) == mean and padded.getpixel((59, 59)) == mean  # padding rows
    assert padded.getpixel((30, 30)) == red and padded.getpixel((0, 15)) == red  # image centred
    assert padded.getpixel((0, 14)) == mean and padded.getpixel((0, 45)) == mean
    tall = expand2square(Image.new("RGB", (10, 31), red), mean)
    assert tall.size == (31, 31) and tall.getpixel((10, 5)) == red and tall.getpixel((9, 5)) == mean
    assert preprocess_image(wide, processor, "crop", "llava").size == (60, 30)  # crop: the processor decides
    square = Image.new("RGB", (20, 20), red)
    assert preprocess_image(square, processor, "pad", "llava").size == (20, 20)


def test_multi_image_policy_picks_one_image():
    images = [Image.new("RGB", (8, 8), c) for c in ("red", "green", "blue")]
    with pytest.raises(ValueError) as info:
        pick_image(images, "error", where="seedbench doc 7")
    msg = str(info.value)
    assert "\n" not in msg and msg.startswith("seedbench doc 7 has 3 images")
    assert "multi_image=first" in msg and "multi_image=middle" in msg
    assert pick_image(images, "first") is images[0]
    assert pick_image(images, "middle") is images[1]
    assert pick_image(images[:2], "middle") is images[1]  # index n // 2
    for policy in ("error", "first", "middle"):  # one image: the policy does not matter
        assert pick_image(images[2:], policy) is images[2]
    with pytest.raises(ValueError, match="unknown multi_image 'last'; valid: error, first, middle"):
        pick_image(images, "last")
    with pytest.raises(ValueError, match=r"doc 1: expected PIL images, got 2 visual\(s\) \(Image, str\)"):
        pick_image([images[0], "clip.mp4"], "first", where="doc 1")
    with pytest.raises(ValueError, match="got 0 visual"):
        pick_image([], "first")


# -- FLOPs / memory -----------------------------------------------------------------------------
def test_prefill_flops_hand_checked():
    from transformers import LlamaConfig, LlavaConfig

    text = LlamaConfig(
        vocab_size=100,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    # d=8, h=2, g=1, e=4, f=16, L=3, 2 layers, vocab 100
    # projections 2*3*(8*8 + 2*8*4 + 8*8) = 6*192 = 1152; MLP 2*3*3*8*16 = 2304
    # attention (full) 2*2*8*9 = 288 -> layer 3744, two layers 7488; LM head 2*8*100 = 1600
    assert prefill_flops(text, 3) == 7488 + 1600
    # causal: 3*4/2 = 6 pairs -> attention 2*2*8*6 = 192 -> (1152 + 2304 + 192) * 2 + 1600
    assert prefill_flops(text, 3, causal=True) == 7296 + 1600
    # a LLaVA config is read through its text_config
    assert prefill_flops(LlavaConfig(text_config=text.to_dict()), 3) == 9088
    with pytest.raises(ValueError, match="seq_len must be >= 1"):
        prefill_flops(text, 0)


def test_prefill_flops_per_layer_sums_the_layers():
    from transformers import LlamaConfig, LlavaConfig

    text = LlamaConfig(
        vocab_size=100,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    # one layer at L=3: 3744 (see above); at L=2: projections 2*2*192 = 768, MLP 2*2*3*8*16 = 1536,
    # attention 2*2*8*4 = 128 -> 2432; LM head 1600
    assert layer_flops(text, 3) == 3744 and layer_flops(text, 2) == 2432
    assert prefill_flops_per_layer(text, [3, 2]) == 3744 + 2432 + 1600
    assert prefill_flops_per_layer(text, [3, 3]) == prefill_flops(text, 3)
    assert prefill_flops_per_layer(LlavaConfig(text_config=text.to_dict()), [3, 2], causal=True) == (
        layer_flops(text, 3, causal=True) + layer_flops(text, 2, causal=True) + 1600
    )
    with pytest.raises(ValueError, match="seq_lens has 3 entries; the LLM has 2 decoder layers"):
        prefill_flops_per_layer(text, [3, 2, 1])


def test_peak_memory_is_none_on_cpu():
    assert peak_memory_bytes("cpu") is None


# -- metrics --------------------------------------------------------------------------------------
def _pope(doc_id, split, target, answer):
    return sample_record(doc_id=doc_id, category=split, target=target, answer=answer)


def test_pope_per_split_metrics_by_hand():
    samples = [
        # random: TP, TP, FP, TN -> precision 2/3, recall 1, F1 0.8, acc 0.75
        _pope(0, "random", "yes", "yes"),
        _pope(1, "random", "yes", "Yes"),
        _pope(2, "random", "no", "yes"),
        _pope(3, "random", "no", "no"),
        # popular: "Yes." is not an exact match (lmms-eval's rule): TP, miss, TN, TN
        _pope(4, "popular", "yes", "yes"),
        _pope(5, "popular", "yes", "Yes."),
        _pope(6, "popular", "no", "no"),
        _pope(7, "popular", "no", "no"),
        # adversarial: FN, FP -> F1 0
        _pope(8, "adversarial", "yes", "no"),
        _pope(9, "adversarial", "no", "yes"),
    ]
    m = pope_split_metrics(samples)
    assert m["pope_random_acc"] == 0.75 and m["pope_random_f1"] == pytest.approx(0.8)
    # popular: precision 1, recall 1/1 (the unparsable "yes." is neither yes nor no) -> F1 1, acc 3/4
    assert m["pope_popular_f1"] == pytest.approx(1.0) and m["pope_popular_acc"] == 0.75
    assert m["pope_adversarial_f1"] == 0 and m["pope_adversarial_acc"] == 0
    assert m["pope_f1_avg"] == pytest.approx((0.8 + 1.0 + 0.0) / 3)
    assert m["pope_random_n"] == 4 and m["pope_adversarial_n"] == 2


def test_summaries_from_raw_results():
    raw = {"mmtok_pope": {"pope_f1_score,none": 0.5, "pope_accuracy,none": 0.6, "pope_f1_score_stderr,none": "N/A"}}
    m = summarize("pope", raw, [_pope(0, "random", "yes", "yes")])
    assert m["pope_f1_pooled"] == 0.5 and m["pope_acc_pooled"] == 0.6 and m["pope_random_f1"] == 1.0
    assert summarize("gqa", {"g": {"exact_match,none": 0.25}}, []) == {"gqa_exact_match": 0.25}
    mme = summarize("mme", {"m": {"mme_perception_score,none": 300.0, "mme_cognition_score,none": 50.0}}, [])
    assert mme == {"mme_perception": 300.0, "mme_cognition": 50.0, "mme_total": 350.0}
    # no cognition question evaluated: no cognition score and no total (never a made-up 0)
    assert summarize("mme", {"m": {"mme_perception_score,none": 300.0}}, []) == {"mme_perception": 300.0}
    assert summarize(None, {"x": {"acc,none": 0.5, "acc_stderr,none": 0.1, "alias": "x"}}, []) == {"x_acc": 0.5}
    with pytest.raises(ValueError, match="exactly one task"):
        summarize("gqa", {"a": {}, "b": {}}, [])
    with pytest.raises(ValueError, match="no split category"):
        pope_split_metrics([_pope(0, None, "yes", "yes")])


# -- testbeds ---------------------------------------------------------------------------------------
def _table(path):
    return pq.read_table(path)


def test_testbeds_are_deterministic(tmp_path):
    for name in ("pope", "gqa", "mme"):
        a = build_dataset(tmp_path / "a", name, n=12, seed=3)
        b = build_dataset(tmp_path / "b", name, n=12, seed=3)
        c = build_dataset(tmp_path / "c", name, n=12, seed=4)
        for fa, fb, _fc in zip(a.files, b.files, c.files):
            assert _table(fa).equals(_table(fb))
        assert not _table(a.files[0]).equals(_table(c.files[0]))


def test_pope_format(tmp_path):
    tb = build_dataset(tmp_path, "pope", n=13, seed=0)
    t = _table(tb.files[0])
    assert t.column_names == ["id", "question_id", "question", "answer", "image_source", "image", "category"]
    assert str(t.schema.field("question_id").type) == "string"
    assert t.schema.field("image").type.names == ["bytes", "path"]  # HF Image feature
    rows = t.to_pydict()
    assert len(rows["id"]) == 13 and set(rows["answer"]) == {"yes", "no"}
    assert rows["category"][:6] == ["random", "random", "popular", "popular", "adversarial", "adversarial"]
    assert all(q.startswith("Is there a ") and q.endswith(" in the image?") for q in rows["question"])
    assert tb.task == "mmtok_pope" and tb.yaml_path.parent == tb.include_path


def test_gqa_format_and_true_answers(tmp_path):
    import io

    tb = build_dataset(tmp_path, "gqa", n=12, seed=0)
    inst, images = (_table(f).to_pydict() for f in tb.files)
    assert list(inst)[:5] == ["id", "imageId", "question", "answer", "fullAnswer"]
    assert {"isBalanced", "groups", "types", "semanticStr"} <= set(inst)
    assert list(images) == ["id", "image"]
    by_id = dict(zip(images["id"], images["image"]))
    assert set(inst["imageId"]) == set(by_id)
    checked = 0
    for question, answer, image_id in zip(inst["question"], inst["answer"], inst["imageId"]):
        if question.startswith("What color is the"):
            # the answer colour is really drawn in the image
            image = Image.open(io.BytesIO(by_id[image_id]["bytes"])).convert("RGB")
            assert COLORS[answer] in {c for _, c in image.getcolors(1 << 16)}
            checked += 1
    assert checked == 4


def test_mme_format_pairs(tmp_path):
    tb = build_dataset(tmp_path, "mme", n=24, seed=0)
    rows = _table(tb.files[0]).to_pydict()
    assert list(rows) == ["question_id", "image", "question", "answer", "category"]
    assert rows["answer"][:4] == ["Yes", "No", "Yes", "No"]
    for i in range(0, 24, 2):  # consecutive pairs on one image, one question id
        assert rows["question_id"][i] == rows["question_id"][i + 1]
        assert rows["image"][i] == rows["image"][i + 1]
        assert rows["question_id"][i].startswith(rows["category"][i] + "/")
    assert all(q.endswith(" Please answer yes or no.") for q in rows["question"])
    assert set(rows["category"]) == set(MME_CATEGORIES)
    with pytest.raises(ValueError, match="n must be even"):
        build_dataset(tmp_path, "mme", n=5)


def test_write_task_yaml(tmp_path):
    with pytest.raises(FileNotFoundError, match="pope data file missing.parquet not found"):
        write_task_yaml(tmp_path, "pope", data_files="missing.parquet")
    with pytest.raises(ValueError, match="unknown benchmark 'vqav2'; valid: pope, gqa, mme"):
        write_task_yaml(tmp_path, "vqav2")
    tb = build_dataset(tmp_path, "gqa", n=3)
    text = tb.yaml_path.read_text()
    assert "task: mmtok_gqa" in text and "process_docs: !function mmtok_gqa_utils.gqa_process_docs" in text
    assert (tmp_path / "mmtok_gqa_utils.py").is_file()
