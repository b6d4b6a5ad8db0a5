"""`visionzip`: dominant tokens by CLS attention + contextual merges, inside the CLIP tower (CVPR 2025).

It needs, at the CLIP layer the projector reads, the CLS query's attention and the head-averaged keys.
Both are recomputed from that layer's input for the CLS row only (one hook during the tower pass),
so the tower stays on its fast attention path. Merged tokens go through the projector afterwards.

Budget: `budget` tokens reach the LLM per crop, CLS included (64 = CLS + 53 + 10), which is the
release's count too: its `visionzip(model, dominant=54, contextual=10)` passes `dominant - 1` to the
tower, so the authors' "64" is 64 tokens. Tiling families: `next_tiles="crop"` (default) concatenates
each crop's tokens in crop order; `"release"` arranges them as the authors'
`restore_image_features_sorted` does (`mmtok.selection.visionzip.release_next_order`).

A tower without a CLS token (a family with the "tower_attention" trait but not "cls"): the family's
adapter supplies a substitute score per token and the keys (`FamilyAdapter.encode_with_attention`,
the VisionZip authors' own port for such a tower; docs/families.md), and the dominant tokens are the
highest-scoring ones, the contextual tokens merge the rest as above, all on the tokens the LLM
receives, each contextual token standing at its target's position
(`mmtok.selection.visionzip.visionzip_in_place`). The per-image budget k (a budget or a ratio) is
split dominant:contextual by the same 54:10 rule (`visionzip_split`), nothing counted for a CLS.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mmtok.pruners import (
    CropSelection,
    FamilyAdapter,
    ImageCrops,
    Pruner,
    SampleContext,
    encode_with_cls_signals,
    register,
)
from mmtok.selection.visionzip import (
    NEXT_TILES,
    release_next_order,
    visionzip_dominant_indices,
    visionzip_in_place,
    visionzip_merge,
    visionzip_split,
)


@register
@dataclass
class VisionZipPruner(Pruner):
    """Budget per crop is split dominant:contextual as in the paper (64 = 54+10, 128 = 108+20,
    192 = 162+30; other budgets keep the 54:10 ratio, see `visionzip_split`)."""

    next_tiles: str = "crop"  # tiling families: "crop" (crop order) or "release" (the authors' arrangement)

    name: ClassVar[str] = "visionzip"
    requires: ClassVar[frozenset[str]] = frozenset({"tower_attention"})
    merges: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.next_tiles not in NEXT_TILES:
            raise ValueError(f"unknown visionzip next_tiles {self.next_tiles!r}; valid: {', '.join(NEXT_TILES)}")

    def encode(self, adapter: FamilyAdapter, pixel_values, **image_inputs) -> list[ImageCrops]:
        if "cls" in adapter.traits:
            return encode_with_cls_signals(adapter, pixel_values, **image_inputs)  # sets cls_attention, keys
        return adapter.encode_with_attention(pixel_values, **image_inputs)  # sets attention, keys

    def select(self, image: ImageCrops, k: int, ctx: SampleContext) -> CropSelection:
        dominant, contextual = visionzip_split(k)
        if not image.has_cls:  # the family's substitute score; tokens stay at their positions
            picked = [
                visionzip_in_place(image.proj[c], image.attention[c], image.keys[c], dominant, contextual)
                for c in range(image.num_crops)
            ]
            return CropSelection(indices=[p[0] for p in picked], features=[p[1] for p in picked])
        merged = torch.stack(
            [
                visionzip_merge(image.pre[c], image.cls_attention[c], image.keys[c], dominant, contextual)
                for c in range(image.num_crops)
            ]
        )
        projected = ctx.adapter.project(merged.to(image.pre.dtype))
        if self.next_tiles == "release" and image.num_crops > 1:
            dom = torch.stack(
                [visionzip_dominant_indices(image.cls_attention[c], dominant) for c in range(image.num_crops)]
            )
            side = int(round((image.pre.shape[1] - 1) ** 0.5))
            order = release_next_order(dom.to(projected.device), image.grid, side, contextual)
            # one packed sequence: the adapter concatenates feature lists, so a single entry is kept as is
            return CropSelection(features=[projected.reshape(-1, projected.shape[-1])[order]])
        return CropSelection(features=list(projected))
