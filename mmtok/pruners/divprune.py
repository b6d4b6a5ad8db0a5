"""`divprune`: greedy max-min diversity on the projected tokens (CVPR 2025).

Multi-crop (tiling) families: `scope="global"` (the original) selects over the whole packed HF
sequence, newline tokens included, keeping as many tokens as the per-crop budget gives the image's crops in total
(so it keeps the same count as MMTok); `scope="crop"` selects per crop like MMTok.

`arithmetic="release"` (default) builds the distance matrix in the input dtype as the release does
(float16 in real runs), so the picks are the release's; `"float32"` widens it first (exactly
symmetric distances; in float16 it picks ~15 % different tokens, decided by geometry rather than by
half-precision ties). See `mmtok.selection.divprune.divprune_select`.

Features: the family's adapter says which ones its release compares (`diversity_features`): the
projected tokens, or the pre-projector features (the MMTok authors' DivPrune variant on an M-RoPE
family: the ViT's last block averaged per merge unit, the features MMTok's vision-vision term uses),
keeping k = int(retain_ratio x image tokens) or `budget` tokens (docs/families.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mmtok.pruners import CropSelection, ImageCrops, Pruner, SampleContext, register
from mmtok.selection.divprune import ARITHMETICS, divprune_select

SCOPES = ("global", "crop")


@register
@dataclass
class DivPrunePruner(Pruner):
    scope: str = "global"
    arithmetic: str = "release"  # "release" (input dtype, as the authors) or "float32"

    name: ClassVar[str] = "divprune"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scope not in SCOPES:
            raise ValueError(f"unknown divprune scope {self.scope!r}; valid: {', '.join(SCOPES)}")
        if self.arithmetic not in ARITHMETICS:
            raise ValueError(f"unknown divprune arithmetic {self.arithmetic!r}; valid: {', '.join(ARITHMETICS)}")

    @staticmethod
    def crop_features(image: ImageCrops, adapter) -> torch.Tensor:
        """The `[c, n, D]` features a crop's tokens are compared by: those the family's release
        compares (`FamilyAdapter.diversity_features`)."""
        return image.patches if adapter.diversity_features == "patches" else image.proj

    def select(self, image: ImageCrops, k: int, ctx: SampleContext) -> CropSelection:
        if self.scope == "crop" or image.num_crops == 1:
            feats = self.crop_features(image, ctx.adapter)
            return CropSelection(indices=list(divprune_select(feats, k, arithmetic=self.arithmetic)))
        packed = ctx.adapter.full_sequence(image)
        total = k * image.num_crops
        if total >= packed.shape[0]:
            return CropSelection(packed_indices=torch.arange(packed.shape[0], device=packed.device))
        return CropSelection(packed_indices=divprune_select(packed, total, arithmetic=self.arithmetic))
