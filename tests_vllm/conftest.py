"""Shared vLLM engines for the plugin's tests (run in .venv-vllm by `make test-vllm`; the main suite
does not collect this folder: its testpaths are tests/).

An engine starts in 30-60 s on a loaded 2-core machine, so every test shares two, one per session:
the pruned LLaVA (our architecture, model defaults set through hf_overrides, everything else per
request through mm_processor_kwargs) and vLLM's stock LLaVA (the unpruned reference). Both serve a
vLLM-ready copy of the committed testbed model (`mmtok.serving.checkpoint.vllm_ready`, written
under .cache/, the committed folder untouched). The HF references come from
tests_vllm/hf_reference.py, run with the main environment before the tests.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
REFERENCE_DIR = Path(os.environ.get("MMTOK_VLLM_REFERENCE", ROOT / ".cache" / "vllm-tests"))
MODEL = ROOT / "results" / "testbed" / "model"
# The pruned engine's model defaults (hf_overrides): a request without mmtok keys gets these.
DEFAULT_METHOD, DEFAULT_BUDGET = "divprune", 64

# vLLM's CPU backend on a shared machine; LLM.apply_model needs pickled functions.
os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", "1")
os.environ.setdefault("VLLM_CPU_OMP_THREADS_BIND", "nobind")
os.environ.setdefault("OMP_NUM_THREADS", "2")
os.environ.setdefault("VLLM_ALLOW_INSECURE_SERIALIZATION", "1")


@pytest.fixture(scope="session")
def reference() -> dict:
    path = REFERENCE_DIR / "reference.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `.venv/bin/python tests_vllm/hf_reference.py --out {REFERENCE_DIR}`")
    return json.loads(path.read_text())


def _engine(**hf_overrides):
    from vllm import LLM

    from mmtok.serving.checkpoint import vllm_ready

    return LLM(
        model=str(vllm_ready(MODEL, ROOT / ".cache" / "vllm-models")),
        enforce_eager=True,
        max_model_len=1024,
        limit_mm_per_prompt={"image": 1},
        dtype="float32",
        seed=0,
        hf_overrides=hf_overrides or None,
    )


@pytest.fixture(scope="session")
def pruned_llm():
    llm = _engine(
        architectures=["MMTokLlavaForConditionalGeneration"], mmtok_method=DEFAULT_METHOD, mmtok_budget=DEFAULT_BUDGET
    )
    yield llm
    llm.llm_engine.engine_core.shutdown()


@pytest.fixture(scope="session")
def stock_llm():
    llm = _engine()
    yield llm
    llm.llm_engine.engine_core.shutdown()


def fresh(llm) -> None:
    """Forget every cached prefix block and encoder output, so the next request computes its whole
    prompt and its image embedding: a test that reads the worker's selection, or compares numbers
    across engines, must not depend on what an earlier test left in the caches."""
    assert llm.reset_prefix_cache(), "a request is still running"
    llm.llm_engine.reset_encoder_cache()


def image(name: str):
    from PIL import Image

    with Image.open(REFERENCE_DIR / name) as im:
        return im.convert("RGB")


def request(case: dict, **mm_kwargs) -> dict:
    out = {"prompt": case["prompt"], "multi_modal_data": {"image": image(case["image"])}}
    if mm_kwargs:
        out["mm_processor_kwargs"] = mm_kwargs
    return out


def case_kwargs(case: dict) -> dict:
    """The mm_processor_kwargs that ask for the reference case's pruning."""
    if case["method"] is None:
        return {"mmtok_method": "none"}
    kwargs = {"mmtok_method": case["method"], "mmtok_budget": case["budget"]}
    if case["method"] == "mmtok":
        kwargs["mmtok_question"] = case["question"]
    return kwargs
