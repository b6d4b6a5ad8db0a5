"""`prumerge_plus` (PruMerge+): CLS-attention outliers + spatial samples as centres, each merged with
its key-nearest tokens, plus one summary token, before the LLM.

The signals are recomputed from the CLIP features the projector reads (hidden_states[-2], CLS included):
the next CLIP layer's `layer_norm1`, `q_proj` and `k_proj` on them are exactly what the release's
hooks on that layer capture. The merged tokens go through the projector afterwards.

Budget: `budget` tokens per crop reach the LLM: the first budget - 1 centres of the release's
order plus its summary token (`mmtok.selection.prumerge`). The release itself keeps an adaptive
count (its outliers + spatial samples + 1, about a quarter of the patches on average) and has no
budget. Tiling families: per crop, concatenated in crop order like VisionZip.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mmtok.pruners import CropSelection, ImageCrops, Pruner, SampleContext, register
from mmtok.selection.prumerge import cls_attention_single_head, prumerge_centres, prumerge_merge


def next_clip_layer(adapter) -> torch.nn.Module:
    """The CLIP encoder layer right after the one whose output the projector reads."""
    tower = adapter.tower
    layers = (tower.vision_model if hasattr(tower, "vision_model") else tower).encoder.layers
    index = adapter.feature_layer % (len(layers) + 1)  # hidden_states[index] = output of layers[index - 1]
    if index >= len(layers):
        raise ValueError("prumerge_plus needs a CLIP layer after the one the projector reads")
    return layers[index]


@register
@dataclass
class PruMergePlusPruner(Pruner):
    name: ClassVar[str] = "prumerge_plus"
    requires: ClassVar[frozenset[str]] = frozenset({"cls"})
    merges: ClassVar[bool] = True

    def select(self, image: ImageCrops, k: int, ctx: SampleContext) -> CropSelection:
        layer = next_clip_layer(ctx.adapter)
        merged = []
        for c in range(image.num_crops):
            x = layer.layer_norm1(image.pre[c])
            q, key = layer.self_attn.q_proj(x), layer.self_attn.k_proj(x)
            attention = cls_attention_single_head(q, key)
            centres = prumerge_centres(attention, k - 1)
            merged.append(prumerge_merge(image.pre[c, 1:], key[1:], attention, centres))
        projected = ctx.adapter.project(torch.stack(merged).to(image.pre.dtype))
        return CropSelection(features=list(projected))
