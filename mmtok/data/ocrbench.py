"""A small synthetic benchmark in OCRBench's real format (echo840/OCRBench, split `test`), for offline
runs and tests of lmms-eval 0.7.3's own `ocrbench` scoring.

Columns (as the hub card declares them): dataset: str (the source set; "HME100k" switches lmms-eval
to its space-insensitive match), question: str, question_type: str (one of the ten OCRBench
types), answer: list[str] (any of them, contained in the prediction, scores 1), image: Image.
Each image is a word, number or expression drawn in PIL's default font on a plain background, and
the answer is that text. Rows cycle through the ten types in lmms-eval's order, so 10 rows reach
every type.

lmms-eval's aggregation divides the number of correct answers by 1000 (the hub set's size), so on
fewer rows its `ocrbench_accuracy` is correct / 1000, not a fraction of the rows evaluated.
"""

from __future__ import annotations

import random
from pathlib import Path

from PIL import Image, ImageDraw, ImageFont

from mmtok.data.local import write_parquet
from mmtok.data.tasks import benchmark

# (question_type, source dataset, question) in lmms-eval 0.7.3's order (ocrbench/utils.OCRBench_score)
TYPES: tuple[tuple[str, str, str], ...] = (
    ("Regular Text Recognition", "IIIT5K", "what is written in the image?"),
    ("Irregular Text Recognition", "IC15_1811", "what is written in the image?"),
    ("Artistic Text Recognition", "WordArt", "what is written in the image?"),
    ("Handwriting Recognition", "IAM", "what is written in the image?"),
    ("Digit String Recognition", "ORAND", "what is the number in the image?"),
    ("Non-Semantic Text Recognition", "NonSemanticText", "what is written in the image?"),
    ("Scene Text-centric VQA", "STVQA", "What is the word on the sign?"),
    ("Doc-oriented VQA", "docVQA", "What is the title of the document?"),
    (
        "Key Information Extraction",
        "SROIE",
        "what is the total amount of this receipt? Answer this question using the text in the image directly.",
    ),
    (
        "Handwritten Mathematical Expression Recognition",
        "HME100k",
        "Please write out the expression of the formula in the image using LaTeX format.",
    ),
)
WORDS = ("STOP", "OPEN", "SALE", "EXIT", "CAFE", "BOOK", "PARK", "TAXI", "HOTEL", "BANK", "MILK", "RAIN")


def _text(question_type: str, rng: random.Random) -> tuple[str, str]:
    """(what is drawn, the answer) for one row of `question_type`."""
    if question_type == "Digit String Recognition":
        digits = "".join(rng.choice("0123456789") for _ in range(4))
        return digits, digits
    if question_type == "Non-Semantic Text Recognition":
        letters = "".join(rng.choice("bcdfghjklmnpqrstvwxz") for _ in range(4))
        return letters, letters
    if question_type == "Key Information Extraction":
        amount = f"{rng.randint(1, 99)}.{rng.randint(0, 99):02d}"
        return f"TOTAL {amount}", amount
    if question_type == "Handwritten Mathematical Expression Recognition":
        a, b = rng.randint(1, 9), rng.randint(1, 9)
        return f"x={a}+{b}", f"x = {a} + {b}"
    word = rng.choice(WORDS)
    return (word.lower(), word.lower()) if question_type == "Handwriting Recognition" else (word, word)


def _render(text: str, rng: random.Random) -> Image.Image:
    font = ImageFont.load_default(size=16)
    background = tuple(rng.randint(215, 250) for _ in range(3))
    ink = tuple(rng.randint(0, 60) for _ in range(3))
    left, top, right, bottom = font.getbbox(text)
    image = Image.new("RGB", (right - left + 16, bottom - top + 12), background)
    ImageDraw.Draw(image).text((8 - left, 6 - top), text, fill=ink, font=font)
    return image


def build_ocrbench(out_dir: Path, n: int, rng: random.Random) -> list[Path]:
    import datasets

    rows = {k: [] for k in ("dataset", "question", "question_type", "answer", "image")}
    for i in range(n):
        question_type, source, question = TYPES[i % len(TYPES)]
        drawn, answer = _text(question_type, rng)
        rows["dataset"].append(source)
        rows["question"].append(question)
        rows["question_type"].append(question_type)
        rows["answer"].append([answer])
        rows["image"].append(_render(drawn, rng))
    string = datasets.Value("string")
    features = datasets.Features(
        {
            "dataset": string,
            "question": string,
            "question_type": string,
            "answer": datasets.Sequence(string),
            "image": datasets.Image(),
        }
    )
    path = out_dir / benchmark("ocrbench").data_file
    write_parquet(rows, features, path)
    return [path]
