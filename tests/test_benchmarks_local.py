"""MMStar and OCRBench: the local datasets in the hub formats, scored by lmms-eval 0.7.3's own task
functions through `evaluate` and `run.py`, the flat metrics the tables read, and MMStar's
post-prompt as MMTok's text cleaning sees it.

The scoring tests restrict a tiny LLaVA's LM head to a few answers (two option letters; the
OCRBench words), so the answers depend on image and question and the scores are neither all right
nor all wrong; each score is then recomputed here by hand from the per-sample records.
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch

from mmtok.data import build_dataset
from mmtok.data.mmstar import CATEGORIES
from mmtok.data.ocrbench import TYPES, WORDS
from mmtok.eval.evaluate import evaluate
from mmtok.eval.metrics import MMSTAR_METRICS, summarize
from mmtok.eval.protocol import RunProtocol
from mmtok.pruners import build_pruner
from mmtok.selection.text import clean_question
from tests._tiny import load

N = 24


@pytest.fixture(scope="module", autouse=True)
def environment(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("HF_DATASETS_CACHE", str(tmp_path_factory.mktemp("hf_datasets")))
        yield
    torch.set_num_threads(threads)


def restricted(path: Path, answers: list[str]):
    """The tiny LLaVA whose LM head can only emit `answers` (each one token; added when missing): the
    other rows are zeroed and the kept rows centred, so their logits sum to 0 and the largest is > 0."""
    model, processor = load(path, "llava")
    tok = processor.tokenizer
    tok.add_tokens([a for a in answers if tok.convert_tokens_to_ids(a) in (None, tok.unk_token_id)])
    model.resize_token_embeddings(len(tok), mean_resizing=False)
    ids = tok.convert_tokens_to_ids(answers)
    with torch.no_grad():
        head = model.lm_head.weight
        keep = head[ids].clone()
        head.zero_()
        head[ids] = keep - keep.mean(dim=0)
    return model.eval(), processor


def _rows(path: Path) -> dict[str, list]:
    return pq.read_table(path).to_pydict()


# -- the formats --------------------------------------------------------------------------------
def test_mmstar_format_and_categories_are_lmms_evals(tmp_path):
    from lmms_eval.tasks.mmstar.utils import eval_type_dict

    assert {k: tuple(v) for k, v in eval_type_dict.items()} == CATEGORIES
    tb = build_dataset(tmp_path, "mmstar", n=N, seed=0)
    t = pq.read_table(tb.files[0])
    assert t.column_names == ["index", "question", "image", "answer", "category", "l2_category", "meta_info"]
    assert str(t.schema.field("index").type) == "int64"
    assert t.schema.field("image").type.names == ["bytes", "path"]
    assert t.schema.field("meta_info").type.names == ["source", "split", "image_path"]
    rows = t.to_pydict()
    assert rows["index"] == list(range(N))
    assert rows["category"][:6] == list(CATEGORIES) and rows["category"][6:12] == list(CATEGORIES)
    coarse = [rows["l2_category"][i] for i in (0, 6, 12, 18)]
    assert coarse == [*CATEGORIES["coarse perception"], "image scene and topic"]
    assert set(rows["answer"]) == {"A", "B", "C", "D"}
    for question in rows["question"]:
        stem, options = question.split("\nOptions: ")
        letters = [o.split(": ", 1)[0] for o in options.split(", ")]
        values = [o.split(": ", 1)[1] for o in options.split(", ")]
        assert letters == ["A", "B", "C", "D"] and len(set(values)) == 4 and stem.endswith("?")
    first = rows["question"][0]  # a counting question: its true option is the number of shapes drawn
    assert first.startswith("How many shapes are in the image?")
    assert tb.task == "mmtok_mmstar" and "val:" in tb.yaml_path.read_text()


def test_ocrbench_format_and_types_are_lmms_evals(tmp_path):
    from lmms_eval.tasks.ocrbench.utils import OCRBench_score

    assert [t for t, _, _ in TYPES] == list(OCRBench_score)
    tb = build_dataset(tmp_path, "ocrbench", n=12, seed=0)
    t = pq.read_table(tb.files[0])
    assert t.column_names == ["dataset", "question", "question_type", "answer", "image"]
    assert str(t.schema.field("answer").type) == "list<element: string>"
    rows = t.to_pydict()
    assert rows["question_type"][:10] == [q for q, _, _ in TYPES] and rows["dataset"][9] == "HME100k"
    assert all(len(a) == 1 and a[0] for a in rows["answer"])
    assert rows["answer"][9][0].startswith("x = ") and rows["answer"][8][0].count(".") == 1


# -- lmms-eval's scoring, recomputed by hand ------------------------------------------------------
def test_mmstar_scored_by_lmms_eval(tiny_llava_path, tmp_path):
    tb = build_dataset(tmp_path, "mmstar", n=N, seed=0)
    model, processor = restricted(tiny_llava_path, ["A", "B"])
    out = evaluate(
        model, processor, build_pruner("random", budget=8), tasks=[tb.task], include_path=str(tb.include_path),
        protocol=RunProtocol(progress=False, max_new_tokens=1),
    )  # fmt: skip
    docs = _rows(tb.files[0])
    assert len(out.samples) == N and {s.answer for s in out.samples} == {"A", "B"}
    right = {s.doc_id: float(s.answer == s.target) for s in out.samples}
    assert 0 < sum(right.values()) < N
    by_l2 = defaultdict(list)
    for doc_id, ok in right.items():
        by_l2[(docs["category"][doc_id], docs["l2_category"][doc_id])].append(ok)
    l2_means = {k: sum(v) / len(v) for k, v in by_l2.items()}
    expected = {}
    for category in CATEGORIES:
        means = [m for (c, _), m in l2_means.items() if c == category]
        expected[MMSTAR_METRICS[category]] = sum(means) / len(means)
    expected["mmstar_average"] = sum(l2_means.values()) / len(l2_means)
    assert out.metrics == pytest.approx(expected)
    # with all 18 sub-categories present, lmms-eval's average is the mean of the 6 category scores
    six = [out.metrics[MMSTAR_METRICS[c]] for c in CATEGORIES]
    assert out.metrics["mmstar_average"] == pytest.approx(sum(six) / 6)


def test_ocrbench_scored_by_lmms_eval_and_twice_in_one_process(tiny_llava_path, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where lmms-eval would drop its report file
    tb = build_dataset(tmp_path, "ocrbench", n=20, seed=0)
    docs = _rows(tb.files[0])
    drawn = Counter(a[0].upper() for a in docs["answer"] if a[0].upper() in WORDS)
    model, processor = restricted(tiny_llava_path, [w for w, _ in drawn.most_common(2)])  # the 2 commonest words

    def once():
        return evaluate(
            model, processor, build_pruner("none"), tasks=[tb.task], include_path=str(tb.include_path),
            protocol=RunProtocol(progress=False, max_new_tokens=1),
        )  # fmt: skip

    first = once()
    right = [
        any(a.lower() in s.answer.lower() for a in docs["answer"][s.doc_id]) for s in first.samples
    ]  # lmms-eval's rule on these answers (no HME100k row can match a word)
    assert len(first.samples) == 20 and 0 < sum(right) < 20
    assert first.metrics == {"ocrbench_accuracy": pytest.approx(sum(right) / 1000)}
    # lmms-eval keeps running totals in its module; a second evaluation (the next cell of a job)
    # scores the same, not the sum of both
    assert once().metrics == first.metrics
    assert not (tmp_path / "results").exists()  # its report went to a temporary folder


def test_summaries_of_the_new_benchmarks():
    raw = {"mmstar": {"coarse perception,none": 0.5, "math,none": 0.25, "average,none": 0.4, "math_stderr,none": "N/A"}}
    assert summarize("mmstar", raw, []) == {"mmstar_coarse": 0.5, "mmstar_math": 0.25, "mmstar_average": 0.4}
    assert summarize("ocrbench", {"ocrbench": {"ocrbench_accuracy,none": 0.012}}, []) == {"ocrbench_accuracy": 0.012}
    with pytest.raises(ValueError, match="no ocrbench_accuracy"):
        summarize("ocrbench", {"ocrbench": {}}, [])


@pytest.mark.parametrize(
    ("bench", "metrics"),
    [("mmstar_local", sorted(MMSTAR_METRICS.values())), ("ocrbench_local", ["ocrbench_accuracy"])],
)
def test_run_py_on_the_local_benchmarks(run_cli, tmp_path, bench, metrics):
    args = ["model=tiny_llava", f"benchmark={bench}", "limit=12", "budget=8", "wandb.mode=disabled", "progress=false"]
    res = run_cli([*args, "results_dir=res"], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-2000:]
    (row_file,) = (tmp_path / "res").glob("runs/*/row.json")
    row = json.loads(row_file.read_text())
    assert row["status"] == "completed" and row["n_samples"] == 12 and row["benchmark"] == bench
    assert sorted(row["metrics_json"]) == metrics
    assert row["score_metric"] == ("ocrbench_accuracy" if bench == "ocrbench_local" else "mmstar_average")
    assert not (tmp_path / "results").exists()  # no stray lmms-eval report in the working folder


# -- MMStar's post-prompt and MMTok's text ---------------------------------------------------------
def test_mmstar_post_prompt_reaches_mmtoks_text_targets():
    """lmms-eval 0.7.3's MMStar post-prompt has no final period; MMTok's cleaning (as the authors'
    release) strips only the version with one, so its words stay among the text-vision targets."""
    from lmms_eval.tasks.mmstar.utils import mmstar_doc_to_text

    kwargs = {"pre_prompt": "", "post_prompt": "\nAnswer with the option's letter from the given choices directly"}
    doc = {"question": "How many shapes are in the image?\nOptions: A: 3, B: 2, C: 1, D: 4"}
    prompt = mmstar_doc_to_text(doc, kwargs)
    assert prompt.endswith("given choices directly")
    assert clean_question(prompt) == (
        "many shapes in image Options 3 B 2 C 1 D 4 option s letter given choices directly"
    )
    # the same question with the post-prompt other benchmarks use (with its period) loses it
    assert clean_question(prompt + ".") == "many shapes in image Options 3 B 2 C 1 D 4"
