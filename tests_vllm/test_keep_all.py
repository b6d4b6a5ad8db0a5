"""Keeping every token is the unpruned model: the pruned architecture at k = n (method "none", and
each method at budget 576) gives vLLM's stock LLaVA's tokens and log-probabilities."""

from __future__ import annotations

import pytest
from conftest import request
from test_plugin import first_logprobs, sampling, tokens

KEEP_ALL = [
    {"mmtok_method": "none"},
    *({"mmtok_method": m, "mmtok_budget": 576} for m in ("divprune", "random", "visionzip", "vispruner")),
]


def test_keep_all_equals_stock_vllm(stock_llm, pruned_llm, reference):
    for case in (c for c in reference["cases"] if c["method"] is None):
        (stock,) = stock_llm.generate([request(case)], sampling(), use_tqdm=False)
        assert tokens(stock) == case["tokens"]  # and both equal the HF model's
        asks = [*KEEP_ALL, {"mmtok_method": "mmtok", "mmtok_budget": 576, "mmtok_question": case["question"]}]
        pruned = pruned_llm.generate([request(case, **kw) for kw in asks], sampling(), use_tqdm=False)
        for kw, out in zip(asks, pruned):
            assert out.prompt_token_ids == stock.prompt_token_ids, kw
            assert tokens(out) == tokens(stock), kw
            expected = first_logprobs(stock)
            got = first_logprobs(out)
            assert got.keys() == expected.keys(), kw
            for tok, lp in expected.items():
                assert got[tok] == pytest.approx(lp, abs=1e-5), kw
