"""End to end through the real lmms-eval: tiny local LLaVA / LLaVA-NeXT checkpoints, local POPE / GQA /
MME-format testbeds, the runner, runs.csv, the per-run folder and the offline wandb files."""

from __future__ import annotations

import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from mmtok import store
from mmtok.run.compose import compose
from mmtok.run.execute import run
from mmtok.run.identity import config_hash
from mmtok.run.schema import ConfigError
from mmtok.timing import layer_flops, lm_head_flops, prefill_flops
from tests._records import sample_record
from tests._wandb import wandb_offline_records

ROOT = Path(__file__).resolve().parent.parent
SAMPLE_FIELDS = {
    "task", "doc_id", "question", "answer", "target", "vision_tokens", "vision_tokens_full", "equivalent_tokens",
    "crops", "vision_s", "select_s", "prefill_s", "decode_s", "total_s", "new_tokens", "batch_size",
    "text_tokens", "prefill_tokens", "prefill_flops", "n_images", "layer_vision_tokens",
}  # fmt: skip
BENCH_METRICS = {
    "pope": [c for c in store.METRIC_COLUMNS if c.startswith("pope_")],
    "gqa": ["gqa_exact_match"],
    "mme": ["mme_perception", "mme_cognition", "mme_total"],
}


@pytest.fixture(scope="module")
def base(mmtok_cache, tiny_llava_path, tiny_llavanext_path):
    # the runner plumbing on the random-weight tiny models (the default model is the trained testbed)
    return [
        f"cache_dir={mmtok_cache}",
        "model=tiny_llava",
        "benchmark=pope_local",
        "progress=false",
        "max_new_tokens=4",
    ]


def go(base, results_dir, *overrides, wandb="disabled"):
    cfg = compose([*base, f"results_dir={results_dir}", f"wandb.mode={wandb}", *overrides])
    return run(cfg)


def csv_row(outcome) -> dict[str, str]:
    rows = [r for r in store.read_rows(outcome.csv_path) if r["run_id"] == outcome.run_id]
    assert len(rows) == 1
    return rows[0]


def num(value: str) -> float:
    return float(value)


E2E = [
    # model, benchmark, pruner, budget, extra overrides, kept tokens per crop
    ("tiny_llava", "pope_local", "mmtok", 8, ["limit=6"], 8),
    ("tiny_llava", "gqa_local", "divprune", 8, ["limit=4", "prompt_format=vicuna_v1", "image_preprocess=pad"], 8),
    ("tiny_llava", "mme_local", "visionzip", 12, ["limit=10"], 12),
    ("tiny_llavanext", "pope_local", "mmtok", 40, ["limit=6", "batch_size=2"], 8),
    ("tiny_llavanext", "gqa_local", "random", 40, ["limit=4"], 8),
    ("tiny_llavanext", "mme_local", "mmtok", 20, ["limit=10", "prompt_format=vicuna_v1"], 4),
]


@pytest.mark.parametrize("model, bench, pruner, budget, extra, per_crop", E2E, ids=[f"{e[0]}-{e[1]}" for e in E2E])
def test_end_to_end_row_samples_and_wandb_agree(base, tmp_path, model, bench, pruner, budget, extra, per_crop):
    out = go(
        base,
        tmp_path,
        f"model={model}",
        f"benchmark={bench}",
        f"pruner={pruner}",
        f"budget={budget}",
        *extra,
        wandb="offline",
    )
    assert out.status == "completed"
    row = csv_row(out)

    # 1. every documented column is filled (other benchmarks' metrics may be empty)
    kind = bench.split("_")[0]
    required = [c for c in store.COLUMNS if c not in store.OPTIONAL_COLUMNS] + ["budget", "limit"] + BENCH_METRICS[kind]
    assert not [c for c in required if row[c] == ""], {c: row[c] for c in required if row[c] == ""}
    assert row["status"] == "completed" and row["model"] == model and row["benchmark"] == bench
    assert row["pruner"] == pruner and int(row["budget"]) == budget
    assert json.loads(row["pruner_params"])["budget"] == budget
    assert row["lmms_eval_version"] == "0.7.3" and row["transformers_version"] == "5.23.0"
    assert row["device"] == "cpu" and int(row["peak_memory_bytes"]) > 0
    metrics = json.loads(row["metrics_json"])
    assert num(row["score"]) == metrics[row["score_metric"]]
    for col in BENCH_METRICS[kind]:
        assert num(row[col]) == metrics[col]

    # 2. the per-sample file matches the row's aggregates (recomputed here with numpy)
    run_dir = Path(row["run_dir"])
    samples = [json.loads(line) for line in (run_dir / "samples.jsonl").read_text().splitlines()]
    limit = int(row["limit"])
    assert len(samples) == int(row["n_samples"]) == limit
    assert all(SAMPLE_FIELDS <= set(s) for s in samples)
    assert all(s["answer"] is not None and s["target"] is not None for s in samples)
    for stage in store.STAGES:
        xs = np.array([s[f"{stage}_s"] for s in samples], dtype=float)
        assert (xs >= 0).all()
        for stat, want in (("mean", xs.mean()), ("p50", np.median(xs)), ("p90", np.quantile(xs, 0.9))):
            assert num(row[f"{stage}_s_{stat}"]) == pytest.approx(want, rel=1e-12), (stage, stat)
    kept = np.array([s["vision_tokens"] for s in samples])
    assert (
        num(row["vision_tokens_mean"]),
        int(row["vision_tokens_min"]),
        int(row["vision_tokens_max"]),
    ) == pytest.approx((kept.mean(), kept.min(), kept.max()))
    assert num(row["equivalent_tokens_mean"]) == pytest.approx(kept.mean())  # pre-LLM: equivalent = kept
    assert num(row["prefill_flops_mean"]) == pytest.approx(np.mean([s["prefill_flops"] for s in samples]))
    assert num(row["new_tokens_mean"]) == pytest.approx(np.mean([s["new_tokens"] for s in samples]))
    # the budget rule: per_crop tokens of every crop actually present, of the 36 a crop has
    assert all(s["vision_tokens"] == per_crop * s["crops"] for s in samples)
    assert all(s["vision_tokens_full"] > s["vision_tokens"] for s in samples)
    if model == "tiny_llava":
        assert all(s["crops"] == 1 and s["vision_tokens_full"] == 36 for s in samples)
    else:
        assert max(s["crops"] for s in samples) > 1
    from transformers import AutoConfig

    model_cfg = AutoConfig.from_pretrained(row["model_path"])
    for s in samples:
        assert s["prefill_flops"] == prefill_flops(model_cfg, s["text_tokens"] + s["vision_tokens"])
    assert {s["batch_size"] for s in samples} <= {int(row["batch_size"]), 1}

    # 3. the run folder: resolved config, metrics, the row
    cfg = yaml.safe_load((run_dir / "config.yaml").read_text())
    assert cfg["budget"] == budget and cfg["pruner"]["name"] == pruner and cfg["model"]["name"] == model
    assert json.loads((run_dir / "metrics.json").read_text()) == metrics
    assert json.loads((run_dir / "row.json").read_text())["config_hash"] == row["config_hash"]

    # 4. wandb's offline run file holds the same metrics and aggregates
    folders = list((run_dir / "wandb").glob("offline-run-*"))
    assert len(folders) == 1
    rec = wandb_offline_records(folders[0])
    for key, value in metrics.items():
        assert rec["history"][key] == pytest.approx(value) and rec["summary"][key] == pytest.approx(value)
    for col in ("score", "total_s_mean", "prefill_s_p90", "vision_tokens_mean", "wall_s", "n_samples"):
        assert rec["summary"][col] == pytest.approx(num(row[col]))
    assert rec["config"]["config_hash"] in (row["config_hash"], {"value": row["config_hash"]})


@pytest.mark.parametrize("model, budget", [("tiny_llava", 100000), ("tiny_llavanext", 100000)])
def test_keep_all_equals_pruner_none(base, tmp_path, model, budget):
    common = [f"model={model}", "benchmark=pope_local", "limit=6", "max_new_tokens=6"]
    with pytest.warns(UserWarning, match="keeping all"):
        # "hf" layout: HF's own packing of the kept tokens (the paper layout drops NeXT's newlines)
        keep_all = go(base, tmp_path, *common, "pruner=mmtok", f"budget={budget}", "pruner.params.next_layout=hf")
    none = go(base, tmp_path, *common, "pruner=none")
    assert none.row.budget is None and none.row.pruner == "none"
    answers = {(s.task, s.doc_id): s.answer for s in none.samples}
    assert {(s.task, s.doc_id): s.answer for s in keep_all.samples} == answers
    for out in (keep_all, none):
        assert all(s.vision_tokens == s.vision_tokens_full for s in out.samples)
    if model == "tiny_llava":
        # the comparison means something: pruning hard does change the tiny model's answers
        pruned = go(base, tmp_path, *common, "pruner=random", "budget=2")
        assert {(s.task, s.doc_id): s.answer for s in pruned.samples} != answers


def test_resume_skips_and_force_reruns(base, tmp_path, capsys):
    args = ["pruner=random", "budget=6", "limit=2"]
    first = go(base, tmp_path, *args)
    assert first.status == "completed" and first.row_number == 1
    capsys.readouterr()
    second = go(base, tmp_path, *args)
    out = capsys.readouterr().out
    assert second.status == "skipped" and second.run_id == first.run_id
    assert f"{tmp_path / 'runs.csv'} row 1" in out and "force=true" in out and first.run_id in out
    assert len(store.read_rows(tmp_path / "runs.csv")) == 1
    # wandb / progress / results_dir are not part of the identity: still the same run
    assert go(base, tmp_path, *args, "progress=true").status == "skipped"
    forced = go(base, tmp_path, *args, "force=true")
    assert forced.status == "completed" and forced.run_id != first.run_id and forced.row_number == 2
    assert forced.config_hash == first.config_hash
    assert go(base, tmp_path, *args).row_number == 2  # the latest completed row
    # a different budget is a different run
    assert go(base, tmp_path, "pruner=random", "budget=7", "limit=2").status == "completed"
    assert len(store.read_rows(tmp_path / "runs.csv")) == 3


def test_a_run_killed_before_its_index_line_is_completed_into_runs_csv_on_resume(base, tmp_path, capsys):
    # A kill between writing row.json and appending runs.csv: the folder holds the completed run,
    # the index does not. The rerun skips it (nothing is recomputed) and adds the missing line.
    args = ["pruner=random", "budget=6", "limit=2"]
    first = go(base, tmp_path, *args)
    with open(tmp_path / "runs.csv", encoding="utf-8") as f:
        header = f.readline()
    (tmp_path / "runs.csv").write_text(header, encoding="utf-8")
    capsys.readouterr()
    again = go(base, tmp_path, *args)
    out = capsys.readouterr().out
    assert again.status == "skipped" and again.run_id == first.run_id and again.row_number == 1
    assert "runs.csv lacked it: added as row 1" in out
    rows = store.read_rows(tmp_path / "runs.csv")
    assert [r["run_id"] for r in rows] == [first.run_id] and rows[0]["status"] == "completed"
    assert go(base, tmp_path, *args).row_number == 1  # and only once
    assert len(store.read_rows(tmp_path / "runs.csv")) == 1


def test_failed_evaluation_leaves_a_failed_row_and_is_not_resumed(base, tmp_path, monkeypatch):
    import mmtok.eval.evaluate as evaluation

    def broken(*args, **kwargs):
        raise RuntimeError("pruner exploded\nsecond line")

    monkeypatch.setattr(evaluation, "evaluate", broken)
    with pytest.raises(RuntimeError, match="pruner exploded"):
        go(base, tmp_path, "pruner=random", "budget=5", "limit=2")
    (row,) = store.read_rows(tmp_path / "runs.csv")
    assert row["status"] == "failed" and row["error"] == "RuntimeError: pruner exploded"
    monkeypatch.undo()
    assert go(base, tmp_path, "pruner=random", "budget=5", "limit=2").status == "completed"


@pytest.mark.parametrize(
    "args,message",
    [
        (
            ("model=tiny_llavanext", "budget=3"),
            r"budget 3 is below one token per crop for llava_next \(5 crops\); use budget >= 5",
        ),
        (
            ("pruner=fastv", "budget=4"),
            r"fastv: budget 4 \(equivalent tokens of 36\) is too small .* the minimum budget is 5",
        ),
        (("model=tiny_llavanext", "pruner=fastv", "budget=12"), r"the minimum budget is 23"),
    ],
)
def test_unreachable_budget_fails_before_the_model_loads(base, tmp_path, monkeypatch, args, message):
    import mmtok.run.execute

    def never(cfg):
        raise AssertionError("the model was loaded before the budget was checked")

    monkeypatch.setattr(mmtok.run.execute, "load", never)
    with pytest.raises(ConfigError, match=message):
        go(base, tmp_path, *args, "limit=2")
    assert not (tmp_path / "runs.csv").exists()


def test_unknown_pruner_parameter_fails_before_loading(base, tmp_path):
    with pytest.raises(ConfigError, match=r"unknown parameter\(s\) gamma for pruner 'mmtok'"):
        go(base, tmp_path, "+pruner.params.gamma=1")


def test_two_concurrent_cli_runs_append_two_intact_rows(run_cli, tmp_path, mmtok_cache, tiny_llava_path):
    common = ["limit=2", "max_new_tokens=2", "progress=false", f"results_dir={tmp_path / 'res'}", "wandb.mode=offline"]
    env = {k: v for k, v in os.environ.items()}
    env.update(PYTHONPATH=str(ROOT), MMTOK_CACHE=str(mmtok_cache), HF_HUB_OFFLINE="1", WANDB_SILENT="true")
    procs = [
        subprocess.Popen(
            [sys.executable, str(ROOT / "run.py"), "pruner=random", f"budget={b}", *common],
            cwd=tmp_path,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for b in (5, 9)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], outs
    with open(tmp_path / "res" / "runs.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert tuple(rows[0]) == store.COLUMNS and len(rows) == 3
    assert all(len(r) == len(store.COLUMNS) for r in rows[1:])
    got = [dict(zip(rows[0], r)) for r in rows[1:]]
    assert sorted(int(r["budget"]) for r in got) == [5, 9]
    assert all(r["status"] == "completed" for r in got)
    assert len({r["run_id"] for r in got}) == 2


def test_cli_sweep_runs_every_job(run_cli, tmp_path):
    res = run_cli(
        [
            "-m",
            "pruner=random,mmtok",
            "budget=4",
            "limit=2",
            "max_new_tokens=2",
            "wandb.mode=disabled",
            "results_dir=res",
        ],
        cwd=tmp_path,
    )
    assert res.returncode == 0, res.stderr[-3000:]
    rows = store.read_rows(tmp_path / "res" / "runs.csv")
    assert sorted(r["pruner"] for r in rows) == ["mmtok", "random"]
    assert all(r["status"] == "completed" for r in rows)


def test_embedded_default_runs_offline_on_cpu(run_cli, tmp_path):
    """`python run.py` with no arguments (the committed testbed LLaVA + MMTok + scenes_pope, CPU,
    offline) prints a real POPE F1 from any working folder."""
    res = run_cli([], cwd=tmp_path)
    assert res.returncode == 0, res.stderr[-3000:]
    (row,) = store.read_rows(tmp_path / "results" / "runs.csv")
    got = (row["model"], row["pruner"], row["budget"], row["benchmark"])
    assert got == ("testbed_llava", "mmtok", "16", "scenes_pope")
    assert row["status"] == "completed" and int(row["n_samples"]) == 150 and row["device"] == "cpu"
    assert list((tmp_path / row["run_dir"] / "wandb").glob("offline-run-*"))
    f1 = re.search(r"done: pope_f1_avg=([0-9.]+)", res.stdout)
    assert f1 is not None, res.stdout[-2000:]
    # a trained model: MMTok at 16 of 576 tokens measured 0.973 here (unpruned on 300 questions 0.990)
    assert float(f1.group(1)) >= 0.70
    again = run_cli([], cwd=tmp_path)
    assert again.returncode == 0 and "skipped" in again.stdout


def test_in_llm_pruner_rows_log_equivalent_tokens(base, tmp_path):
    """FastV keeps R tokens from layer K on: the row's equivalent tokens are the layer average."""
    out = go(base, tmp_path, "pruner=fastv", "budget=16", "limit=4")
    row = csv_row(out)
    eq = [s.equivalent_tokens for s in out.samples]
    assert all(e is not None for e in eq)
    assert num(row["equivalent_tokens_mean"]) == pytest.approx(np.mean(eq))
    assert num(row["vision_tokens_mean"]) < num(row["equivalent_tokens_mean"]) <= 16.5
    from transformers import AutoConfig

    model_cfg = AutoConfig.from_pretrained(row["model_path"])
    layers = model_cfg.text_config.num_hidden_layers
    for s in out.samples:
        # FLOPs per layer at the vision tokens that layer's input held (exact), from the wrapper's
        # text_tokens; the layer average of that list is the equivalent token count
        per_layer = s.layer_vision_tokens
        assert len(per_layer) == layers and np.mean(per_layer) == pytest.approx(s.equivalent_tokens)
        assert per_layer[0] == s.vision_tokens_full and per_layer[-1] == s.vision_tokens
        assert s.prefill_tokens == s.text_tokens + s.vision_tokens
        assert s.prefill_flops == sum(layer_flops(model_cfg, s.text_tokens + v) for v in per_layer) + lm_head_flops(
            model_cfg
        )
        # less than the unpruned prefill, more than keeping only the final tokens from layer 0
        assert prefill_flops(model_cfg, s.text_tokens + s.vision_tokens) < s.prefill_flops
        assert s.prefill_flops < prefill_flops(model_cfg, s.text_tokens + s.vision_tokens_full)


def test_prefill_flops_come_from_the_recorded_token_counts():
    """The runner charges FLOPs from each sample's recorded counts (no re-tokenisation)."""
    from transformers import LlamaConfig

    from mmtok.run.execute import add_prefill_flops

    cfg = LlamaConfig(vocab_size=100, hidden_size=8, intermediate_size=16, num_hidden_layers=2, num_attention_heads=2)
    samples = [
        sample_record(text_tokens=5, vision_tokens=4),
        sample_record(text_tokens=5, vision_tokens=2, equivalent_tokens=3.0, layer_vision_tokens=[4, 2]),
        sample_record(text_tokens=5, vision_tokens=2, equivalent_tokens=2.6),  # in-LLM without the per-layer list
        sample_record(text_tokens=5, vision_tokens=4, prefill_flops=7),  # already set: kept
    ]
    add_prefill_flops(samples, cfg)
    assert samples[0].prefill_flops == prefill_flops(cfg, 9)
    assert samples[1].prefill_flops == layer_flops(cfg, 9) + layer_flops(cfg, 7) + lm_head_flops(cfg)
    assert samples[1].prefill_flops != prefill_flops(cfg, 8)  # not the layer-average shortcut
    assert samples[2].prefill_flops == prefill_flops(cfg, 8)  # round(5 + 2.6)
    assert samples[3].prefill_flops == 7


@pytest.mark.parametrize(
    "overrides, pinned",
    [
        # hashes of these configs before the family-adapter refactor: the rows of earlier sweeps
        # resume only while they stay. Changing one means every such run re-runs: do it on purpose.
        (["model=llava15_7b", "pruner=divprune", "budget=64", "benchmark=pope"], "1f2c8db2db05"),
        (["model=llava15_7b", "pruner=mmtok", "budget=64", "benchmark=pope"], "147bf4ea04bb"),
        (["model=llavanext_7b", "pruner=fastv", "budget=64", "benchmark=gqa"], "e34ddeef005f"),
    ],
)
def test_run_identity_of_earlier_configs_is_unchanged(overrides, pinned):
    """Without the weights on this machine: the family comes from the model config's declared
    `family`, MMTok's tau_t resolves to LLaVA's 0.02, and unset newer options add nothing."""
    from omegaconf import OmegaConf

    from mmtok.run.compose import compose
    from mmtok.run.identity import identity
    from mmtok.run.pruner import build_pruner_from

    cfg = compose(overrides)
    pruner = build_pruner_from(cfg)
    ident = identity(OmegaConf.to_container(cfg, resolve=True), pruner)
    assert "retain_ratio" not in ident["pruner"]["params"] and "family" not in ident["model"]
    if cfg.pruner.name == "mmtok":
        assert pruner.tau_t == 0.02
    assert config_hash(ident)[:12] == pinned


def test_qwen_config_resolves_its_family_defaults_without_the_weights():
    from mmtok.run.compose import compose
    from mmtok.run.pruner import build_pruner_from

    assert build_pruner_from(compose(["model=qwen25vl_7b", "pruner=mmtok", "budget=64"])).tau_t == 0.01


def test_a_declared_family_must_match_the_checkpoint(tiny_llava_path):
    from mmtok.run.compose import compose
    from mmtok.run.schema import ConfigError
    from mmtok.run.validate import validate

    cfg = compose(["model=local", f"model.path={tiny_llava_path}", "model.family=qwen2_5_vl"])
    with pytest.raises(ConfigError, match=r"is a 'llava' checkpoint but its config declares family=qwen2_5_vl"):
        validate(cfg)
    with pytest.raises(ConfigError, match=r"unknown model.family 'qwen'; valid: llava, llava_next, qwen2_5_vl"):
        validate(compose(["model=local", f"model.path={tiny_llava_path}", "model.family=qwen"]))
