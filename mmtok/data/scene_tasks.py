"""The scene benchmarks (scenes_pope, scenes_gqa) the trained testbed model is scored on, as local
lmms-eval tasks in the real POPE / GQA formats.

`mmtok.data.build_dataset(out_dir, "scenes_pope" | "scenes_gqa", n=..., seed=...)` calls the
builders below; the parquet columns are those of `mmtok.data.local` (lmms-lab/POPE, lmms-lab/GQA),
the task YAML includes the same templates, so lmms-eval scores them with its own POPE / GQA code and
`mmtok.eval.metrics` adds POPE's per-split F1. Scenes come from `mmtok.data.scenes` with the
builder's random stream (`"<name>:<seed>"`), disjoint from the training streams.

- scenes_pope: two questions per image, "Is there a <colour> object in the image?", one yes (a visible
  colour) and one no; images cycle through POPE's splits, whose negative is drawn as in POPE: uniformly
  among the absent colours (random), the absent colour visible in most of the benchmark's images
  (popular), the absent colour that co-occurs most with the image's colours (adversarial).
- scenes_gqa: up to three questions per image (GQA's structural / semantic / detailed types):
  choose   "Which color is in the image, red or blue?"  (choose / attr / chooseAttr)
  size     "Is the red object big or small?"             (choose / attr / chooseSize)
  bigcolor "What color is the big object?"               (query / attr / queryAttr)
"""

from __future__ import annotations

import math
import random
from pathlib import Path

from mmtok.data import scene_questions as Q
from mmtok.data.local import GQA_COLUMNS, POPE_SPLITS, write_gqa, write_parquet
from mmtok.data.scenes import COLOR_NAMES, Scene, counts, label_grid, render, sample_scene
from mmtok.data.tasks import benchmark

GQA_TYPES = {
    "choose": ("choose", "attr", "chooseAttr"),
    "size": ("choose", "attr", "chooseSize"),
    "bigcolor": ("query", "attr", "queryAttr"),
}


def _visible(rng: random.Random, k: int):
    out = []
    for _ in range(k):
        scene = sample_scene(rng)
        out.append((scene, counts(label_grid(scene))))
    # every POPE image needs a visible colour (an object can vanish behind another only partly)
    return [(s, c) for s, c in out if c]


def _pope_plan(n: int, rng: random.Random) -> list[tuple[Scene, str, tuple[Q.Question, Q.Question]]]:
    """(scene, POPE split, (yes question, no question)) per image, in row order."""
    scenes = []
    while len(scenes) < math.ceil(n / 2):
        scenes += _visible(rng, math.ceil(n / 2) - len(scenes))
    frequency = {c: sum(c in cells for _, cells in scenes) for c in COLOR_NAMES}
    cooccur = {(a, b): sum(a in cells and b in cells for _, cells in scenes) for a in COLOR_NAMES for b in COLOR_NAMES}
    plan = []
    for i, (scene, cells) in enumerate(scenes):
        split = POPE_SPLITS[i % 3]
        present = sorted(cells, key=COLOR_NAMES.index)
        absent = [c for c in COLOR_NAMES if c not in cells]
        if split == "random":
            negative = rng.choice(absent)
        elif split == "popular":
            negative = max(absent, key=lambda c: (frequency[c], -COLOR_NAMES.index(c)))
        else:
            negative = max(absent, key=lambda c: (sum(cooccur[c, p] for p in present), -COLOR_NAMES.index(c)))
        plan.append((scene, split, (Q.exist(rng.choice(present), True), Q.exist(negative, False))))
    return plan


def build_scenes_pope(out_dir: Path, n: int, rng: random.Random) -> list[Path]:
    import datasets

    rows = {k: [] for k in ("id", "question_id", "question", "answer", "image_source", "image", "category")}
    for i, (scene, split, questions) in enumerate(_pope_plan(n, rng)):
        image = render(scene)
        for q in questions:
            row = len(rows["id"])
            rows["id"].append(str(row))
            rows["question_id"].append(str(row + 1))
            rows["question"].append(q.text)
            rows["answer"].append(q.answer)
            rows["image_source"].append(f"scenes_{i:06d}")
            rows["image"].append(image)
            rows["category"].append(split)
    rows = {k: v[:n] for k, v in rows.items()}
    string = datasets.Value("string")
    features = datasets.Features({k: (datasets.Image() if k == "image" else string) for k in rows})
    path = out_dir / benchmark("scenes_pope").data_file
    write_parquet(rows, features, path)
    return [path]


def _gqa_plan(n: int, rng: random.Random) -> list[tuple[str, Scene, list[Q.Question]]]:
    """(image id, scene, its questions) per image with at least one question, until n questions."""
    plan, asked_total, i = [], 0, 0
    while asked_total < n:
        scene = sample_scene(rng)
        cells = counts(label_grid(scene))
        asked = [q for kind in GQA_TYPES if (q := Q.ask(rng, scene, cells, kind)) is not None]
        i += 1
        if not asked:
            continue
        plan.append((f"s{100_000 + i}", scene, asked))
        asked_total += len(asked)
    return plan


def build_scenes_gqa(out_dir: Path, n: int, rng: random.Random) -> list[Path]:
    images = {"id": [], "image": []}
    rows = {k: [] for k in GQA_COLUMNS}
    for image_id, scene, asked in _gqa_plan(n, rng):
        images["id"].append(image_id)
        images["image"].append(render(scene))
        for q in asked:
            structural, semantic, detailed = GQA_TYPES[q.kind]
            qid = str(30_000_000 + len(rows["id"]))
            rows["id"].append(qid)
            rows["imageId"].append(image_id)
            rows["question"].append(q.text)
            rows["answer"].append(q.answer)
            rows["fullAnswer"].append(f"The answer is {q.answer}.")
            rows["isBalanced"].append(True)
            rows["groups"].append({"global": q.answer if structural == "query" else None, "local": f"{detailed}"})
            rows["entailed"].append("[]")
            rows["equivalent"].append(f"['{qid}']")
            rows["types"].append({"structural": structural, "semantic": semantic, "detailed": detailed})
            rows["semanticStr"].append(f"{q.kind}: {q.key}")
    rows = {k: v[:n] for k, v in rows.items()}
    used = set(rows["imageId"])
    keep = [j for j, image_id in enumerate(images["id"]) if image_id in used]
    images = {k: [v[j] for j in keep] for k, v in images.items()}
    return write_gqa(rows, images, out_dir, "scenes_gqa")


def benchmark_scenes(name: str, n: int, seed: int = 0) -> list[Scene]:
    """The scenes behind `build_dataset(..., name, n=n, seed=seed)` (each image once, first use
    first), without rendering: what a ground-truth reference (the testbed's oracle) reads."""
    rng = random.Random(f"{name}:{seed}")
    if name == "scenes_pope":
        return [scene for scene, _, _ in _pope_plan(n, rng)][: math.ceil(n / 2)]
    if name == "scenes_gqa":
        plan, rows = [], 0
        for _, scene, asked in _gqa_plan(n, rng):
            if rows < n:
                plan.append(scene)
            rows += len(asked)
        return plan
    raise ValueError(f"no scenes behind benchmark {name!r}; valid: scenes_pope, scenes_gqa")


def question_kind(question: str) -> str:
    """The kind of a testbed question from its text (for per-kind accuracy in the table)."""
    for kind, start in (("exist", "Is there"), ("choose", "Which color"), ("size", "Is the"), ("bigcolor", "What")):
        if question.startswith(start):
            return kind
    raise ValueError(f"not a testbed question: {question!r}")
