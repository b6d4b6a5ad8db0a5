"""scenes_pope through vLLM vs our HF path: the references, and the F1 of both.

    .venv/bin/python tests_vllm/pope_reference.py --out .cache/vllm-tests          # references
    .venv/bin/python tests_vllm/pope_reference.py --out .cache/vllm-tests --score  # after the vLLM test

Runs in the MAIN environment. Without --score: `python run.py` with its defaults (the testbed
LLaVA, MMTok at 16 tokens, scenes_pope, 150 questions, batch 1, greedy, 16 new tokens), then
writes `pope/cases.json` (per question: the prompt our HF path built, the question MMTok saw, the
target, the POPE split, the HF answer) and each image as a PNG. tests_vllm/test_pope.py answers
the same prompts through vLLM with mmtok@16 and writes `pope/vllm_answers.json`. --score computes
POPE F1 (lmms-eval's scorer, `mmtok.eval.metrics.pope_split_metrics`) for both and fails unless
they are equal.
"""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import io
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BUDGET = 16
METHOD = "mmtok"


def _hf_path_sources():
    """mmtok's sources except the vLLM plugin (the HF references do not depend on it)."""
    return (p for p in (ROOT / "mmtok").rglob("*.py") if "serving" not in p.relative_to(ROOT).parts)


def inputs_digest() -> str:
    """This script, the testbed model and mmtok/: what the HF answers depend on."""
    h = hashlib.sha256()
    model = ROOT / "results" / "testbed" / "model"
    for path in [Path(__file__), *sorted(model.iterdir()), *sorted(_hf_path_sources())]:
        if path.is_file():
            h.update(str(path.relative_to(ROOT)).encode())
            h.update(path.read_bytes())
    return h.hexdigest()


def build(out: Path) -> int:
    pope = out / "pope"
    digest = inputs_digest()
    if (pope / "cases.json").is_file() and json.loads((pope / "cases.json").read_text()).get("inputs_sha256") == digest:
        print(f"{pope / 'cases.json'} is current")
        return 0
    results = out / "hf-results"
    cmd = [
        sys.executable, str(ROOT / "run.py"), f"results_dir={results}", f"cache_dir={out / 'cache'}",
        "wandb.mode=disabled", "progress=false", f"pruner={METHOD}", f"budget={BUDGET}",
        "benchmark=scenes_pope", "model=testbed_llava", "batch_size=1", "max_new_tokens=16", "force=true",
    ]  # fmt: skip
    subprocess.run(cmd, check=True, cwd=ROOT)
    (run_dir,) = sorted((results / "runs").iterdir())[-1:]  # force=true: this run is the newest
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines() if line]

    import pandas as pd
    from PIL import Image
    from transformers import AutoProcessor

    from mmtok.eval.prompts import build_prompt

    (parquet,) = (out / "cache" / "testbed").glob("scenes_pope-*/*.parquet")
    table = pd.read_parquet(parquet)
    processor = AutoProcessor.from_pretrained(ROOT / "results" / "testbed" / "model")
    (pope / "images").mkdir(parents=True, exist_ok=True)
    cases = []
    for s in sorted(samples, key=lambda s: s["doc_id"]):
        row = table.iloc[s["doc_id"]]
        assert row["question"] in s["question"], (row["question"], s["question"])
        image = Image.open(io.BytesIO(row["image"]["bytes"])).convert("RGB")
        name = f"images/{s['doc_id']:04d}.png"
        image.save(pope / name)
        cases.append(
            {
                "doc_id": s["doc_id"],
                "image": name,
                "question": s["question"],
                "prompt": build_prompt(processor, s["question"], "hf", "llava"),
                "target": s["target"],
                "category": s["category"],
                "hf_answer": s["answer"],
                "text_tokens": s["text_tokens"],
                "hf_sample": s,  # the HF run's whole record, scored again with vLLM's answer
            }
        )
    metrics = json.loads((run_dir / "metrics.json").read_text())
    meta = {"inputs_sha256": digest, "method": METHOD, "budget": BUDGET, "hf_pope_f1_avg": metrics["pope_f1_avg"]}
    (pope / "cases.json").write_text(json.dumps({**meta, "cases": cases}, indent=1) + "\n")
    print(f"wrote {pope / 'cases.json'}: {len(cases)} questions, HF pope_f1_avg {metrics['pope_f1_avg']:.4f}")
    return 0


def score(out: Path) -> int:
    from mmtok.eval.metrics import pope_split_metrics
    from mmtok.eval.records import SampleRecord

    pope = out / "pope"
    ref = json.loads((pope / "cases.json").read_text())
    answers = json.loads((pope / "vllm_answers.json").read_text())
    cases = ref["cases"]
    records = [SampleRecord(**c["hf_sample"]) for c in cases]
    hf = pope_split_metrics(records)
    vllm = pope_split_metrics([dataclasses.replace(r, answer=answers[str(r.doc_id)]) for r in records])
    same = sum(answers[str(c["doc_id"])] == c["hf_answer"] for c in cases)
    print(
        f"scenes_pope {ref['method']}@{ref['budget']}: F1 (mean over splits) HF {hf['pope_f1_avg']:.4f}, "
        f"vLLM {vllm['pope_f1_avg']:.4f}; identical answers {same}/{len(cases)}"
    )
    return 0 if hf == vllm and same == len(cases) else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--score", action="store_true")
    args = parser.parse_args()
    return score(args.out) if args.score else build(args.out)


if __name__ == "__main__":
    raise SystemExit(main())
