"""`evaluate()` through the real lmms-eval 0.7.3 on tiny real-HF LLaVA / LLaVA-NeXT checkpoints.

The tiny models get a one-token "yes" in their tokenizer and an LM head that can only say "yes" or
"no" (every other row zeroed, no-row = -yes-row): greedy decoding then answers yes or no depending
on the image and question, so POPE / MME / GQA metrics are non-trivial and can be recomputed here
by hand from the per-sample records.
"""

from __future__ import annotations

import re
import string
from dataclasses import dataclass

import pytest
import torch

from mmtok.data import build_dataset
from mmtok.eval.evaluate import evaluate
from mmtok.eval.protocol import RunProtocol
from mmtok.eval.wrapper import PrunedLM
from mmtok.models.llava.prompts import VICUNA_V1_SYSTEM
from mmtok.models.llava.tiny import build_tiny
from mmtok.pruners import build_pruner
from mmtok.pruners.random import RandomPruner
from tests._tiny import load

N = 12  # rows per testbed: 6 POPE images over the 3 splits, 4 GQA images, 6 MME pairs
BUDGET = 8
PERCEPTION = {"existence", "count", "position", "color"}


def yes_no_model(path, family):
    model, processor = load(path, family)
    tok = processor.tokenizer
    tok.add_tokens(["yes"])
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("\u2581no")
    with torch.no_grad():
        head = model.lm_head.weight
        w = head[yes].clone()
        head.zero_()
        head[yes], head[no] = w, -w
    return model.eval(), processor


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory):
    """Datasets' Arrow caches out of the user's home; one CPU thread: the tiny matmuls gain nothing
    from threads, and on a shared machine OpenMP threads spin-waiting slow them down 10-30x."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets")))
        yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def models(tmp_path_factory):
    root = tmp_path_factory.mktemp("tiny")
    return {f: yes_no_model(build_tiny(root / f, f), f) for f in ("llava", "llava_next")}


@pytest.fixture(scope="module")
def beds(tmp_path_factory):
    root = tmp_path_factory.mktemp("testbeds")
    return {b: build_dataset(root, b, n=N, seed=0) for b in ("pope", "gqa", "mme")}


def run(models, beds, family, bench, pruner, **kw):
    model, processor = models[family]
    tb = beds[bench]
    kw.setdefault("limit", None)
    kw.setdefault("max_new_tokens", 1)
    return evaluate(
        model,
        processor,
        pruner,
        tasks=[tb.task],
        include_path=str(tb.include_path),
        protocol=RunProtocol(progress=False, **kw),
    )


# -- hand recomputation of the metrics -------------------------------------------------------------
def f1(rows):
    tp = sum(s.answer == "yes" and s.target == "yes" for s in rows)
    fp = sum(s.answer == "yes" and s.target == "no" for s in rows)
    fn = sum(s.answer == "no" and s.target == "yes" for s in rows)
    p = tp / (tp + fp) if tp + fp else 0.0
    r = tp / (tp + fn) if tp + fn else 0.0
    return 2 * p * r / (p + r) if p + r else 0.0


def check_pope(out):
    by_split = {}
    for s in out.samples:
        by_split.setdefault(s.category, []).append(s)
    assert sorted(by_split) == ["adversarial", "popular", "random"]
    for split, rows in by_split.items():
        acc = sum(s.answer == s.target for s in rows) / len(rows)
        assert out.metrics[f"pope_{split}_acc"] == pytest.approx(acc)
        assert out.metrics[f"pope_{split}_f1"] == pytest.approx(f1(rows))
    assert out.metrics["pope_f1_avg"] == pytest.approx(sum(f1(r) for r in by_split.values()) / 3)
    assert out.metrics["pope_f1_pooled"] == pytest.approx(f1(out.samples))
    assert out.raw["mmtok_pope"]["pope_f1_score,none"] == pytest.approx(f1(out.samples))


def check_gqa(out):
    def norm(x):
        return re.sub(f"[{re.escape(string.punctuation)}]", "", x.lower())

    em = sum(norm(s.answer) == norm(s.target) for s in out.samples) / len(out.samples)
    assert out.metrics == {"gqa_exact_match": pytest.approx(em)}


def check_mme(out):
    per_cat = {}
    for s in out.samples:
        per_cat.setdefault(s.category, {}).setdefault(s.doc_id // 2, []).append(
            float(s.answer.lower() == s.target.lower())
        )
    scores = {
        cat: sum(100 * sum(v) / 2 + 100 * (sum(v) == 2) for v in pairs.values()) / len(pairs)
        for cat, pairs in per_cat.items()
    }
    perception = sum(v for c, v in scores.items() if c in PERCEPTION)
    cognition = sum(v for c, v in scores.items() if c not in PERCEPTION)
    assert out.metrics["mme_perception"] == pytest.approx(perception)
    assert out.metrics["mme_cognition"] == pytest.approx(cognition)
    assert out.metrics["mme_total"] == pytest.approx(perception + cognition)


CHECKS = {"pope": check_pope, "gqa": check_gqa, "mme": check_mme}


# -- end to end -----------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["llava", "llava_next"])
@pytest.mark.parametrize("bench", ["pope", "gqa", "mme"])
@pytest.mark.parametrize("method", ["none", "random"])
def test_evaluate_end_to_end(models, beds, family, bench, method):
    pruner = build_pruner("none") if method == "none" else build_pruner("random", budget=BUDGET)
    out = run(models, beds, family, bench, pruner, batch_size=2)
    assert len(out.samples) == N and sorted(s.doc_id for s in out.samples) == list(range(N))
    assert out.device == "cpu" and out.peak_memory_bytes is None and out.wall_s > 0
    answers = {s.answer for s in out.samples}
    assert answers <= {"yes", "no"}
    for s in out.samples:
        assert s.task == beds[bench].task and s.target is not None
        assert s.question.endswith("\nAnswer the question using a single word or phrase.")
        assert s.new_tokens == 1 and s.batch_size == 2 and s.equivalent_tokens is None
        if family == "llava":
            assert s.crops == 1 and s.vision_tokens_full == 36
        else:
            assert s.crops in (3, 5)  # base + 2 or 4 tiles
        # the budget rule: LLaVA keeps `budget`; NeXT keeps budget // 5 per crop actually present
        expected = (
            s.vision_tokens_full if method == "none" else (BUDGET if family == "llava" else BUDGET // 5 * s.crops)
        )
        assert s.vision_tokens == expected
        parts = [getattr(s, k) for k in ("vision_s", "select_s", "prefill_s", "decode_s")]
        assert all(p >= 0 for p in parts) and s.total_s >= sum(parts) > 0
        assert s.n_images == 1 and s.layer_vision_tokens is None  # pre-LLM: no per-layer list
        assert s.text_tokens > 0 and s.prefill_tokens == s.text_tokens + s.vision_tokens
    CHECKS[bench](out)


def test_answers_are_not_constant(models, beds):
    """Guard for the checks above: the yes/no model really depends on its input."""
    for family in ("llava", "llava_next"):
        out = run(models, beds, family, "pope", build_pruner("none"))
        assert {s.answer for s in out.samples} == {"yes", "no"}


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_batch_size_does_not_change_answers(models, beds, family):
    pruner = build_pruner("random", budget=BUDGET)
    one = run(models, beds, family, "pope", pruner, batch_size=1, max_new_tokens=4)
    three = run(models, beds, family, "pope", pruner, batch_size=3, max_new_tokens=4)
    assert {s.batch_size for s in one.samples} == {1} and {s.batch_size for s in three.samples} == {3}
    key = lambda out: {s.doc_id: (s.answer, s.vision_tokens) for s in out.samples}
    assert key(one) == key(three)
    assert any(" " in s.answer for s in one.samples)  # multi-token answers were compared


def test_limit_takes_the_first_docs(models, beds):
    out = run(models, beds, "llava", "pope", build_pruner("none"), limit=6)
    assert sorted(s.doc_id for s in out.samples) == list(range(6))
    assert {s.category for s in out.samples} == {"random", "popular", "adversarial"}
    with pytest.raises(
        ValueError, match=r"MME questions come in pairs \(acc\+ scores both\): limit must be even; got 5"
    ):
        run(models, beds, "llava", "mme", build_pruner("none"), limit=5)


@dataclass
class ExplodingPruner(RandomPruner):
    def select(self, image, k, ctx):
        raise RuntimeError("selection exploded")


@pytest.mark.parametrize("family", ["llava", "llava_next"])
def test_generation_error_propagates(models, beds, family):
    with pytest.raises(RuntimeError, match="selection exploded"):
        run(models, beds, family, "pope", ExplodingPruner(budget=BUDGET), limit=2)


def test_clean_keeps_the_model_for_another_evaluation(models, beds):
    from lmms_eval import evaluator

    from mmtok.eval.evaluate import task_manager

    model, processor = models["llava"]
    tb = beds["pope"]
    lm = PrunedLM(model, processor, build_pruner("none"), RunProtocol(max_new_tokens=1, progress=False))
    manager = task_manager(str(tb.include_path), [tb.task])
    answers = []
    for _ in range(2):  # the evaluator calls lm.clean() at the end of each run
        res = evaluator.simple_evaluate(model=lm, tasks=[tb.task], task_manager=manager, limit=4, bootstrap_iters=0)
        assert lm.model is model
        logged = {s["doc_id"]: s["filtered_resps"][0] for s in res["samples"][tb.task]}
        # what lmms-eval scored is what we recorded, request by request
        assert logged == {r.doc_id: r.answer for r in lm.records[-4:]}
        answers.append(logged)
    assert answers[0] == answers[1] and len(lm.records) == 8
    first = run(models, beds, "llava", "pope", build_pruner("none"))
    second = run(models, beds, "llava", "pope", build_pruner("none"))
    assert [s.answer for s in first.samples] == [s.answer for s in second.samples]


def test_only_generation_is_supported(models):
    model, processor = models["llava"]
    lm = PrunedLM(model, processor, build_pruner("none"))
    with pytest.raises(NotImplementedError, match="only generates"):
        lm.loglikelihood([])
    with pytest.raises(NotImplementedError, match="multi-round"):
        lm.generate_until_multi_round([])


def test_until_and_max_new_tokens_cap(models, beds):
    """The task's max_new_tokens is capped by ours and its `until` strings cut the answer."""
    from lmms_eval.api.instance import Instance

    model, processor = models["llava"]
    doc = {"image": beds_image(beds), "category": None}

    def answer(gen_kwargs, cap):
        lm = PrunedLM(model, processor, build_pruner("none"), RunProtocol(max_new_tokens=cap, progress=False))
        lm.task_dict = {"t": {"test": [doc]}}
        req = Instance(
            request_type="generate_until",
            arguments=("Is there a circle in the image?", gen_kwargs, lambda d: [d["image"]], 0, "t", "test"),
            idx=0,
            metadata={"task": "t", "doc_id": 0, "repeats": 1},
        )
        return lm.generate_until([req])[0], lm.records[0]

    full, rec = answer({"max_new_tokens": 50, "until": []}, cap=6)
    assert rec.new_tokens == 6 and len(full.split()) >= 2  # capped at 6 by us, not 50
    short, rec = answer({"max_new_tokens": 2, "until": []}, cap=6)
    assert rec.new_tokens == 2 and full.startswith(short)  # the task's smaller value wins; greedy
    stop = full.split()[1]
    cut, _ = answer({"max_new_tokens": 50, "until": [stop]}, cap=6)
    assert cut == full.split(stop)[0].strip() and stop not in cut


def beds_images(beds, n):
    import io

    import pyarrow.parquet as pq
    from PIL import Image

    rows = pq.read_table(beds["pope"].files[0], columns=["image"]).to_pydict()["image"][:n]
    return [Image.open(io.BytesIO(row["bytes"])).convert("RGB") for row in rows]


def beds_image(beds):
    return beds_images(beds, 1)[0]


def vision_tower_inputs(model):
    """A context manager collecting the pixel_values of every vision-tower call (a forward pre-hook)."""
    import contextlib

    @contextlib.contextmanager
    def hooked():
        seen = []

        def hook(module, args, kwargs):
            seen.append((args[0] if args else kwargs["pixel_values"]).detach().clone())

        handle = model.model.vision_tower.register_forward_pre_hook(hook, with_kwargs=True)
        try:
            yield seen
        finally:
            handle.remove()

    return hooked()


def test_prompt_format_and_padding_reach_the_model(models, beds):
    """vicuna_v1: the LLM's prompt length is exactly that of the system-prompt template; pad: the
    vision tower receives the processor's pixels of the image padded to a square with the mean colour."""
    from mmtok.models.llava.prompts import expand2square, mean_color

    model, processor = models["llava"]
    with vision_tower_inputs(model) as seen:
        out = run(
            models,
            beds,
            "llava",
            "pope",
            build_pruner("none"),
            limit=3,
            prompt_format="vicuna_v1",
            image_preprocess="pad",
        )
    for s in out.samples:
        text = f"{VICUNA_V1_SYSTEM} USER: <image>\n{s.question} ASSISTANT:"
        ids = processor.tokenizer(text)["input_ids"]  # "<image>" is one special token here
        assert s.prefill_tokens == len(ids) - 1 + 36
        assert s.text_tokens == len(ids) - 1  # the prompt without its image placeholder
    images = beds_images(beds, 3)  # limit=3: docs 0, 1, 2 (in any order: longest prompts first)
    padded = [
        processor(images=expand2square(im, mean_color(processor)), return_tensors="pt")["pixel_values"] for im in images
    ]
    cropped = [processor(images=im, return_tensors="pt")["pixel_values"] for im in images]
    assert len(seen) == 3 and all(t.shape == padded[0].shape for t in seen)
    # the tower saw each document's padded pixels and nothing else (documents may share an image)
    assert all(any(torch.equal(t, p) for p in padded) for t in seen)
    assert all(any(torch.equal(t, p) for t in seen) for p in padded)
    # guard: these images are not square, so centre-cropping them gives other pixels
    assert any(not torch.equal(c, p) for c, p in zip(cropped, padded))
    with vision_tower_inputs(model) as seen:
        hf = run(models, beds, "llava", "pope", build_pruner("none"), limit=3)
    for s in hf.samples:
        ids = processor.tokenizer(f"USER: <image>\n{s.question} ASSISTANT:")["input_ids"]
        assert s.prefill_tokens == len(ids) - 1 + 36
        assert s.text_tokens == len(ids) - 1
    assert len(seen) == 3 and all(any(torch.equal(t, c) for c in cropped) for t in seen)
    assert all(any(torch.equal(t, c) for t in seen) for c in cropped)


TWO_IMAGES = '''"""doc_to_visual for a test task: every POPE document with two images (its own, then a blank one)."""

from PIL import Image


def two_images(doc):
    image = doc["image"].convert("RGB")
    return [image, Image.new("RGB", image.size, (0, 0, 0))]
'''


def test_multi_image_documents_follow_the_policy(models, beds, tmp_path):
    """A task whose doc_to_visual returns two images: multi_image=error stops the evaluation with a
    message naming the option; multi_image=first answers every question from the first image."""
    from mmtok.data.tasks import write_task_yaml

    task = "mmtok_twoimg_pope"
    path = write_task_yaml(tmp_path, "pope", task=task, data_files=[str(beds["pope"].files[0])])
    (tmp_path / "mmtok_twoimg_utils.py").write_text(TWO_IMAGES)
    with open(path, "a") as f:
        f.write("doc_to_visual: !function mmtok_twoimg_utils.two_images\n")
    model, processor = models["llava"]

    def go(limit=None, **kw):
        return evaluate(
            model, processor, build_pruner("none"), tasks=[task], include_path=str(tmp_path),
            protocol=RunProtocol(limit=limit, max_new_tokens=1, progress=False, **kw)
        )  # fmt: skip

    with pytest.raises(ValueError, match=rf"^{task} doc \d+ has 2 images and the LLM takes one: set multi_image=first"):
        go()
    with pytest.raises(ValueError, match="has 2 images"):
        go(multi_image="error")
    with vision_tower_inputs(model) as seen:
        out = go(multi_image="first")
    assert sorted(s.doc_id for s in out.samples) == list(range(N))
    assert all(s.n_images == 2 and s.answer in ("yes", "no") for s in out.samples)
    assert len(seen) == N and not any(torch.equal(t.amax(dim=(-2, -1)), t.amin(dim=(-2, -1))) for t in seen)
    # the first image is the document's own: the same answers as the one-image task
    single = run(models, beds, "llava", "pope", build_pruner("none"))
    assert {s.doc_id: s.answer for s in out.samples} == {s.doc_id: s.answer for s in single.samples}
    assert {s.n_images for s in single.samples} == {1}
    with vision_tower_inputs(model) as seen:
        middle = go(multi_image="middle", limit=2)
    # index 2 // 2 = 1: the blank image (every channel constant after normalisation)
    assert len(seen) == 2 and all(torch.equal(t.amax(dim=(-2, -1)), t.amin(dim=(-2, -1))) for t in seen)
    assert [s.n_images for s in middle.samples] == [2, 2]
