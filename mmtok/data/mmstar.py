"""A small synthetic benchmark in MMStar's real format (Lin-Chen/MMStar, split `val`), for offline
runs and tests of lmms-eval 0.7.3's own `mmstar` scoring.

Columns (as the hub card declares them): index: int64, question: str (the question, then
"\\nOptions: A: ..., B: ..., C: ..., D: ..."), image: Image, answer: "A".."D", category: str,
l2_category: str, meta_info: {source, split, image_path}. lmms-eval scores a row by the option letter
it extracts from the answer; a category's score is the mean of its three sub-categories' (l2)
accuracies, `average` the mean over every sub-category present.

Rows cycle through the six categories, and within a category through its three sub-categories, so
a small `limit` reaches every category (6 rows) and every sub-category (18 rows). Each question has
one true option on the drawn image (the shapes of `mmtok.data.local`); the other three options are
false there; the true option's letter is drawn at random.
"""

from __future__ import annotations

import random
from pathlib import Path

from mmtok.data.local import COLORS, SHAPES, Item, draw_scene, random_scene, write_parquet
from mmtok.data.tasks import benchmark

# lmms-eval 0.7.3's `mmstar` categories and their sub-categories (its utils.eval_type_dict), in order
CATEGORIES: dict[str, tuple[str, str, str]] = {
    "coarse perception": ("image scene and topic", "image style & quality", "image emotion"),
    "fine-grained perception": ("object counting", "recognition", "localization"),
    "instance reasoning": (
        "single-instance reasoning",
        "cross-instance attribute reasoning",
        "cross-instance relation reasoning",
    ),
    "logical reasoning": ("code & sequence reasoning", "diagram reasoning", "common reasoning"),
    "science & technology": (
        "biology & chemistry & physics",
        "electronics & energy & mechanical eng.",
        "geography & earth science & agriculture",
    ),
    "math": ("geometry", "numeric commonsense and calculation", "statistical reasoning"),
}
LETTERS = ("A", "B", "C", "D")


def _question(category: str, items: list[Item], rng: random.Random) -> tuple[str, str, list[str]]:
    """(question, true option, three false options) about the drawn shapes, by category."""
    left = min(items, key=lambda it: it.cx)
    right = max(items, key=lambda it: it.cx)
    target = rng.choice(items)
    k = len(items)
    if category == "coarse perception":
        return "How many shapes are in the image?", str(k), [str(x) for x in (1, 2, 3, 4) if x != k]
    if category == "fine-grained perception":
        wrong = [c for c in sorted(COLORS) if c != target.color]
        return f"What color is the {target.shape}?", target.color, wrong
    if category == "instance reasoning":
        return "Which shape is on the far left of the image?", left.shape, [s for s in SHAPES if s != left.shape]
    if category == "logical reasoning":
        return f"Which shape is {target.color}?", target.shape, [s for s in SHAPES if s != target.shape]
    if category == "science & technology":
        wrong = [c for c in sorted(COLORS) if c != right.color]
        return "What color is the shape on the far right of the image?", right.color, wrong
    total = k + 2  # math
    return "What is the number of shapes in the image plus 2?", str(total), [str(total + d) for d in (-1, 1, 2)]


def build_mmstar(out_dir: Path, n: int, rng: random.Random) -> list[Path]:
    import datasets

    names = list(CATEGORIES)
    rows = {k: [] for k in ("index", "question", "image", "answer", "category", "l2_category", "meta_info")}
    for i in range(n):
        category = names[i % len(names)]
        l2 = CATEGORIES[category][(i // len(names)) % 3]
        size, items = random_scene(rng)
        image = draw_scene(size, items, rng)
        question, true, false = _question(category, items, rng)
        options = [true, *rng.sample(false, 3)]
        rng.shuffle(options)
        listed = ", ".join(f"{letter}: {option}" for letter, option in zip(LETTERS, options))
        rows["index"].append(i)
        rows["question"].append(f"{question}\nOptions: {listed}")
        rows["image"].append(image)
        rows["answer"].append(LETTERS[options.index(true)])
        rows["category"].append(category)
        rows["l2_category"].append(l2)
        rows["meta_info"].append({"source": "mmtok_testbed", "split": "val", "image_path": f"images/{i}.jpg"})
    string = datasets.Value("string")
    features = datasets.Features(
        {
            "index": datasets.Value("int64"),
            "question": string,
            "image": datasets.Image(),
            "answer": string,
            "category": string,
            "l2_category": string,
            "meta_info": {"source": string, "split": string, "image_path": string},
        }
    )
    path = out_dir / benchmark("mmstar").data_file
    write_parquet(rows, features, path)
    return [path]
