"""The testbed table (mmtok/testbed/table.py): its grid, its rows' pruner parameters for the 4-layer
LLM, its markdown, and the oracle reference row's selection (mmtok/testbed/oracle.py)."""

from __future__ import annotations

import pytest

from mmtok.testbed.table import (
    BUDGETS,
    ROWS,
    UNRUNNABLE,
    Cell,
    Row,
    cells,
    markdown,
    pdrop_ratio,
    pruner_for,
    read_rows,
    row_by_label,
    write_rows,
)


def test_grid_is_none_plus_every_row_at_every_budget():
    grid = cells()
    for task in ("scenes_pope", "scenes_gqa"):
        mine = [c for c in grid if c.task == task]
        assert mine[0] == Cell(task, "none", None)
        columns = [r for r in ROWS if r.budgets == BUDGETS]
        assert len(mine) == 1 + len(columns) * len(BUDGETS) + 1 == 102
        assert mine[-1] == Cell(task, "text_only", 0)  # the one row off the columns, after them
    assert len({c.key for c in grid}) == len(grid)
    with pytest.raises(ValueError, match=r"row x: budgets \[8\] are not columns; valid: 0 \(text only\)"):
        Row("x", "mmtok", "pre-LLM", budgets=(8, 16))


def test_variant_rows_are_their_config_files_and_text_only_keeps_no_image_token():
    from mmtok.run.pruner import pruner_from_file

    files = [r for r in ROWS if r.label != r.method and r.label not in ("text_only",)]
    assert [r.label for r in files] == [
        "mmtok_tv_raw",
        "mmtok_tv_softmax",
        "mmtok_vv_raw",
        "mmtok_vv_softmax",
        "mmtok_adaptive_tau_v",
        "mmtok_pool_mean_pre",
        "mmtok_pool_max_post",
        "mmtok_plus_plus",
    ]
    for row in [*files, row_by_label("mmtok_llm")]:  # mmtok_llm's file pins K = 2 too
        for budget in (64, 4):
            ours = pruner_for(row, budget).for_family("llava")  # the testbed is a LLaVA: its tau_t
            assert ours == pruner_from_file(row.label, budget, model_type="llava"), row.label
    text_only = pruner_for(row_by_label("text_only"), 0)
    assert (type(text_only).__name__, text_only.budget) == ("NoPruner", 0)


def test_every_method_but_cdpruner_has_a_row_and_the_oracle_is_a_reference():
    from mmtok.pruners import PRUNERS

    methods = {r.method for r in ROWS}
    assert methods | set(UNRUNNABLE) | {"none"} == set(PRUNERS) | {"oracle"}
    assert set(UNRUNNABLE) == {"cdpruner"}
    assert [r.label for r in ROWS if r.stage == "reference"] == ["oracle", "text_only"]
    with pytest.raises(ValueError, match="unknown table row 'fastv3'; valid: oracle, random, mmtok"):
        row_by_label("fastv3")
    with pytest.raises(ValueError, match="row x: unknown budget_as 'kept'; valid: budget, counts, pdrop_ratio"):
        Row("x", "fastv", "in-LLM", budget_as="kept")


def test_in_llm_rows_prune_first_in_the_content_blind_layers():
    from transformers import LlavaConfig

    from mmtok.testbed.train import BLIND_LAYERS, configs

    config: LlavaConfig = configs()[2]
    layers = config.text_config.num_hidden_layers
    assert (layers, BLIND_LAYERS) == (4, 2)
    fastv = pruner_for(row_by_label("fastv"), 16)
    assert fastv.prune_layers(layers) == (1,) and fastv.kept_tokens(576, layers) == 16
    assert fastv.layer_schedule(576, config) == [576, 576, 16, 16]
    fastv.check_config(config)
    sparse = pruner_for(row_by_label("sparsevlm"), 16)
    assert sparse.prune_layers(layers) == (1,) and sparse.layer_counts(576) == (16,)
    for budget in BUDGETS:  # layer 2, the first that reads content, receives `budget` image tokens
        pdrop = pruner_for(row_by_label("pdrop"), budget)
        assert pdrop.prune_layers(layers) == (0, 1, 2)
        assert pdrop.layer_schedule(576, config)[2] == budget
    assert pruner_for(row_by_label("pdrop"), 64).layer_schedule(576, config) == [576, 192, 64, 21]
    assert pdrop_ratio(576) == 1.0
    dart = pruner_for(row_by_label("dart"), 16)
    assert dart.prune_layers(layers) == (1,) and dart.layer_schedule(576, config) == [576, 576, 20, 20]
    assert pruner_for(row_by_label("random"), 4).seed == 0
    mmtok_llm = pruner_for(row_by_label("mmtok_llm"), 16)
    assert mmtok_llm.layer_schedule(576, config) == [576, 576, 16, 16]


def test_rows_round_trip_and_fill_the_markdown(tmp_path):
    rows = [
        {
            "task": "scenes_pope",
            "pruner": "none",
            "budget": "",
            "n": 6,
            "score": 0.9,
            **dict.fromkeys(
                ("pope_random_f1", "pope_popular_f1", "pope_adversarial_f1", "pope_f1_avg", "pope_acc_avg"), 0.9
            ),
        },
        {
            "task": "scenes_pope",
            "pruner": "mmtok",
            "budget": "4",
            "n": 6,
            "score": 0.75,
            **dict.fromkeys(
                ("pope_random_f1", "pope_popular_f1", "pope_adversarial_f1", "pope_f1_avg", "pope_acc_avg"), 0.75
            ),
        },
    ]
    path = tmp_path / "table.csv"
    write_rows(path, rows)
    back = read_rows(path)
    assert [(r["pruner"], r["budget"], r["score"]) for r in back] == [("none", "", "0.9000"), ("mmtok", "4", "0.7500")]
    text = markdown(back, {"scenes_pope": 6})
    assert "Unpruned (576 tokens): **0.900**" in text
    assert "text_only" not in text.split("## scenes_pope")[1]  # no run, no line
    text = markdown([*back, {**back[0], "pruner": "text_only", "budget": "0", "score": "0.5000"}], {"scenes_pope": 6})
    assert "Unpruned (576 tokens): **0.900**\n\ntext_only (0 image tokens): **0.500**" in text
    assert text.count("| text_only | reference |") == 1  # its settings line; no budget columns
    assert "| mmtok | pre-LLM |  |  |  |  | 0.750 |" in text
    assert "| mmtok | 4 | 0.750 | 0.750 | 0.750 |  |" in text


def test_oracle_keeps_every_visible_colour_in_turn_then_background():
    import torch

    from mmtok.testbed.oracle import oracle_order

    labels = torch.tensor([0, 2, 2, 0, 5, 2, 0, 0])
    order = oracle_order(labels, torch.Generator().manual_seed(0))
    # colour 2's cells {1, 2, 5} and colour 5's {4} alternate, then the background in random order
    assert order.tolist() == [1, 4, 5, 2, 0, 3, 7, 6]
    assert oracle_order(torch.zeros(4, dtype=torch.long), torch.Generator().manual_seed(0)).tolist() == [0, 1, 3, 2]


def test_oracle_refuses_an_image_it_was_not_built_for():
    import torch

    from mmtok.testbed.oracle import OraclePruner, pixel_key

    class OneCrop:
        def encode(self, pixel_values):
            from mmtok.pruners import ImageCrops

            return [ImageCrops(proj=torch.zeros(1, 4, 2), pre=torch.zeros(1, 5, 2)) for _ in pixel_values]

    known = torch.zeros(1, 3, 2, 2)
    oracle = OraclePruner(budget=2, labels={pixel_key(known[0]): torch.tensor([0, 3, 0, 1])})
    (image,) = oracle.encode(OneCrop(), known)
    assert image.labels.tolist() == [0, 3, 0, 1]
    with pytest.raises(ValueError, match="oracle: an image that is not one of the scenes it was built for"):
        oracle.encode(OneCrop(), known + 1)


def test_plot_panels_split_the_methods_from_mmtoks_variants():
    from mmtok.testbed.table import plot_groups

    (methods_title, methods), (variants_title, variants) = plot_groups()
    assert (methods_title, variants_title) == ("methods", "MMTok and its variants")
    assert [r.label for r in variants][:3] == ["oracle", "text_only", "mmtok"]
    assert {r.label for r in variants[3:]} == {r.label for r in ROWS if r.method == "mmtok"} - {"mmtok"}
    assert {r.label for r in methods} == {r.label for r in ROWS} - {r.label for r in variants[3:]}


def test_score_row_counts_each_gqa_kind_and_the_mean_kept_tokens():
    from types import SimpleNamespace

    from mmtok.testbed.scores import score_row
    from tests._records import sample_record

    def asked(question, answer, target, kept):
        return sample_record(question=question, answer=answer, target=target, vision_tokens=kept)

    samples = [
        asked("Which color is the circle?", "Red", "red", 16),  # right: case does not count
        asked("Which color is the square?", "blue", "green", 16),
        asked("Is the circle bigger than the square?", "yes", "yes", 8),
        asked("What color is the biggest shape?", "red", "blue", 8),
        asked("Is there a circle?", "yes", "yes", 12),  # another kind: in no column
    ]
    out = SimpleNamespace(metrics={"gqa_exact_match": 0.4}, samples=samples)
    row = score_row(Cell("scenes_gqa", "mmtok", 16), out)
    assert row == {
        "task": "scenes_gqa", "pruner": "mmtok", "budget": "16", "n": 5, "score": 0.4,
        "acc_choose": 0.5, "acc_size": 1.0, "acc_bigcolor": 0.0, "vision_tokens_mean": 12.0,
    }  # fmt: skip
