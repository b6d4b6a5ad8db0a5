"""The config tree, its schema, and the one-line errors for bad input (before any model loads)."""

from __future__ import annotations

import csv
import re
from pathlib import Path

import pytest
import yaml

from mmtok.models.registry import method_defaults
from mmtok.run.compose import compose, group_options
from mmtok.run.identity import config_hash
from mmtok.run.preflight import preflight
from mmtok.run.schema import CONFIG_DIR, ConfigError
from mmtok.run.validate import validate


def _valid(group: str) -> str:
    """The option list an error names: computed, so a new YAML in configs/<group>/ breaks no test."""
    return ", ".join(group_options(group))


ROOT = Path(__file__).resolve().parent.parent
LMMS_TASKS = Path(__import__("lmms_eval").__file__).parent / "tasks"


# -- the tree -------------------------------------------------------------------------------------
def test_default_config_is_the_embedded_offline_run():
    cfg = compose([])
    # the trained testbed LLaVA, committed in the repository, from any working folder
    assert cfg.model.name == "testbed_llava" and cfg.model.tiny is None
    assert Path(cfg.model.path) == ROOT / "results" / "testbed" / "model"
    assert (Path(cfg.model.path) / "model.safetensors").is_file()
    assert cfg.pruner.name == "mmtok" and cfg.budget == 16
    assert cfg.benchmark.name == "scenes_pope" and cfg.benchmark.testbed == "scenes_pope"
    assert cfg.device == "cpu" and cfg.model.dtype == "float32"
    assert cfg.wandb.mode == "offline" and cfg.force is False
    validate(cfg)


def test_paper_models_point_at_the_llava_hf_checkpoints():
    expected = {
        "llava15_7b": "llava-hf/llava-1.5-7b-hf",
        "llava15_13b": "llava-hf/llava-1.5-13b-hf",
        "llavanext_7b": "llava-hf/llava-v1.6-vicuna-7b-hf",
        "llavanext_13b": "llava-hf/llava-v1.6-vicuna-13b-hf",
    }
    for name, hub_id in expected.items():
        cfg = compose([f"model={name}"])
        assert (cfg.model.path, cfg.model.dtype, cfg.model.attn_implementation, cfg.device) == (
            hub_id,
            "float16",
            "sdpa",
            "cuda",
        )
        validate(cfg, check_model=False)


@pytest.mark.parametrize("group", ["model", "pruner", "benchmark"])
def test_every_option_composes_and_validates(group):
    for option in group_options(group):
        overrides = [f"{group}={option}"]
        if group == "model" and option == "local":
            overrides.append("model.path=/somewhere")
        validate(compose(overrides), check_model=False)


def test_every_registered_pruner_has_a_config_with_valid_parameters():
    from mmtok.pruners import PRUNERS
    from mmtok.run.pruner import build_pruner_from

    assert set(PRUNERS) <= set(group_options("pruner")), "configs/pruner/<name>.yaml for every registered pruner"
    for name in PRUNERS:
        cfg = compose([f"pruner={name}"])
        assert cfg.pruner.name == name
        pruner = build_pruner_from(cfg)  # raises on a field the pruner does not have
        family = method_defaults("llava", name)  # the default model is a LLaVA
        for key, value in cfg.pruner.params.items():
            got = pruner.params()[key]
            want = family[key] if value is None and key in family else value  # null = the family's value
            assert (list(got) if isinstance(got, tuple) else got) == want, (name, key)
        assert pruner.params()["seed"] == cfg.seed  # the run seed reaches the pruner


def test_pruner_none_keeps_every_token_by_default():
    assert compose(["pruner=none"]).budget is None
    assert compose(["pruner=random"]).budget == 16  # the top-level default stays for the others


def test_benchmarks_map_to_real_lmms_eval_tasks():
    """Every task a benchmark config names exists in the installed lmms-eval (0.7.3)."""
    declared = set()
    for path in LMMS_TASKS.rglob("*.yaml"):
        declared.update(re.findall(r"^task:\s*\"?([\w.-]+)\"?\s*$", path.read_text(errors="ignore"), re.M))
    mapping = {}
    for option in group_options("benchmark"):
        cfg = compose([f"benchmark={option}"])
        if cfg.benchmark.testbed is None:
            mapping[option] = list(cfg.benchmark.tasks)
            assert set(cfg.benchmark.tasks) <= declared, (option, cfg.benchmark.tasks)
            assert cfg.benchmark.score, option
    assert mapping["pope"] == ["pope"]  # one task with all three splits; per-split F1 comes from `category`
    assert mapping["gqa"] == ["gqa"] and mapping["mme"] == ["mme"]
    # the paper's nine are there (a user's own benchmark YAML may add more)
    assert set(mapping) >= {"pope", "gqa", "mme", "sqa", "mmbench", "textvqa", "seed", "mmmu", "vqav2"}


def test_multi_image_defaults_per_benchmark():
    """SEED video questions get their middle frame, MMMU multi-image questions their first image
    (both benchmarks are in Table 1); every other benchmark refuses several images; the command line wins."""
    got = {option: compose([f"benchmark={option}"]).multi_image for option in group_options("benchmark")}
    assert got.pop("seed") == "middle" and got.pop("mmmu") == "first"
    assert set(got.values()) == {"error"}
    assert compose(["benchmark=seed", "multi_image=first"]).multi_image == "first"
    assert compose(["benchmark=pope", "multi_image=middle"]).multi_image == "middle"
    with open(ROOT / "results" / "paper" / "paper_tables.csv") as f:
        notes = {r["note"] for r in csv.DictReader(f) if r["table"] == "table1" and r["benchmark"] == "seed"}
    # Table 1 reports SEED-all (image + video questions); the image-only metric is a separate column
    assert notes == {"seed=SEED-all (other tables use SEED-IMG)"}
    assert compose(["benchmark=seed"]).benchmark.score == "seedbench_seed_all"


def test_multi_image_error_keeps_the_old_run_identity():
    """multi_image=error behaves as runs did before the option existed: same config hash; another
    policy is another run; benchmark.multi_image (a default only) never enters the hash."""
    from mmtok.run.identity import identity
    from mmtok.run.pruner import build_pruner_from

    def key(*overrides):
        from omegaconf import OmegaConf

        cfg = compose(list(overrides))
        resolved = OmegaConf.to_container(cfg, resolve=True)
        return identity(resolved, build_pruner_from(cfg)), config_hash(identity(resolved, build_pruner_from(cfg)))

    ident, plain = key()
    assert "multi_image" not in ident and "multi_image" not in ident["benchmark"]
    assert key("multi_image=error")[1] == plain
    assert key("multi_image=first")[1] != plain != key("multi_image=middle")[1]
    assert key("benchmark=seed")[0]["multi_image"] == "middle"
    assert key("benchmark=seed", "multi_image=first")[1] == key("benchmark=seed", "benchmark.multi_image=first")[1]


def test_a_benchmarks_declared_size_is_not_an_identity():
    """benchmark.questions only lets `make status` count generations: declaring or changing it
    leaves every run's config hash as it was."""
    from omegaconf import OmegaConf

    from mmtok.run.identity import identity
    from mmtok.run.pruner import build_pruner_from

    def key(*overrides):
        cfg = compose(list(overrides))
        ident = identity(OmegaConf.to_container(cfg, resolve=True), build_pruner_from(cfg))
        return ident, config_hash(ident)

    ident, declared = key("benchmark=pope")
    assert compose(["benchmark=pope"]).benchmark.questions == 9000 and "questions" not in ident["benchmark"]
    assert (
        key("benchmark=pope", "benchmark.questions=null")[1]
        == declared
        == key("benchmark=pope", "benchmark.questions=7")[1]
    )


def test_table1_experiment_sweeps_the_papers_grid():
    """experiment=table1 covers exactly the Table-1 cells of results/paper, plus our random rows."""
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from mmtok.run.cells import parse_cell

    with open(ROOT / "results" / "paper" / "paper_tables.csv") as f:
        rows = [r for r in csv.DictReader(f) if r["table"] == "table1" and r["benchmark"] != "avg_retained_pct"]
    paper = {(r["method"], None if r["method"] == "none" else int(r["budget"]), r["benchmark"]) for r in rows}

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["experiment=table1"], return_hydra_config=True)
    assert str(cfg.hydra.mode) == "RunMode.MULTIRUN"
    assert (cfg.model.name, cfg.prompt_format, cfg.image_preprocess) == ("llava15_7b", "vicuna_v1", "pad")
    grid = {(*parse_cell(c), b) for c in cfg.cells for b in cfg.hydra.sweeper.params["benchmark"].split(",")}
    assert paper <= grid and {p for p, _, _ in grid - paper} == {"random"}


def test_slurm_launcher_config_composes():
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    with initialize_config_dir(config_dir=str(CONFIG_DIR), version_base="1.3"):
        cfg = hydra_compose(config_name="config", overrides=["hydra/launcher=slurm"], return_hydra_config=True)
        mine = hydra_compose(
            config_name="config",
            overrides=[
                "hydra/launcher=slurm",
                "hydra.launcher.partition=p",
                "hydra.launcher.account=a",
                "hydra.launcher.gpus_per_node=2",
                "hydra.launcher.timeout_min=30",
                "hydra.launcher.mem_gb=8",
                "hydra.launcher.array_parallelism=3",
            ],  # fmt: skip
            return_hydra_config=True,
        )
    assert cfg.hydra.launcher._target_.endswith("SlurmLauncher")
    assert cfg.hydra.launcher.gpus_per_node == 1 and cfg.hydra.launcher.account is None
    got = {k: mine.hydra.launcher[k] for k in ("partition", "account", "gpus_per_node", "timeout_min", "mem_gb")}
    assert got == {"partition": "p", "account": "a", "gpus_per_node": 2, "timeout_min": 30, "mem_gb": 8}
    assert mine.hydra.launcher.array_parallelism == 3


# -- validation (in-process) ----------------------------------------------------------------------
@pytest.mark.parametrize(
    "overrides, message",
    [
        (["budget=-1"], "budget must be an integer >= 0 (vision tokens kept; 0 = text only)"),
        (["budget=-4"], "budget must be an integer >= 0"),
        (["pruner.image_scale=0"], "pruner.image_scale must be a number in (0, 1]"),
        (["limit=0"], "limit must be an integer >= 1"),
        (["batch_size=0"], "batch_size must be an integer >= 1"),
        (["prompt_format=llava"], "unknown prompt_format 'llava'; valid: hf, vicuna_v1"),
        (["image_preprocess=resize"], "unknown image_preprocess 'resize'; valid: crop, pad"),
        (["multi_image=all"], "unknown multi_image 'all'; valid: error, first, middle"),
        (["benchmark.multi_image=last"], "unknown multi_image 'last'; valid: error, first, middle"),
        (["benchmark=seed", "benchmark.multi_image=last", "multi_image=first"], "unknown benchmark.multi_image 'last'"),
        (["wandb.mode=cloud"], "unknown wandb.mode 'cloud'; valid: online, offline, disabled"),
        (["device=gpu"], "unknown device 'gpu'; valid: cpu, cuda"),
        (["model.dtype=fp16"], "unknown model.dtype 'fp16'; valid: float16"),
        (["benchmark=mme_local", "limit=3"], "limit must be even"),
        (["model=local"], "model=local needs model.path="),
    ],
)
def test_validate_rejects_bad_values(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        validate(compose(overrides))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (["model=llava15_7x"], f"unknown model 'llava15_7x'; valid: {_valid('model')}"),
        (["pruner=mmtk"], "unknown pruner 'mmtk'; valid: "),
        (["benchmark=popee"], f"unknown benchmark 'popee'; valid: {_valid('benchmark')}"),
        (["budgt=4"], "unknown config key 'budgt'; valid keys there: model, pruner, benchmark, budget"),
        (["model.dtyp=float32"], "unknown config key 'model.dtyp'; valid keys there: name, path, tiny, dtype"),
        (["pruner.params.alpah=0.3"], "unknown config key 'pruner.params.alpah'; valid keys there: alpha, tau_t"),
        (["budget=abc"], "invalid value for budget"),
    ],
)
def test_compose_errors_are_one_line(overrides, message):
    with pytest.raises(ConfigError, match=re.escape(message)) as info:
        compose(overrides)
    assert "\n" not in str(info.value)


def test_preflight_checks_every_value_of_a_sweep():
    with pytest.raises(ConfigError, match="unknown pruner 'fooo'"):
        preflight(["-m", "pruner=mmtok,fooo", "budget=8"])
    with pytest.raises(ConfigError, match="budget must be an integer >= 0"):
        preflight(["-m", "budget=-1,8"])
    preflight(["-m", "pruner=mmtok,random", "budget=8,16"])


@pytest.mark.parametrize("position", [0, 1, 2, 3])
def test_a_bad_sweep_value_fails_wherever_it_sits(position):
    budgets = ["8", "16", "32"]
    budgets.insert(position, "-1")
    with pytest.raises(ConfigError, match=r"budget must be an integer >= 0 .*got -1 \(sweep cell .*budget=-1") as info:
        preflight(["-m", "model=tiny_llava", "pruner=mmtok,random", f"budget={','.join(budgets)}"])
    assert "\n" not in str(info.value)
    benches = ["pope_local", "gqa_local", "mme_local"]
    benches.insert(position, "popx")
    with pytest.raises(ConfigError, match=f"unknown benchmark 'popx'; valid: {_valid('benchmark')}"):
        preflight(["-m", "model=tiny_llava", f"benchmark={','.join(benches)}"])


def test_a_bad_value_in_a_large_grid_is_found_value_by_value():
    """Beyond FULL_GRID_CHECK cells each value is checked with the other keys at their first value."""
    from mmtok.run.preflight import FULL_GRID_CHECK, sweep_cells

    budgets = ",".join(str(b) for b in range(1, FULL_GRID_CHECK + 1))
    args = ["model=tiny_llava", "pruner=mmtok,random", f"budget={budgets}"]
    assert len(sweep_cells(args)) == 1 + 1 + (FULL_GRID_CHECK - 1)  # the first cell, then each other value
    with pytest.raises(ConfigError, match="got -1"):
        preflight(["-m", *args[:-1], f"budget={budgets},-1"])


def test_an_experiments_own_sweep_is_preflighted():
    """experiment=table1 sweeps benchmark in its YAML (a command-line list replaces it) and pins its
    cells; a bad value in either fails before job 0."""
    from mmtok.run.preflight import sweep_axes

    fixed, axes = sweep_axes(["experiment=table1"])
    assert list(axes) == ["benchmark"] and len(axes["benchmark"]) == 9
    _, axes = sweep_axes(["experiment=table1", "benchmark=pope,gqa"])
    assert axes == {"benchmark": ["benchmark=pope", "benchmark=gqa"]}
    with pytest.raises(ConfigError, match="unknown benchmark 'gqq'"):
        preflight(["-m", "experiment=tiny", "benchmark=pope_local,gqa_local,gqq"])
    with pytest.raises(ConfigError, match=r"cell 'mmtok' needs a budget: mmtok@<budget>"):
        preflight(["-m", "experiment=tiny", "cells=[none,mmtok@8,mmtok]"])
    valid = f"valid: {_valid('pruner')}"
    with pytest.raises(ConfigError, match=rf"unknown pruner 'mmtk' in cell 'mmtk@8'; {valid}"):
        preflight(["-m", "experiment=tiny", "cells=[none,mmtk@8]"])


def test_hub_model_offline_is_a_one_line_error(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HOME", str(tmp_path))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ConfigError, match=r"HF_HUB_OFFLINE=1.*hf download llava-hf/llava-1\.5-7b-hf"):
        validate(compose(["model=llava15_7b"]))


# -- the same errors through `python run.py`, timed --------------------------------------------------
HUB_EMPTY = {"HF_HOME": "{tmp}/hf", "HF_HUB_CACHE": "{tmp}/hf/hub"}

CLI_CASES = [
    ("unknown-model", ["model=llava15_7x"], {}, f"unknown model 'llava15_7x'; valid: {_valid('model')}"),
    ("unknown-pruner", ["pruner=mmtk"], {}, "unknown pruner 'mmtk'; valid: "),
    ("unknown-benchmark", ["benchmark=popee"], {}, f"unknown benchmark 'popee'; valid: {_valid('benchmark')}"),
    ("unknown-in-sweep", ["-m", "benchmark=pope_local,gqq"], {}, "unknown benchmark 'gqq'; valid: "),
    # the bad value last: job 0 (budget=8) must not run first
    ("bad-last-in-sweep", ["-m", "model=tiny_llava", "budget=8,-1"], {}, "budget must be an integer >= 0"),
    (
        "budget-negative",
        ["budget=-1"],
        {},
        "budget must be an integer >= 0 (vision tokens kept; 0 = text only) or null to keep all; got -1",
    ),
    (
        "limit-zero",
        ["limit=0"],
        {},
        "limit must be an integer >= 1 (samples per task) or null for the whole benchmark; got 0",
    ),
    ("key-typo", ["budgt=4"], {}, "unknown config key 'budgt'; valid keys there: model, pruner, benchmark, budget"),
    (
        "missing-local-path",
        ["model=local", "model.path=/no/such/checkpoint"],
        {},
        "model path '/no/such/checkpoint' (model=local) does not exist",
    ),
    (
        "hub-offline",
        ["model=llava15_7b", "pruner=mmtok", "budget=4", "benchmark=pope"],
        {**HUB_EMPTY, "HF_HUB_OFFLINE": "1"},
        "model 'llava-hf/llava-1.5-7b-hf' is not in the local HF cache and HF_HUB_OFFLINE=1 forbids downloading; "
        "pre-download it with `hf download llava-hf/llava-1.5-7b-hf`",
    ),
    (
        "hub-not-cached",
        ["model=llavanext_13b"],
        {**HUB_EMPTY, "HF_HUB_OFFLINE": "0", "TRANSFORMERS_OFFLINE": "0"},
        "model 'llava-hf/llava-v1.6-vicuna-13b-hf' is not in the local HF cache",
    ),
    (
        "table1-offline",
        ["experiment=table1"],
        HUB_EMPTY,
        "model 'llava-hf/llava-1.5-7b-hf' is not in the local HF cache",
    ),
    # passes the composer (+ adds a key), rejected by the pruner's own field check before the model loads
    ("pruner-param", ["+pruner.params.alpah=0.3"], {}, "unknown parameter(s) alpah for pruner 'mmtok'; valid: "),
]


@pytest.mark.parametrize("case, args, env, message", CLI_CASES, ids=[c[0] for c in CLI_CASES])
def test_bad_input_fails_fast_with_one_line(run_cli, tmp_path, case, args, env, message):
    env = {k: v.format(tmp=tmp_path) for k, v in env.items()}
    res = run_cli(args, cwd=tmp_path, env=env, timeout=60)
    assert res.returncode != 0, res.stdout + res.stderr
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1, res.stderr
    assert lines[0].startswith("error: ") and message in lines[0], lines[0]
    # No wall-clock bound here (a loaded machine breaks it); README times these commands.
    assert not (tmp_path / "results").exists()  # nothing ran, nothing was loaded or written


def test_hydra_help_still_works(run_cli, tmp_path):
    res = run_cli(["--help"], cwd=tmp_path, timeout=60)
    assert res.returncode == 0, res.stderr
    assert "model: llava15_13b, llava15_7b" in res.stdout and "pruner:" in res.stdout


def test_pyproject_pins_are_kept():
    text = (ROOT / "pyproject.toml").read_text()
    assert '"transformers==5.23.0"' in text and '"lmms-eval==0.7.3"' in text and '"hydra-core==1.3.2"' in text


def test_ci_checks_the_lock_lints_and_runs_make_test():
    lines = [ln.strip() for ln in (ROOT / ".ci" / "run").read_text().splitlines()]
    body = [ln for ln in lines if ln and not ln.startswith("#")]
    assert body[0] == "set -euo pipefail"
    assert body.index("make lock-check") < body.index("make lint") < body.index("make test")


def test_experiment_files_are_global_sweeps():
    for path in (CONFIG_DIR / "experiment").glob("*.yaml"):
        assert path.read_text().startswith("# @package _global_"), path
        assert "sweeper" in yaml.safe_load(path.read_text())["hydra"], path


def test_cuda_without_a_gpu_is_a_one_line_error(run_cli, tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is visible here")
    res = run_cli(["device=cuda"], cwd=tmp_path, timeout=60)
    lines = [ln for ln in res.stderr.splitlines() if ln.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr
    assert (
        lines[0] == "error: device 'cuda' is not available here (no CUDA GPU visible); "
        "pass device=cpu (with model.dtype=float32)"
    )
    assert not (tmp_path / "results").exists()


# -- loading by hub id / folder / tiny (mmtok/models/loading.py) ------------------------------------
def test_load_model_errors_are_one_line(monkeypatch, tmp_path):
    from mmtok.models.loading import ModelSourceError, load_model, model_class

    with pytest.raises(
        ModelSourceError, match=r"model path '/no/such/ckpt' \(model=/no/such/ckpt\) does not exist"
    ) as info:
        load_model("/no/such/ckpt")
    assert "\n" not in str(info.value)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ModelSourceError, match="has no config.json"):
        load_model(str(tmp_path / "empty"))
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelSourceError, match=r"HF_HUB_OFFLINE=1.*`hf download llava-hf/llava-v1\.6-vicuna-7b-hf`"):
        load_model("llava-hf/llava-v1.6-vicuna-7b-hf")
    with pytest.raises(ModelSourceError, match="unsupported model_type 'llama'; valid: llava, llava_next"):
        model_class("llama")


def test_load_model_detects_the_family_from_the_checkpoint(tiny_llava_path, tiny_llavanext_path):
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    from mmtok.models.loading import load_model

    for path, cls, family in (
        (tiny_llava_path, LlavaForConditionalGeneration, "llava"),
        (tiny_llavanext_path, LlavaNextForConditionalGeneration, "llava_next"),
    ):
        model, processor, info = load_model(str(path), dtype="float32", device="cpu")
        assert type(model) is cls and info.family == family and info.local_files_only
        assert model.config._attn_implementation == "sdpa" and not model.training
        assert processor.tokenizer is not None


def test_tiny_checkpoint_is_built_once_then_loaded_like_any_folder(tmp_path):
    from mmtok.models.loading import ensure_tiny, load_model

    path = tmp_path / "tiny" / "llava"
    model, _, info = load_model(str(path), dtype="float32", tiny="llava")
    assert (path / "config.json").is_file() and info.source == str(path)
    stamp = (path / "config.json").stat().st_mtime_ns
    assert ensure_tiny(path, "llava") == path and (path / "config.json").stat().st_mtime_ns == stamp
    assert not [p for p in path.parent.iterdir() if p.is_dir() and p.name.startswith("llava.")]  # no temp folders left
