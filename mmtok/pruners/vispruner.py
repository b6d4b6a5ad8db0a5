"""`vispruner` (VisPruner): CLS-attention "important" tokens plus duplicate-free "diverse" ones, before the LLM.

Signals come from the CLIP layer the projector reads, captured in one tower pass exactly as for VisionZip
(the CLS row's attention recomputed from that layer's input, `encode_with_cls_signals`); the rule is
`mmtok.selection.vispruner.vispruner_select` on each crop's patch features, and the kept patches'
projected tokens reach the LLM (projecting a subset of patches equals subsetting the projection).

Budget: `budget` tokens per crop reach the LLM (the release's `visual_token_num`, its tables'
64/128/192), half important, half diverse (`important_ratio=0.5`), dropping at most `step=8`
duplicates per round, as the release. Tiling families: per crop under our layouts (the release's
anyres path does not handle pruned crops).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mmtok.pruners import (
    CropSelection,
    FamilyAdapter,
    ImageCrops,
    Pruner,
    SampleContext,
    encode_with_cls_signals,
    register,
)
from mmtok.selection.vispruner import vispruner_select


@register
@dataclass
class VisPrunerPruner(Pruner):
    important_ratio: float = 0.5  # share of the budget taken by CLS attention
    step: int = 8  # duplicates dropped per round at most

    name: ClassVar[str] = "vispruner"
    requires: ClassVar[frozenset[str]] = frozenset({"cls"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.important_ratio, (int, float)) or not 0 <= self.important_ratio <= 1:
            raise ValueError(f"vispruner: important_ratio must be in [0, 1], got {self.important_ratio!r}")
        if not isinstance(self.step, int) or self.step < 1:
            raise ValueError(f"vispruner: step must be an integer >= 1, got {self.step!r}")

    def encode(self, adapter: FamilyAdapter, pixel_values, **image_inputs) -> list[ImageCrops]:
        return encode_with_cls_signals(adapter, pixel_values, **image_inputs)  # the same capture as VisionZip

    def select(self, image: ImageCrops, k: int, ctx: SampleContext) -> CropSelection:
        attention = image.cls_attention[:, :, 1:].mean(dim=1)  # [crops, n]: heads averaged
        return CropSelection(
            indices=[
                vispruner_select(image.pre[c, 1:], attention[c], k, self.important_ratio, self.step)
                for c in range(image.num_crops)
            ]
        )
