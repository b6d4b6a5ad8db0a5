"""Experiment cells (`mmtok.run.cells`): token, ratio (`mmtok@r0.2`), text-only (`none@0`) and keep-all
(`none`, `resize_0.5`) cells; a ratio cell is the same run as its command line (hash and run id);
earlier runs keep their hashes; a tiny Qwen sweep over ratio cells completes and resumes."""

from __future__ import annotations

import json

import pytest
from omegaconf import OmegaConf

from mmtok import store
from mmtok.run.cells import Cell, cell_config, parse_cell, read_cell
from mmtok.run.compose import compose
from mmtok.run.identity import config_hash, identity, new_run_id
from mmtok.run.pruner import build_pruner_from, canonical
from mmtok.run.schema import ConfigError
from mmtok.run.validate import validate

TINY_QWEN = ["model=tiny_qwen25vl", "benchmark=pope_local", "limit=4"]


def _key(cfg) -> str:
    cfg = canonical(cfg)
    return config_hash(identity(OmegaConf.to_container(cfg, resolve=True), build_pruner_from(cfg)))


@pytest.mark.parametrize(
    ("text", "cell"),
    [
        ("mmtok@64", Cell("mmtok", 64)),
        ("mmtok@r0.2", Cell("mmtok", ratio=0.2)),
        ("divprune@r1", Cell("divprune", ratio=1.0)),
        ("mmtok_resize_0.25@r0.55", Cell("mmtok_resize_0.25", ratio=0.55)),
        ("none@0", Cell("none", 0)),
        ("mmtok@0", Cell("mmtok", 0)),
        ("none", Cell("none")),
        ("resize_0.5", Cell("resize_0.5")),
        (" resize_0.125 ", Cell("resize_0.125")),
    ],
)
def test_cells_parse(text, cell):
    assert read_cell(text) == cell
    assert parse_cell(text) == (cell.pruner, cell.budget)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("mmtok", "cell 'mmtok' needs a budget: mmtok@<budget> (>= 1, 0 = text only) or mmtok@r<ratio>"),
        ("mmtok@r0", "cell 'mmtok@r0': the ratio must be in (0, 1] (mmtok@r0.2 keeps 20 % of each crop)"),
        ("mmtok@r1.5", "cell 'mmtok@r1.5': the ratio must be in (0, 1]"),
        ("none@64", "cell 'none@64': pruner none keeps every token; write it as none (or none@0 for text only)"),
        ("resize_0.5@r0.2", "cell 'resize_0.5@r0.2': pruner resize_0.5 keeps every token; write it as resize_0.5"),
        ("mmtok@-1", "bad cell 'mmtok@-1'; write <pruner>@<budget> (e.g. mmtok@64), <pruner>@r<ratio>"),
        ("mmtok@0.2", "bad cell 'mmtok@0.2'"),
        ("mmtk@r0.2", "unknown pruner 'mmtk' in cell 'mmtk@r0.2'; valid: "),
    ],
)
def test_bad_cells_are_one_line_errors(text, message):
    with pytest.raises(ConfigError) as info:
        read_cell(text)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_a_ratio_cell_is_its_command_line():
    """`mmtok@r0.2` = `pruner=mmtok budget=null pruner.retain_ratio=0.2` (= pruner.params.retain_ratio):
    one hash, the run id label r0.2; and the hash runs of that command line had before cells took ratios."""
    job = compose([*TINY_QWEN, "cells=[mmtok@r0.2]"])
    cell = cell_config(job, "mmtok@r0.2")
    assert (cell.budget, cell.pruner.retain_ratio, list(cell.cells)) == (None, 0.2, [])
    line = compose([*TINY_QWEN, "pruner=mmtok", "budget=null", "pruner.retain_ratio=0.2"])
    params = compose([*TINY_QWEN, "pruner=mmtok", "budget=null", "+pruner.params.retain_ratio=0.2"])
    assert _key(cell) == _key(line) == _key(params) == "17876bdaf817c826"  # as before this change
    assert "_tiny_qwen25vl_mmtok-r0.2_pope_local_17876bda" in new_run_id(cell, _key(cell))
    # a job whose pruner file is a resize one: its `none` cell is the unresized image
    resized_job = compose([*TINY_QWEN, "pruner=resize_0.5"])
    assert cell_config(resized_job, "none").pruner.image_scale == 1.0
    assert cell_config(resized_job, "resize_0.5").pruner.image_scale == 0.5
    # another pruner file's ratio cell carries that file's parameters
    other = cell_config(compose([*TINY_QWEN, "pruner=random"]), "mmtok_resize_0.25@r0.55")
    assert (other.pruner.name, other.pruner.retain_ratio, other.pruner.image_scale) == ("mmtok", 0.55, 0.25)


@pytest.mark.parametrize(
    ("overrides", "pinned"),
    [
        # hashes computed before text-only, ratio cells and image_scale existed: they must not move
        (["model=tiny_llava", "benchmark=pope_local", "limit=4"], "40ccccf1637aa226"),
        (["model=tiny_llava", "benchmark=pope_local", "limit=4", "pruner=none"], "2289f0bd70b90795"),
        (["model=tiny_llava", "benchmark=pope_local", "limit=4", "pruner=none", "pruner.image_scale=1.0"],
         "2289f0bd70b90795"),
        (["model=tiny_llavanext", "benchmark=gqa_local", "pruner=divprune", "budget=40"], "2cfcaeaf9586538e"),
        (["model=qwen25vl_7b", "benchmark=mme", "pruner=mmtok", "budget=null", "pruner.retain_ratio=0.2"],
         "ffc52d3d5aa93fc6"),
        (["model=qwen25vl_7b", "benchmark=mme", "cells=[mmtok@r0.2]"], "ffc52d3d5aa93fc6"),
    ],
)  # fmt: skip
def test_earlier_run_identities_are_unchanged(overrides, pinned):
    cfg = compose(overrides)
    for cell in cfg.cells or [None]:
        assert _key(cell_config(cfg, cell) if cell else cfg) == pinned


def test_cells_of_files_named_none_or_variants_check_their_method():
    """A cell names a pruner file; the family check asks about the file's method (`name:`)."""
    validate(compose(["model=tiny_qwen25vl", "cells=[resize_0.5,mmtok_resize_0.25@r0.55,none@0]"]))
    with pytest.raises(ConfigError, match=r"^pruner .vispruner. does not apply to .* \(cell vispruner@8\)$"):
        validate(compose(["model=tiny_qwen25vl", "cells=[resize_0.5,vispruner@8]"]))


def test_sweep_cells_carry_their_ratio_and_label():
    from mmtok.run.sweep import experiment_cells

    cells = experiment_cells(None, [*TINY_QWEN, "cells=[none,mmtok@r0.2,mmtok@16,resize_0.5]"])
    assert [(c.cell, c.pruner, c.budget, c.retain_ratio, c.label) for c in cells] == [
        ("none", "none", None, None, "all"),
        ("mmtok@r0.2", "mmtok", None, 0.2, "r0.2"),
        ("mmtok@16", "mmtok", 16, None, "16"),
        ("resize_0.5", "resize_0.5", None, None, "all"),
    ]
    assert cells[1].config_hash == "17876bdaf817c826"
    (line,) = experiment_cells(None, [*TINY_QWEN, "pruner=mmtok", "budget=null", "pruner.retain_ratio=0.2"])
    assert (line.cell, line.retain_ratio, line.config_hash) == ("mmtok@r0.2", 0.2, "17876bdaf817c826")


def test_a_tiny_qwen_sweep_over_ratio_cells_completes_and_resumes(run_cli, tmp_path):
    cells = "cells=[none,mmtok@r0.2,divprune@r0.5,random@r0.25,none@0]"
    args = ["-m", "model=tiny_qwen25vl", "benchmark=pope_local", cells, "limit=2", "wandb.mode=disabled",
            "progress=false"]  # fmt: skip
    res = run_cli(args, cwd=tmp_path)
    assert res.returncode == 0, res.stdout[-2000:] + res.stderr[-2000:]
    rows = store.read_rows(tmp_path / "results" / "runs.csv")
    labels = [r["run_id"].split("_tiny_qwen25vl_")[1].split("_pope_local_")[0] for r in rows]
    assert labels == ["none-all", "mmtok-r0.2", "divprune-r0.5", "random-r0.25", "none-0"]
    assert {r["status"] for r in rows} == {"completed"}
    full = None
    for row, ratio in zip(rows, (1.0, 0.2, 0.5, 0.25, 0.0)):
        samples = [json.loads(s) for s in (tmp_path / row["run_dir"] / "samples.jsonl").read_text().splitlines()]
        full = full or [s["vision_tokens_full"] for s in samples]
        assert [s["vision_tokens_full"] for s in samples] == full
        assert [s["vision_tokens"] for s in samples] == [int(ratio * n) for n in full], row["run_id"]
        if 0 < ratio < 1:
            assert json.loads(row["pruner_params"])["retain_ratio"] == ratio and row["budget"] == ""
    again = run_cli(args, cwd=tmp_path)
    assert again.returncode == 0 and "nothing to run: every cell of the 1 job(s) has a completed run" in again.stdout
