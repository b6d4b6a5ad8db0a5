"""Small synthetic benchmarks in the real POPE / GQA / MME formats, for offline runs and tests.

`mmtok.data.build_dataset(out_dir, "pope", n=60, seed=0)` draws images of simple coloured shapes (so every
question has a true answer), writes the parquet file(s) with the same columns and types as the
lmms-lab hub datasets that lmms-eval's built-in tasks read, and writes the task YAML next to them
(`mmtok.data.tasks.write_task_yaml`). Deterministic in (benchmark, n, seed).

Formats (column: type):
- POPE  (lmms-lab/POPE, split test): id: str, question_id: str, question: str, answer: "yes"/"no",
        image_source: str, image: Image, category: "random" | "popular" | "adversarial".
        Two questions per image (one yes, one no; POPE is balanced). The splits differ in how the
        absent object of the "no" question is drawn, as in POPE: uniformly (random), the most
        frequent shape of the testbed (popular), the shape that most often co-occurs with the
        image's shapes (adversarial). Images cycle through the splits so a small `limit` covers all.
- GQA   (lmms-lab/GQA): `testdev_balanced_instructions` -> id: str, imageId: str, question: str,
        answer: str, fullAnswer: str, isBalanced: bool, groups: {global, local}, entailed: str,
        equivalent: str, types: {structural, semantic, detailed}, semanticStr: str (the hub table
        also has `annotations` and the parsed `semantic` program, which no metric reads; left out);
        `testdev_balanced_images` -> id: str, image: Image. Three questions per image (verify /
        query shape / query colour), joined on imageId by the task's `process_docs`.
- MME   (lmms-lab/MME, split test): question_id: str (the image file name "category/0000.png",
        shared by the pair), image: Image, question: str ending in " Please answer yes or no.",
        answer: "Yes"/"No", category. Questions come in consecutive pairs (Yes first, then No) on
        the same image; pairs cycle through perception (existence, count, position, color) and
        cognition (commonsense_reasoning, numerical_calculation) categories.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, ImageDraw

from mmtok.data.tasks import benchmark

SHAPES = ("circle", "square", "triangle", "cross")
COLORS = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (40, 70, 220), "yellow": (235, 200, 20)}
# (width, height): different aspect ratios, so a tiling family picks different anyres grids
SIZES = ((96, 64), (64, 96), (80, 80), (112, 56))
POPE_SPLITS = ("random", "popular", "adversarial")
MME_CATEGORIES = (
    "existence",
    "count",
    "position",
    "color",
    "commonsense_reasoning",
    "numerical_calculation",
)
MME_SUFFIX = " Please answer yes or no."
GQA_COLUMNS = (
    "id", "imageId", "question", "answer", "fullAnswer", "isBalanced", "groups", "entailed", "equivalent", "types",
    "semanticStr",
)  # fmt: skip


@dataclass(frozen=True)
class Item:
    shape: str
    color: str
    cx: int  # centre, pixels
    cy: int


def random_scene(rng: random.Random, min_items: int = 1) -> tuple[tuple[int, int], list[Item]]:
    """1-3 distinct shapes with distinct colours, left to right in separate horizontal slots."""
    size = rng.choice(SIZES)
    k = rng.randint(max(1, min_items), 3)
    shapes = rng.sample(SHAPES, k)
    colors = rng.sample(sorted(COLORS), k)
    width, height = size
    slot = width / k
    items = [
        Item(s, c, int(slot * (i + 0.5)), int(height * rng.uniform(0.35, 0.65)))
        for i, (s, c) in enumerate(zip(shapes, colors))
    ]
    return size, items


def draw_scene(size: tuple[int, int], items: list[Item], rng: random.Random) -> Image.Image:
    background = tuple(rng.randint(200, 245) for _ in range(3))
    image = Image.new("RGB", size, background)
    draw = ImageDraw.Draw(image)
    r = int(min(size[0] / (2 * len(items)), size[1] / 2) * 0.7)
    for it in items:
        fill = COLORS[it.color]
        box = (it.cx - r, it.cy - r, it.cx + r, it.cy + r)
        if it.shape == "circle":
            draw.ellipse(box, fill=fill)
        elif it.shape == "square":
            draw.rectangle(box, fill=fill)
        elif it.shape == "triangle":
            draw.polygon([(it.cx, it.cy - r), (it.cx - r, it.cy + r), (it.cx + r, it.cy + r)], fill=fill)
        else:  # cross
            w = max(1, r // 3)
            draw.rectangle((it.cx - w, it.cy - r, it.cx + w, it.cy + r), fill=fill)
            draw.rectangle((it.cx - r, it.cy - w, it.cx + r, it.cy + w), fill=fill)
    return image


def write_parquet(rows: dict, features, path: Path) -> None:
    import datasets

    datasets.Dataset.from_dict(rows, features=features).to_parquet(str(path))


# -- POPE --------------------------------------------------------------------------------------
def build_pope(out_dir: Path, n: int, rng: random.Random) -> list[Path]:
    import datasets

    scenes = [random_scene(rng) for _ in range(math.ceil(n / 2))]
    frequency = {s: sum(s in {it.shape for it in items} for _, items in scenes) for s in SHAPES}
    cooccur = {
        (a, b): sum(a in names and b in names for names in ({it.shape for it in items} for _, items in scenes))
        for a in SHAPES
        for b in SHAPES
    }
    rows = {k: [] for k in ("id", "question_id", "question", "answer", "image_source", "image", "category")}
    for i, (size, items) in enumerate(scenes):
        split = POPE_SPLITS[i % 3]
        present = [it.shape for it in items]
        absent = [s for s in SHAPES if s not in present]
        if split == "random":
            negative = rng.choice(absent)
        elif split == "popular":
            negative = max(absent, key=lambda s: (frequency[s], -SHAPES.index(s)))
        else:
            negative = max(absent, key=lambda s: (sum(cooccur[s, p] for p in present), -SHAPES.index(s)))
        image = draw_scene(size, items, rng)
        for shape, answer in ((rng.choice(present), "yes"), (negative, "no")):
            row = len(rows["id"])
            rows["id"].append(str(row))
            rows["question_id"].append(str(row + 1))
            rows["question"].append(f"Is there a {shape} in the image?")
            rows["answer"].append(answer)
            rows["image_source"].append(f"testbed_{i:06d}")
            rows["image"].append(image)
            rows["category"].append(split)
    rows = {k: v[:n] for k, v in rows.items()}
    string = datasets.Value("string")
    features = datasets.Features({k: (datasets.Image() if k == "image" else string) for k in rows})
    path = out_dir / benchmark("pope").data_file
    write_parquet(rows, features, path)
    return [path]


# -- GQA ---------------------------------------------------------------------------------------
def build_gqa(out_dir: Path, n: int, rng: random.Random) -> list[Path]:
    scenes = [random_scene(rng) for _ in range(math.ceil(n / 3))]
    images = {"id": [], "image": []}
    rows = {k: [] for k in GQA_COLUMNS}

    def add(image_id, question, answer, full, structural, semantic, detailed, program):
        qid = str(20_000_000 + len(rows["id"]))
        rows["id"].append(qid)
        rows["imageId"].append(image_id)
        rows["question"].append(question)
        rows["answer"].append(answer)
        rows["fullAnswer"].append(full)
        rows["isBalanced"].append(True)
        rows["groups"].append({"global": None if structural == "verify" else answer, "local": f"{detailed}-{answer}"})
        rows["entailed"].append("[]")
        rows["equivalent"].append(f"['{qid}']")
        rows["types"].append({"structural": structural, "semantic": semantic, "detailed": detailed})
        rows["semanticStr"].append(program)

    for i, (size, items) in enumerate(scenes):
        image_id = f"n{100_000 + i}"
        images["id"].append(image_id)
        images["image"].append(draw_scene(size, items, rng))
        target = rng.choice(items)
        if i % 2 == 0:  # verify, yes
            shape, color, answer = target.shape, target.color, "yes"
        else:  # verify, no: a colour/shape combination that is not in the image
            others = [c for c in COLORS if c != target.color]
            shape, color, answer = target.shape, rng.choice(others), "no"
        add(
            image_id,
            f"Is there a {color} {shape}?",
            answer,
            f"{answer.capitalize()}, there is {'a' if answer == 'yes' else 'no'} {color} {shape}.",
            "verify",
            "attr",
            "existAttr",
            f"select: {shape} ->filter color: {color} ->exist: ?",
        )
        add(
            image_id,
            f"What shape is the {target.color} object?",
            target.shape,
            f"The {target.color} object is a {target.shape}.",
            "query",
            "cat",
            "categoryAttr",
            f"select: {target.color} object ->query: name",
        )
        add(
            image_id,
            f"What color is the {target.shape}?",
            target.color,
            f"The {target.shape} is {target.color}.",
            "query",
            "attr",
            "chooseAttr",
            f"select: {target.shape} ->query: color",
        )
    rows = {k: v[:n] for k, v in rows.items()}
    return write_gqa(rows, images, out_dir, "gqa")


def write_gqa(rows: dict, images: dict, out_dir: Path, bench_name: str) -> list[Path]:
    """GQA's two parquet files (instructions, images) with the real dataset's column types."""
    import datasets

    string = datasets.Value("string")
    features = datasets.Features(
        {
            "id": string,
            "imageId": string,
            "question": string,
            "answer": string,
            "fullAnswer": string,
            "isBalanced": datasets.Value("bool"),
            "groups": {"global": string, "local": string},
            "entailed": string,
            "equivalent": string,
            "types": {"structural": string, "semantic": string, "detailed": string},
            "semanticStr": string,
        }
    )
    bench = benchmark(bench_name)
    inst, imgs = out_dir / bench.data_file, out_dir / bench.image_file
    write_parquet(rows, features, inst)
    write_parquet(images, datasets.Features({"id": string, "image": datasets.Image()}), imgs)
    return [inst, imgs]


# -- MME ---------------------------------------------------------------------------------------
def _mme_pair(category: str, items: list[Item], rng: random.Random) -> tuple[str, str]:
    """(yes question, no question) for one image of `category` (without the yes/no suffix)."""
    shapes = [it.shape for it in items]
    if category == "existence":
        absent = [s for s in SHAPES if s not in shapes]
        return f"Is there a {rng.choice(shapes)} in this image?", f"Is there a {rng.choice(absent)} in this image?"
    if category == "count":
        k = len(items)
        return f"Are there {k} shapes in this image?", f"Are there {k + 1} shapes in this image?"
    if category == "position":
        a, b = rng.sample(items, 2)
        left, right = (a, b) if a.cx < b.cx else (b, a)
        return (
            f"Is the {left.shape} on the left of the {right.shape}?",
            f"Is the {right.shape} on the left of the {left.shape}?",
        )
    if category == "color":
        it = rng.choice(items)
        other = rng.choice([c for c in COLORS if c != it.color])
        return f"Is the {it.shape} {it.color} in this image?", f"Is the {it.shape} {other} in this image?"
    if category == "commonsense_reasoning":
        return (
            "Could the shapes in this image be told apart by their outlines alone?",
            "Are all the shapes in this image identical?",
        )
    k = len(items)  # numerical_calculation
    return (
        f"Is the number of shapes in this image plus 2 equal to {k + 2}?",
        f"Is the number of shapes in this image plus 2 equal to {k + 3}?",
    )


def build_mme(out_dir: Path, n: int, rng: random.Random) -> list[Path]:
    import datasets

    if n % 2:
        raise ValueError(f"MME questions come in pairs: n must be even, got {n}")
    rows = {k: [] for k in ("question_id", "image", "question", "answer", "category")}
    for p in range(n // 2):
        category = MME_CATEGORIES[p % len(MME_CATEGORIES)]
        # position and "identical shapes" questions need two shapes to be meaningful
        size, items = random_scene(rng, min_items=2 if category in ("position", "commonsense_reasoning") else 1)
        image = draw_scene(size, items, rng)
        for question, answer in zip(_mme_pair(category, items, rng), ("Yes", "No")):
            rows["question_id"].append(f"{category}/{p:04d}.png")
            rows["image"].append(image)
            rows["question"].append(question + MME_SUFFIX)
            rows["answer"].append(answer)
            rows["category"].append(category)
    string = datasets.Value("string")
    features = datasets.Features({k: (datasets.Image() if k == "image" else string) for k in rows})
    path = out_dir / benchmark("mme").data_file
    write_parquet(rows, features, path)
    return [path]
