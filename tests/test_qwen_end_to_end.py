"""`python run.py model=tiny_qwen25vl ...` end to end: a complete row, and the wrapper's Qwen path equal to
plain HF generation on lmms-eval's prompt (the tiny Qwen2.5-VL is built in code on first use)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from mmtok import store
from mmtok.eval.prompts import build_prompt, preprocess_image

LIMIT = 6  # the testbed cycles images through the three POPE splits: 6 questions cover all
COMMON = ["model=tiny_qwen25vl", "benchmark=pope_local", f"limit={LIMIT}", "progress=false", "wandb.mode=disabled"]
POPE = [c for c in store.METRIC_COLUMNS if c.startswith("pope_")]


def _cli_run(run_cli, cwd: Path, *args: str) -> tuple[dict, list[dict]]:
    cwd.mkdir(parents=True, exist_ok=True)
    res = run_cli([*COMMON, *args], cwd=cwd)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-4000:]
    rows = store.read_rows(cwd / "results" / "runs.csv")
    assert len(rows) == 1
    row = rows[0]
    required = [c for c in store.COLUMNS if c not in store.OPTIONAL_COLUMNS] + ["limit"] + POPE
    assert not [c for c in required if row[c] == ""], {c: row[c] for c in required if row[c] == ""}
    assert (row["status"], row["model"], row["model_family"]) == ("completed", "tiny_qwen25vl", "qwen2_5_vl")
    assert (row["prompt_format"], row["image_preprocess"], int(row["n_samples"])) == ("hf", "crop", LIMIT)
    run_dir = cwd / row["run_dir"]  # relative to the working folder of the run
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    assert len(samples) == LIMIT
    return row, samples


def _reference(model, processor, image, question, max_new_tokens):
    """Plain HF greedy generation on lmms-eval's qwen2_5_vl prompt and image, no pruner involved."""
    prompt = processor.apply_chat_template(
        [
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]},
        ],
        tokenize=False,
        add_generation_prompt=True,
    )
    assert prompt == build_prompt(processor, question, "hf", "qwen2_5_vl")
    batch = processor(
        images=[preprocess_image(image, processor, "crop", "qwen2_5_vl")], text=[prompt], return_tensors="pt"
    )
    with torch.no_grad():
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False)
    new = out[0, batch["input_ids"].shape[1] :].tolist()
    eos = model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos)
    n = next((i + 1 for i, t in enumerate(new) if t in eos), len(new))
    text_tokens = int((batch["input_ids"] != model.config.image_token_id).sum())
    image_tokens = int(batch["image_grid_thw"].prod(-1).sum()) // processor.image_processor.merge_size**2
    return processor.tokenizer.decode(new[:n], skip_special_tokens=True).strip(), n, text_tokens, image_tokens


@pytest.fixture(scope="module")
def unpruned(run_cli, tmp_path_factory, mmtok_cache):
    """(row, samples, the POPE testbed's documents) of `run.py model=tiny_qwen25vl pruner=none ...`."""
    cwd = tmp_path_factory.mktemp("qwen-none")
    row, samples = _cli_run(run_cli, cwd, "pruner=none")
    import datasets

    files = sorted((mmtok_cache / "testbed").glob("pope-n*/*.parquet"))
    return row, samples, datasets.Dataset.from_parquet(str(files[0]))


def test_pruner_none_row_equals_plain_hf_generation(unpruned):
    """The wrapper's Qwen path (prompt, image, greedy decoding through pruner `none`) answers exactly
    as `model.generate` on lmms-eval's prompt, and the record counts text and image tokens right."""
    from mmtok.models.loading import load_model
    from mmtok.run.compose import compose

    row, samples, docs = unpruned
    sizing = compose(["model=tiny_qwen25vl"]).model
    model, processor, _ = load_model(
        row["model_path"], dtype="float32", min_pixels=sizing.min_pixels, max_pixels=sizing.max_pixels
    )
    assert int(row["max_new_tokens"]) == 16
    for s in samples:
        doc = docs[int(s["doc_id"])]
        assert s["question"] == doc["question"] + "\nAnswer the question using a single word or phrase."
        answer, new_tokens, text_tokens, image_tokens = _reference(model, processor, doc["image"], s["question"], 16)
        assert (s["answer"], s["new_tokens"]) == (answer, new_tokens)
        assert s["vision_tokens"] == s["vision_tokens_full"] == image_tokens and s["crops"] == 1
        assert s["text_tokens"] == text_tokens and s["prefill_tokens"] == text_tokens + image_tokens
    assert float(row["vision_tokens_mean"]) == float(row["vision_tokens_full_mean"])


def test_mmtok_at_8_tokens_writes_a_complete_row(run_cli, tmp_path, unpruned):
    """The issue's command: `run.py model=tiny_qwen25vl pruner=mmtok budget=8 benchmark=pope_local`."""
    _, full, _ = unpruned
    row, samples = _cli_run(run_cli, tmp_path, "pruner=mmtok", "budget=8")
    assert row["pruner"] == "mmtok" and int(row["budget"]) == 8
    params = json.loads(row["pruner_params"])
    assert (params["budget"], params["tau_t"], params["tau_v"], params["alpha"]) == (8, 0.01, 0.2, 0.5)  # the release's
    by_doc = {s["doc_id"]: s for s in full}
    for s in samples:
        unpruned = by_doc[s["doc_id"]]
        assert s["vision_tokens"] == 8 and s["vision_tokens_full"] == unpruned["vision_tokens_full"] > 8
        assert s["text_tokens"] == unpruned["text_tokens"] and s["prefill_tokens"] == s["text_tokens"] + 8
    assert (float(row["vision_tokens_mean"]), int(row["vision_tokens_min"]), int(row["vision_tokens_max"])) == (8, 8, 8)


@pytest.mark.parametrize("pruner", ["none", "mmtok"])
def test_batched_run_answers_as_one_by_one(run_cli, tmp_path, unpruned, pruner):
    """batch_size=3 (left padding, images of different sizes) gives every question the answer and
    token counts of its batch-1 run."""
    budget = ["budget=8"] if pruner == "mmtok" else []
    single = unpruned[1] if pruner == "none" else _cli_run(run_cli, tmp_path / "one", f"pruner={pruner}", *budget)[1]
    _, batched = _cli_run(run_cli, tmp_path / "three", f"pruner={pruner}", *budget, "batch_size=3")
    keys = ("answer", "new_tokens", "vision_tokens", "vision_tokens_full", "text_tokens")
    one = {s["doc_id"]: tuple(s[k] for k in keys) for s in single}
    assert {s["doc_id"]: tuple(s[k] for k in keys) for s in batched} == one
    assert {s["batch_size"] for s in batched} == {3}


def test_the_releases_retain_ratio_through_run_py(run_cli, tmp_path, unpruned):
    """The paper protocol's budget on Qwen: 20 % of each image's tokens, truncated (k = int(0.2 n))."""
    _, full, _ = unpruned
    row, samples = _cli_run(run_cli, tmp_path, "pruner=mmtok", "budget=null", "pruner.retain_ratio=0.2")
    assert "_mmtok-r0.2_" in row["run_id"] and row["budget"] == ""
    assert json.loads(row["pruner_params"])["retain_ratio"] == 0.2
    n = {s["doc_id"]: s["vision_tokens_full"] for s in full}
    assert [s["vision_tokens"] for s in samples] == [int(0.2 * n[s["doc_id"]]) for s in samples]
    assert all(s["vision_tokens_full"] == n[s["doc_id"]] for s in samples)
