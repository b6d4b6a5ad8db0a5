"""`divprune`: greedy max-min diversity on the projected tokens (CVPR 2025).

LLaVA-NeXT: `scope="global"` (the original) selects over the whole packed HF sequence, newline
tokens included, keeping as many tokens as the per-crop budget gives the image's crops in total
(so it keeps the same count as MMTok); `scope="crop"` selects per crop like MMTok.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mmtok.models.adapters import CropSelection, ImageCrops
from mmtok.pruners.base import Pruner, SampleContext
from mmtok.selection.divprune import divprune_select

SCOPES = ("global", "crop")


@dataclass
class DivPrunePruner(Pruner):
    scope: str = "global"

    name: ClassVar[str] = "divprune"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scope not in SCOPES:
            raise ValueError(f"unknown divprune scope {self.scope!r}; valid: {', '.join(SCOPES)}")

    def select(self, image: ImageCrops, k: int, ctx: SampleContext) -> CropSelection:
        if self.scope == "crop" or image.num_crops == 1:
            return CropSelection(indices=list(divprune_select(image.proj, k)))
        packed = ctx.adapter.full_sequence(image)
        total = k * image.num_crops
        if total >= packed.shape[0]:
            return CropSelection(packed_indices=torch.arange(packed.shape[0], device=packed.device))
        return CropSelection(packed_indices=divprune_select(packed, total))
