"""Accuracy through vLLM: scenes_pope with MMTok at 16 tokens gives our HF path's answers.

The 150 questions (tests_vllm/pope_reference.py: the prompts our HF path built, its answers, run
by `python run.py` defaults) go through the pruned engine in one batch, each with its question and
budget in mm_processor_kwargs; answers are cut and stripped as our lmms-eval wrapper does. The
answers are written for `pope_reference.py --score`, which computes both F1s with lmms-eval's scorer.
"""

from __future__ import annotations

import json

import pytest
from conftest import REFERENCE_DIR

MAX_NEW = 16  # run.py's max_new_tokens


@pytest.fixture(scope="module")
def pope():
    path = REFERENCE_DIR / "pope" / "cases.json"
    if not path.is_file():
        pytest.fail(f"{path} is missing: run `.venv/bin/python tests_vllm/pope_reference.py --out {REFERENCE_DIR}`")
    return json.loads(path.read_text())


def test_scenes_pope_answers_equal_hf(pruned_llm, pope):
    from PIL import Image
    from vllm import SamplingParams

    requests = []
    for case in pope["cases"]:
        with Image.open(REFERENCE_DIR / "pope" / case["image"]) as im:
            image = im.convert("RGB")
        kwargs = {"mmtok_method": pope["method"], "mmtok_budget": pope["budget"], "mmtok_question": case["question"]}
        requests.append({"prompt": case["prompt"], "multi_modal_data": {"image": image}, "mm_processor_kwargs": kwargs})
    outputs = pruned_llm.generate(requests, SamplingParams(temperature=0.0, max_tokens=MAX_NEW), use_tqdm=False)
    answers = {str(c["doc_id"]): out.outputs[0].text.strip() for c, out in zip(pope["cases"], outputs)}
    (REFERENCE_DIR / "pope" / "vllm_answers.json").write_text(json.dumps(answers, indent=1) + "\n")
    for case, out in zip(pope["cases"], outputs):
        assert len(out.prompt_token_ids) == case["text_tokens"] + pope["budget"], case["doc_id"]
    differ = [c["doc_id"] for c in pope["cases"] if answers[str(c["doc_id"])] != c["hf_answer"]]
    assert differ == []
