"""`random`: a uniform subset of each crop, in original order; seeded from the run seed and the
prompt so that a sample gets the same subset in any batch."""

from dataclasses import dataclass
from typing import ClassVar

import torch

from mmtok.pruners import CropSelection, ImageCrops, Pruner, SampleContext, register
from mmtok.selection.random import random_select


@register
@dataclass
class RandomPruner(Pruner):
    name: ClassVar[str] = "random"

    def select(self, image: ImageCrops, k: int, ctx: SampleContext) -> CropSelection:
        gen = torch.Generator().manual_seed(self.sample_seed(ctx))
        n, device = image.tokens_per_crop, image.proj.device
        return CropSelection(
            indices=[random_select(n, k, generator=gen, device=device) for _ in range(image.num_crops)]
        )
