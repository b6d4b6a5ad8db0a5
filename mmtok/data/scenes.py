"""Synthetic scenes for the trained testbed: coloured rectangles / ellipses on a mildly noisy background.

A scene is 1-4 objects with distinct colours, drawn in order (later ones occlude earlier ones) on a
336x336 canvas. The ground truth every question uses is the *patch grid*: a cell's label is the colour
of the object covering more than half of its pixels, else "bg". Questions are answered from those
labels, so a colour hidden behind another object is absent, exactly as the model can see it.

Why colour, not shape: inside a 14-px interior patch a silhouette is invisible, and CLIP's
`pre_layrnorm` right after the patch conv normalises texture energy away; colour is learned at once.

Colours are drawn with a skewed prior and co-occur by hue family, so POPE's popular (most frequent)
and adversarial (most co-occurring) negatives differ from uniform ones as on the real benchmark.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 336
PATCH = 14
GRID = IMAGE_SIZE // PATCH  # 24: 576 patch tokens

COLORS = {
    "red": (215, 35, 35),
    "green": (40, 165, 55),
    "blue": (40, 75, 215),
    "yellow": (230, 205, 30),
    "purple": (135, 55, 185),
    "orange": (245, 135, 20),
    "cyan": (40, 200, 210),
    "pink": (240, 130, 190),
    "brown": (125, 75, 35),
    "black": (25, 25, 25),
}
COLOR_NAMES = tuple(COLORS)
# skewed prior: "popular" negatives (the most frequent absent colour) are then informative
PRIOR = (0.17, 0.14, 0.12, 0.11, 0.10, 0.09, 0.08, 0.07, 0.06, 0.06)
# hue families: a scene's later colours come from its first colour's family half of the time
FAMILIES = (("red", "orange", "pink", "brown"), ("blue", "cyan", "purple"), ("green", "yellow", "black"))
BG = "bg"
# size classes (object side in pixels) and the visible-cell ranges a size question needs
SMALL_PX, BIG_PX = (24, 42), (84, 120)
SMALL_MAX_CELLS, BIG_MIN_CELLS = 10, 20


@dataclass(frozen=True)
class Obj:
    color: str
    shape: str  # "rect" | "ellipse"
    box: tuple[int, int, int, int]  # x0, y0, x1, y1 in pixels
    big: bool


@dataclass(frozen=True)
class Scene:
    objects: tuple[Obj, ...]
    background: tuple[int, int, int]
    seed: int  # drives the pixel noise and colour jitter of `render`


def _family(color: str) -> tuple[str, ...]:
    return next(f for f in FAMILIES if color in f)


def sample_colors(rng: random.Random, k: int) -> list[str]:
    chosen: list[str] = []
    while len(chosen) < k:
        left = [c for c in COLOR_NAMES if c not in chosen]
        family = [c for c in left if chosen and c in _family(chosen[0])]
        if family and rng.random() < 0.5:
            chosen.append(rng.choice(family))
        else:
            weights = [PRIOR[COLOR_NAMES.index(c)] for c in left]
            chosen.append(rng.choices(left, weights)[0])
    return chosen


def sample_scene(rng: random.Random) -> Scene:
    k = rng.randint(1, 4)
    objects = []
    for color in sample_colors(rng, k):
        big = rng.random() < 0.45
        lo, hi = BIG_PX if big else SMALL_PX
        w = rng.randint(lo, hi)
        h = max(lo, min(hi, int(w * rng.uniform(0.75, 1.33))))
        x0, y0 = rng.randint(0, IMAGE_SIZE - w), rng.randint(0, IMAGE_SIZE - h)
        objects.append(Obj(color, rng.choice(("rect", "ellipse")), (x0, y0, x0 + w, y0 + h), big))
    background = (rng.randint(165, 215), rng.randint(160, 205), rng.randint(140, 195))
    return Scene(tuple(objects), background, rng.randrange(2**31))


def _draw(draw: ImageDraw.ImageDraw, obj: Obj, fill) -> None:
    x0, y0, x1, y1 = obj.box
    box = (x0, y0, x1 - 1, y1 - 1)
    if obj.shape == "rect":
        draw.rectangle(box, fill=fill)
    else:
        draw.ellipse(box, fill=fill)


def label_grid(scene: Scene, grid: int = GRID) -> np.ndarray:
    """(grid, grid) int array: 0 = bg, i + 1 = COLOR_NAMES[i]; majority (> 50 %) of each cell's pixels."""
    index = Image.new("L", (IMAGE_SIZE, IMAGE_SIZE), 0)
    draw = ImageDraw.Draw(index)
    for obj in scene.objects:
        _draw(draw, obj, COLOR_NAMES.index(obj.color) + 1)
    pixels = np.asarray(index)
    cell = IMAGE_SIZE // grid
    blocks = pixels.reshape(grid, cell, grid, cell).transpose(0, 2, 1, 3).reshape(grid, grid, cell * cell)
    labels = np.zeros((grid, grid), dtype=np.int64)
    for value in np.unique(pixels):
        if value == 0:
            continue
        share = (blocks == value).mean(axis=-1)
        labels[share > 0.5] = value
    return labels


def render(scene: Scene) -> Image.Image:
    """The RGB image: noisy background, solid objects with mild brightness jitter and pixel noise."""
    gen = np.random.default_rng(scene.seed)
    image = Image.new("RGB", (IMAGE_SIZE, IMAGE_SIZE), scene.background)
    draw = ImageDraw.Draw(image)
    for obj in scene.objects:
        jitter = gen.uniform(0.85, 1.1)
        fill = tuple(int(min(255, v * jitter)) for v in COLORS[obj.color])
        _draw(draw, obj, fill)
    pixels = np.asarray(image).astype(np.float32)
    pixels += gen.normal(0.0, 7.0, size=pixels.shape)
    return Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))


def counts(labels: np.ndarray) -> dict[str, int]:
    """Visible cells per colour (colours with at least one cell)."""
    values, n = np.unique(labels, return_counts=True)
    return {COLOR_NAMES[v - 1]: int(c) for v, c in zip(values, n) if v > 0}


def flip(scene: Scene) -> Scene:
    """The horizontally mirrored scene (an augmentation for the vision stage)."""
    objects = tuple(
        Obj(o.color, o.shape, (IMAGE_SIZE - o.box[2], o.box[1], IMAGE_SIZE - o.box[0], o.box[3]), o.big)
        for o in scene.objects
    )
    return Scene(objects, scene.background, scene.seed)
