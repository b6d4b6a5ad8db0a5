"""Keeping every token is the unpruned model: the pruned architecture at k = n (method "none", and
each method at budget 576) gives vLLM's stock LLaVA's tokens and log-probabilities.

Each request runs alone on caches emptied first, as the stock request does, so both engines run the
same shapes through the same kernels: on some CPUs vLLM's kernels round differently for a batch of
six prompts than for one (CI once saw a rank-5 log-probability move by 1.2e-3 between a batch of six
and a single request; on this machine the two agree bit for bit), and that is vLLM's batch
variance, not the pruning.
"""

from __future__ import annotations

import pytest
from conftest import fresh, request
from test_plugin import first_logprobs, sampling, tokens

KEEP_ALL = [
    {"mmtok_method": "none"},
    *({"mmtok_method": m, "mmtok_budget": 576} for m in ("divprune", "random", "visionzip", "vispruner")),
]


def alone(llm, req):
    fresh(llm)
    (out,) = llm.generate([req], sampling(), use_tqdm=False)
    return out


def test_keep_all_equals_stock_vllm(stock_llm, pruned_llm, reference):
    for case in (c for c in reference["cases"] if c["method"] is None):
        stock = alone(stock_llm, request(case))
        assert tokens(stock) == case["tokens"]  # and both equal the HF model's
        expected = first_logprobs(stock)
        asks = [*KEEP_ALL, {"mmtok_method": "mmtok", "mmtok_budget": 576, "mmtok_question": case["question"]}]
        for kw in asks:
            out = alone(pruned_llm, request(case, **kw))
            assert out.prompt_token_ids == stock.prompt_token_ids, kw
            assert tokens(out) == tokens(stock), kw
            got = first_logprobs(out)
            assert got.keys() == expected.keys(), kw
            for tok, lp in expected.items():
                assert got[tok] == pytest.approx(lp, abs=1e-5), kw
