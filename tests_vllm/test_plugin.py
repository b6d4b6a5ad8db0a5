"""The pruned vLLM LLaVA against our HF path on the committed testbed model (fp32, greedy).

Every reference case (tests_vllm/hf_reference.py: two scenes x {mmtok, divprune, random,
visionzip, vispruner} x budgets {4, 16, 64}, keep-all, and a second question on one scene) runs as
its own request on emptied caches; the model's selection is read back from the worker (`take_selection`).
Same kept rows -> same tokens.

Kept rows are compared exactly for MMTok, DivPrune and Random. VisPruner's rule sorts all 576
patches by CLS attention and splits the sorted list into even / odd positions: two patches whose
attention differs by float rounding swap places and change every later split. vLLM's tower (fused
qkv, its own attention kernel) reproduces HF's CLS attention to ~4e-9 and its features to ~5e-6,
not bit for bit, so VisPruner's rows match HF's only up to those near-ties (2-30 of k rows differ
on these scenes; the same happens between two HF devices); its tokens, like VisionZip's (merged,
no rows), are still compared with HF's (VisPruner: the greedy tokens; the others: the first
token's top log-probabilities too).

MMTok's and DivPrune's rows are compared exactly up to their saturation: on the trained testbed
both greedies saturate within a few picks (MMTok's later picks win by gains of ~1e-7; DivPrune's
spread over near-duplicate background patches), which vLLM's features decide as well as HF's. So
their `decided` picks (hf_reference.py: the steps no such rounding can move) must be kept, and the
whole kept set must reach HF's objective under HF's own matrix (MMTok's coverage to 1e-5 of it,
DivPrune's smallest pairwise distance to 1e-4); where the rows do differ, the tokens must still be
HF's and the first token's top log-probability too. Random's rows are compared exactly.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import DEFAULT_BUDGET, DEFAULT_METHOD, REFERENCE_DIR, case_kwargs, fresh, request

from mmtok.serving.vllm_llava import take_selection

MAX_NEW = 8
TOP = 5
EXACT_ROWS = ("random",)
SATURATING = ("mmtok", "divprune")


def sampling():
    from vllm import SamplingParams

    return SamplingParams(temperature=0.0, max_tokens=MAX_NEW, logprobs=TOP)


def first_logprobs(output) -> dict[int, float]:
    return {tok: lp.logprob for tok, lp in output.outputs[0].logprobs[0].items()}


def tokens(output) -> list[int]:
    return list(output.outputs[0].token_ids)


@pytest.fixture(scope="module")
def runs(pruned_llm, reference):
    """Each reference case alone, on emptied caches: (vLLM output, the worker's selection for it)."""
    out = []
    for case in reference["cases"]:
        fresh(pruned_llm)
        (result,) = pruned_llm.generate([request(case, **case_kwargs(case))], sampling(), use_tqdm=False)
        (selection,) = pruned_llm.apply_model(take_selection)
        out.append((case, result, selection))
    return out


def label(case: dict) -> str:
    return f"{case['image']} {case['method']}@{case['budget']} {case['question'][:30]!r}"


def test_every_method_and_budget_is_covered(reference):
    pairs = {(c["method"], c["budget"]) for c in reference["cases"] if c["method"]}
    assert pairs == {(m, b) for m in ("mmtok", "divprune", "random", "visionzip", "vispruner") for b in (4, 16, 64)}


def objective(case: dict, rows: list[int]) -> float:
    """The method's objective of `rows` under HF's matrix: MMTok's coverage, DivPrune's smallest
    pairwise cosine distance."""
    matrix = np.load(REFERENCE_DIR / case["objective_file"]).astype(np.float64)
    if case["method"] == "mmtok":
        return float(matrix[:, rows].max(axis=1).sum())
    sub = matrix[np.ix_(rows, rows)] + np.diag(np.full(len(rows), np.inf))
    return float(sub.min())


def test_kept_rows_equal_hf(runs):
    for case, _, selection in runs:
        assert len(selection) == 1, label(case)
        method, rows = selection[0]
        assert method == (case["method"] or "none"), label(case)
        if case["method"] in EXACT_ROWS or case["method"] is None:
            assert rows == (case["kept"] or list(range(576))), label(case)
        elif case["method"] in SATURATING:
            assert len(rows) == len(set(rows)) == case["budget"] and set(case["decided"]) <= set(rows), label(case)
            if rows != case["kept"]:
                ours, hf = (objective(case, r) for r in (rows, case["kept"]))
                assert abs(ours - hf) <= (1e-5 * hf if case["method"] == "mmtok" else 1e-4), (label(case), ours, hf)
        elif case["method"] == "vispruner":
            assert rows == sorted(set(rows)) and len(rows) == case["budget"], label(case)
        else:
            assert case["method"] == "visionzip" and rows is None, label(case)  # merged tokens have no rows


def test_saturating_methods_compare_their_decided_picks(reference):
    for method, count in (("mmtok", 7), ("divprune", 6)):
        cases = [c for c in reference["cases"] if c["method"] == method]
        decided = [len(c["decided"]) for c in cases]
        assert len(cases) == count and min(decided) >= 1, (method, decided)  # its picks before the first near-tie


def test_tokens_equal_hf(runs):
    for case, result, selection in runs:
        assert tokens(result) == case["tokens"], label(case)
        if case["method"] == "vispruner":
            continue  # other rows near rounding ties (module docstring): the logits differ, the tokens do not
        got = first_logprobs(result)
        same_rows = case["method"] not in SATURATING or selection[0][1] == case["kept"]
        for tok, lp in list(zip(case["top_ids"], case["top_logprobs"]))[: TOP if same_rows else 1]:
            assert tok in got, label(case)
            assert got[tok] == pytest.approx(lp, abs=1e-3), label(case)


def test_prompt_is_text_plus_kept_tokens(runs):
    for case, result, _ in runs:
        k = 576 if case["method"] is None else min(case["budget"], 576)
        assert case["vision_tokens"] == k
        assert len(result.prompt_token_ids) == case["text_tokens"] + k, label(case)


def test_per_request_budgets_and_methods_in_one_batch(pruned_llm, reference):
    cases = [c for c in reference["cases"] if c["image"] == "scene1.png"]
    assert len({(c["method"], c["budget"]) for c in cases}) == len(cases) > 10
    results = pruned_llm.generate([request(c, **case_kwargs(c)) for c in cases], sampling(), use_tqdm=False)
    for case, result in zip(cases, results):
        assert tokens(result) == case["tokens"], label(case)
        assert len(result.prompt_token_ids) == case["text_tokens"] + case["vision_tokens"], label(case)


def test_two_questions_on_one_image_get_two_selections(pruned_llm, runs):
    """The question is part of the image's cache key: the second question on the same image, sent
    right after the first with the caches kept, re-runs the selection (a reused encoder output
    would leave the worker with nothing to report, and the first question's rows in the prompt)."""
    first = next(r for r in runs if r[0]["image"] == "scene0.png" and r[0]["method"] == "mmtok" and r[0]["budget"] == 4)
    second = runs[-1]
    assert second[0]["method"] == "mmtok" and second[0]["budget"] == 4 and second[0]["image"] == "scene0.png"
    assert first[0]["question"] != second[0]["question"]
    assert first[0]["kept"] != second[0]["kept"]  # the reference itself selects differently
    fresh(pruned_llm)
    for case, _, _ in (first, second):
        (result,) = pruned_llm.generate([request(case, **case_kwargs(case))], sampling(), use_tqdm=False)
        (selection,) = pruned_llm.apply_model(take_selection)
        assert [(m, list(rows)) for m, rows in selection] == [("mmtok", case["kept"])], label(case)
        assert tokens(result) == case["tokens"], label(case)
    # the same request again is served from the caches: no selection runs, the answer is the same
    (again,) = pruned_llm.generate([request(second[0], **case_kwargs(second[0]))], sampling(), use_tqdm=False)
    assert pruned_llm.apply_model(take_selection) == [[]]  # the worker ran no selection
    assert tokens(again) == second[0]["tokens"]


def test_model_defaults_from_hf_overrides(pruned_llm, reference):
    """A request without mmtok keys gets the model's defaults (hf_overrides: divprune at 64)."""
    case = next(
        c
        for c in reference["cases"]
        if c["method"] == DEFAULT_METHOD and c["budget"] == DEFAULT_BUDGET and c["image"] == "scene0.png"
    )
    (result,) = pruned_llm.generate([request(case)], sampling(), use_tqdm=False)
    assert tokens(result) == case["tokens"]
    assert len(result.prompt_token_ids) == case["text_tokens"] + DEFAULT_BUDGET


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mmtok_method": "fastv", "mmtok_budget": 16}, r"^pruning method 'fastv' prunes inside the LLM's layers"),
        ({"mmtok_method": "dart", "mmtok_budget": 16}, r"^pruning method 'dart' prunes inside the LLM's layers"),
        ({"mmtok_method": "tome", "mmtok_budget": 16}, r"^unknown pruning method 'tome'; valid in vLLM: none, mmtok,"),
        ({"mmtok_method": "random", "mmtok_budget": 0}, r"^mmtok_budget must be an integer >= 1"),
        ({"mmtok_method": "random", "mmtok_budget": "16"}, r"^mmtok_budget must be an integer >= 1"),
        ({"mmtok_method": "mmtok", "mmtok_budget": 16}, r"^mmtok needs the question text"),
    ],
)
def test_one_line_errors(pruned_llm, reference, kwargs, message):
    case = reference["cases"][0]
    with pytest.raises(ValueError, match=message) as info:
        pruned_llm.generate([request(case, **kwargs)], sampling(), use_tqdm=False)
    assert "\n" not in str(info.value)
