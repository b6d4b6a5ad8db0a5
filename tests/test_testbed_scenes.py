"""The synthetic scenes and their POPE / GQA-format question sets (mmtok/testbed)."""

from __future__ import annotations

import random

import numpy as np
import pandas as pd
import pytest

from mmtok.data import build_dataset
from mmtok.data import scene_questions as Q
from mmtok.data.scenes import COLOR_NAMES, GRID, Obj, Scene, counts, flip, label_grid, render, sample_scene


def test_label_grid_is_the_majority_colour_of_each_patch():
    # a red square covering cells (1..2, 1..2) exactly, and a blue one covering half of a cell only
    objects = (Obj("red", "rect", (14, 14, 42, 42), False), Obj("blue", "rect", (70, 0, 77, 14), False))
    scene = Scene(objects, (200,) * 3, 0)
    labels = label_grid(scene)
    assert labels.shape == (GRID, GRID)
    red = COLOR_NAMES.index("red") + 1
    assert np.argwhere(labels == red).tolist() == [[1, 1], [1, 2], [2, 1], [2, 2]]
    assert counts(labels) == {"red": 4}  # blue covers exactly half of its cell: not more than 50 %


def test_occluded_colours_are_absent_and_flip_mirrors_the_grid():
    rng = random.Random(3)
    for _ in range(20):
        scene = sample_scene(rng)
        labels = label_grid(scene)
        assert np.array_equal(label_grid(flip(scene)), labels[:, ::-1])
        assert set(counts(labels)) <= {o.color for o in scene.objects}
        assert len({o.color for o in scene.objects}) == len(scene.objects)
    assert np.array_equal(np.asarray(render(scene)), np.asarray(render(scene)))  # noise seeded by the scene


def test_questions_follow_the_visible_cells():
    rng = random.Random(0)
    scene = sample_scene(rng)
    cells = counts(label_grid(scene))
    for _ in range(50):
        q = Q.ask(rng, scene, cells, "exist")
        color = q.text.split()[3]
        assert q.answer == ("yes" if color in cells else "no")
    with pytest.raises(ValueError, match="unknown question kind 'count'; valid: exist, choose, size, bigcolor"):
        Q.ask(rng, scene, cells, "count")


def test_tokenizer_is_one_token_per_word_with_the_image_placeholder():
    tok = Q.build_tokenizer()
    ids = tok(Q.prompt_text("Is there a red object in the image?"))["input_ids"]
    words = tok.convert_ids_to_tokens(ids)
    assert words[:4] == ["<s>", "user", ":", "<image>"] and words[-2:] == ["assistant", ":"]
    assert "<unk>" not in words and words[7] == "red"


def test_scenes_pope_negatives_follow_pope_sampling(tmp_path):
    bed = build_dataset(tmp_path, "scenes_pope", n=120, seed=0)
    df = pd.read_parquet(bed.files[0])
    assert len(df) == 120 and set(df.category) == {"random", "popular", "adversarial"}
    assert (df.groupby("category").answer.value_counts() == 20).all()  # balanced yes / no per split
    again = pd.read_parquet(build_dataset(tmp_path / "again", "scenes_pope", n=120, seed=0).files[0])
    assert df.drop(columns="image").equals(again.drop(columns="image"))
    assert [x["bytes"] for x in df.image] == [x["bytes"] for x in again.image]  # deterministic
    # the popular split asks about fewer distinct absent colours than the random split
    no = df[df.answer == "no"]
    assert no[no.category == "popular"].question.nunique() < no[no.category == "random"].question.nunique()


def test_scenes_gqa_has_short_exact_match_answers_of_three_kinds(tmp_path):
    bed = build_dataset(tmp_path, "scenes_gqa", n=90, seed=0)
    df = pd.read_parquet(bed.files[0])
    images = pd.read_parquet(bed.files[1])
    assert len(df) == 90 and set(df.imageId) == set(images.id)
    kinds = {t["detailed"] for t in df.types}
    assert kinds == {"chooseAttr", "chooseSize", "queryAttr"}
    assert set(df.answer) <= set(COLOR_NAMES) | {"big", "small"}
    for q, a in zip(df.question, df.answer):
        if q.startswith("Which color"):
            assert a in q
