"""The ground-truth oracle of the testbed table: a pre-LLM selection that knows every patch's label.

It is a reference, not a method: `OraclePruner.for_benchmark` regenerates the scenes behind a
scene benchmark (`mmtok.data.scene_tasks.benchmark_scenes`), renders them through the model's own
image processor and indexes their patch labels (`mmtok.data.scenes.label_grid`) by the processed
pixels; during evaluation it looks each image up by its pixels. It keeps object patches first,
one colour at a time in turn (each colour's patches in a seeded random order), then background
patches at random, so any budget >= the number of visible colours shows every visible colour.
An image that is not one of the indexed scenes is an error, never a silent fallback.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch

from mmtok.data.scene_tasks import benchmark_scenes
from mmtok.data.scenes import label_grid, render
from mmtok.pruners import CropSelection, ImageCrops, Pruner, SampleContext


def pixel_key(pixels: torch.Tensor) -> bytes:
    """A digest of one processed image (pixel values rounded to 1/256: exact for the same source)."""
    return hashlib.sha256(torch.round(pixels.float() * 256).to(torch.int32).cpu().numpy().tobytes()).digest()


def oracle_order(labels: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Every patch index, object patches first (the visible colours in turn, each colour's patches
    in random order), then the background patches in random order."""
    queues = []
    for value in torch.unique(labels).tolist():
        cells = (labels == value).nonzero().flatten()
        queues.append((value, cells[torch.randperm(len(cells), generator=generator)]))
    objects = [q for v, q in queues if v != 0]
    order = [q[i] for i in range(max((len(q) for q in objects), default=0)) for q in objects if i < len(q)]
    background = [q for v, q in queues if v == 0]
    order = torch.stack(order) if order else torch.zeros(0, dtype=torch.long)
    return torch.cat([order, *background])


@dataclass
class LabelledCrops(ImageCrops):
    """An image's crops with its ground-truth patch labels (0 = background, raster order)."""

    labels: torch.Tensor | None = None


@dataclass
class OraclePruner(Pruner):
    labels: dict[bytes, torch.Tensor] = field(default_factory=dict, repr=False, compare=False)

    name: ClassVar[str] = "oracle"
    takes_ratio: ClassVar[bool] = False

    @classmethod
    def for_benchmark(cls, budget: int | None, benchmark: str, n: int, processor, seed: int = 0) -> OraclePruner:
        """The oracle for `build_dataset(..., benchmark, n=n, seed=seed)` seen through `processor`."""
        scenes = benchmark_scenes(benchmark, n, seed)
        pixels = processor.image_processor(images=[render(s) for s in scenes], return_tensors="pt")["pixel_values"]
        labels = {pixel_key(p): torch.from_numpy(label_grid(s).reshape(-1)) for p, s in zip(pixels, scenes)}
        return cls(budget=budget, labels=labels)

    def encode(self, adapter, pixel_values, **image_inputs) -> list[ImageCrops]:
        images = adapter.encode(pixel_values, **image_inputs)
        if len(images) != len(pixel_values) or any(image.num_crops != 1 for image in images):
            raise ValueError("oracle: one crop per image only (the testbed LLaVA)")
        out = []
        for image, pixels in zip(images, pixel_values):
            labels = self.labels.get(pixel_key(pixels))
            if labels is None:
                raise ValueError("oracle: an image that is not one of the scenes it was built for")
            out.append(LabelledCrops(**{f.name: getattr(image, f.name) for f in fields(image)}, labels=labels))
        return out

    def select(self, image: ImageCrops, k: int, ctx: SampleContext) -> CropSelection:
        generator = torch.Generator().manual_seed(self.sample_seed(ctx))
        keep = oracle_order(image.labels, generator)[:k]
        return CropSelection(indices=[torch.sort(keep).values.to(image.proj.device)])
