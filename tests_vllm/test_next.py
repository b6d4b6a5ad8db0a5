"""LLaVA-NeXT with per-crop budgets: the pruned vLLM model against our HF path on a tiny
random-weight NeXT (tests_vllm/hf_reference.py `next_reference`: 36 tokens per crop, a wide image
that takes the base crop + a 2 x 2 tile grid, budgets 5 / 20 / 80 / 200 = 1 / 4 / 16 / all per crop)."""

from __future__ import annotations

import pytest
from conftest import REFERENCE_DIR, case_kwargs, fresh, request
from test_plugin import first_logprobs, label, sampling, tokens

from mmtok.serving.vllm_llava import take_selection

EXACT_ROWS = ("mmtok", "divprune", "random")


@pytest.fixture(scope="module")
def next_llm():
    from vllm import LLM

    from mmtok.serving.checkpoint import vllm_ready

    llm = LLM(
        model=str(vllm_ready(REFERENCE_DIR / "next-model", REFERENCE_DIR.parent / "vllm-models")),
        enforce_eager=True,
        max_model_len=1024,
        limit_mm_per_prompt={"image": 1},
        dtype="float32",
        seed=0,
        hf_overrides={"architectures": ["MMTokLlavaNextForConditionalGeneration"]},
        # the HF references come from the main env, which has no torchvision, so transformers takes
        # its PIL image processor there; here it would take the torchvision one, whose resizing
        # differs (up to 0.015 in the pixels of this non-square image): use the same backend
        mm_processor_kwargs={"backend": "pil"},
    )
    yield llm
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="module")
def next_runs(next_llm, reference):
    out = []
    for case in reference["next_cases"]:
        fresh(next_llm)
        (result,) = next_llm.generate([request(case, **case_kwargs(case))], sampling(), use_tqdm=False)
        (selection,) = next_llm.apply_model(take_selection)
        out.append((case, result, selection))
    return out


def test_next_kept_rows_equal_hf(next_runs):
    for case, _, selection in next_runs:
        ((method, rows),) = selection
        assert method == (case["method"] or "none"), label(case)
        if case["method"] in EXACT_ROWS:
            assert rows == case["kept_crops"], label(case)


def test_next_tokens_and_prompt_counts_equal_hf(next_runs):
    for case, result, _ in next_runs:
        assert len(result.prompt_token_ids) == case["text_tokens"] + case["vision_tokens"], label(case)
        assert tokens(result) == case["tokens"], label(case)
        if case["method"] == "vispruner" and case["budget"] < 180:
            continue  # rows up to rounding near-ties (test_plugin's docstring)
        got = first_logprobs(result)
        for tok, lp in zip(case["top_ids"], case["top_logprobs"]):
            assert got[tok] == pytest.approx(lp, abs=1e-3), label(case)


def test_next_budget_below_one_token_per_crop(next_llm, reference):
    case = reference["next_cases"][0]
    with pytest.raises(ValueError, match=r"^budget 4 is below one token per crop for llava_next \(5 crops\)"):
        next_llm.generate([request(case, mmtok_method="random", mmtok_budget=4)], sampling(), use_tqdm=False)
