"""The testbed table's grid, pruner parameters for the 2-layer LLM, and its markdown (mmtok/testbed/table.py)."""

from __future__ import annotations

from mmtok.testbed.table import BUDGETS, PRUNERS, Cell, cells, markdown, pruner_for, read_rows, write_rows


def test_grid_is_none_plus_every_pruner_at_every_budget():
    grid = cells()
    for task in ("scenes_pope", "scenes_gqa"):
        mine = [c for c in grid if c.task == task]
        assert mine[0] == Cell(task, "none", None)
        assert len(mine) == 1 + len(PRUNERS) * len(BUDGETS) == 36
    assert len({c.key for c in grid}) == len(grid)


def test_in_llm_pruners_get_parameters_a_two_layer_llm_has():
    from transformers import LlavaConfig

    from mmtok.testbed.train import configs

    config: LlavaConfig = configs()[2]
    assert config.text_config.num_hidden_layers == 2
    fastv = pruner_for("fastv", 4)
    assert fastv.prune_layers(2) == (0,) and fastv.kept_tokens(576, 2) == 4
    fastv.check_config(config)
    sparse = pruner_for("sparsevlm", 16)
    assert sparse.prune_layers(2) == (0,) and sparse.layer_counts(576) == (16,)
    assert pruner_for("random", 4).seed == 0


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
    assert "| mmtok |  |  |  |  | 0.750 |" in text
    assert "| mmtok | 4 | 0.750 | 0.750 | 0.750 |" in text
