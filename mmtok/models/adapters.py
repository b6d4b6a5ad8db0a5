"""Where each HF LLaVA family keeps its image features, and how kept tokens are laid out.

One adapter per family. Pruners never look at model internals; they get `ImageCrops` (what the
vision tower and projector produced for one image) and return a `CropSelection`; the adapter turns
that back into the token sequence the LLM receives.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

LAYOUTS = ("paper", "hf")


@dataclass
class ImageCrops:
    """Vision features of one image, crop-major (LLaVA-1.5: one crop; NeXT: base image + tiles)."""

    proj: torch.Tensor  # [c, n, D_llm] projected patch tokens (what the LLM would receive)
    pre: torch.Tensor  # [c, n+1, D_vis] CLIP features at the layer the projector reads, CLS at 0
    grid: tuple[int, int] | None = None  # NeXT: (rows, cols) of high-resolution tiles
    image_size: tuple[int, int] | None = None  # NeXT: original (height, width)
    extras: dict = field(default_factory=dict)  # per-crop signals captured in the tower (VisionZip)

    @property
    def num_crops(self) -> int:
        return self.proj.shape[0]

    @property
    def tokens_per_crop(self) -> int:
        return self.proj.shape[1]


@dataclass
class CropSelection:
    """A pruner's answer for one image: kept indices per crop, or new features per crop."""

    indices: list[torch.Tensor] | None = None  # per crop, sorted LongTensor into that crop's tokens
    features: list[torch.Tensor] | None = None  # per crop, [k_c, D_llm] (merging methods)
    packed_indices: torch.Tensor | None = None  # indices into the family's full (HF) packed sequence


class LlavaAdapter:
    """LLaVA-1.5 (`LlavaForConditionalGeneration`): one 336px crop, patches without CLS."""

    family = "llava"

    def __init__(self, model: nn.Module):
        self.model = model
        self.inner = model.model
        self.config = model.config

    # -- vision -------------------------------------------------------------------------------
    @property
    def tower(self) -> nn.Module:
        return self.inner.vision_tower

    @property
    def feature_layer(self) -> int:
        layer = self.config.vision_feature_layer
        if not isinstance(layer, int):
            raise ValueError("mmtok supports a single vision_feature_layer (LLaVA uses -2)")
        return layer

    def feature_layer_module(self) -> nn.Module:
        """The CLIP encoder layer whose output the projector reads (hidden_states[-2] -> layer L-2)."""
        tower = self.tower
        # the tower is a CLIPVisionModel (layers under .vision_model) or a bare CLIPVisionTransformer
        layers = (tower.vision_model if hasattr(tower, "vision_model") else tower).encoder.layers
        hidden_index = self.feature_layer % (len(layers) + 1)  # hidden_states has L+1 entries
        return layers[hidden_index - 1]

    def _tower_features(self, pixel_values: torch.Tensor) -> torch.Tensor:
        out = self.tower(pixel_values, output_hidden_states=True, return_dict=True)
        feats = out.hidden_states[self.feature_layer]
        if self.config.vision_feature_select_strategy != "default":
            raise ValueError("mmtok expects vision_feature_select_strategy='default' (CLS dropped)")
        return feats  # [crops, n+1, D_vis]

    def project(self, pre_patches: torch.Tensor) -> torch.Tensor:
        return self.inner.multi_modal_projector(pre_patches)

    def encode(self, pixel_values: torch.Tensor, image_sizes=None) -> list[ImageCrops]:
        pre = self._tower_features(pixel_values.to(self.tower.dtype))
        proj = self.project(pre[:, 1:])
        return [ImageCrops(proj=proj[i : i + 1], pre=pre[i : i + 1]) for i in range(pre.shape[0])]

    # -- assembly -----------------------------------------------------------------------------
    def max_crops(self) -> int:
        return max_crops(self.config)

    def full_sequence(self, image: ImageCrops) -> torch.Tensor:
        """The image tokens exactly as the unmodified HF model would feed them."""
        return image.proj[0]

    def full_length(self, image: ImageCrops) -> int:
        """How many image tokens the unmodified model feeds (without building them)."""
        return image.tokens_per_crop

    def assemble(self, image: ImageCrops, sel: CropSelection, layout: str) -> torch.Tensor:
        if sel.features is not None:
            return torch.cat(sel.features, dim=0)
        if sel.packed_indices is not None:
            return self.full_sequence(image)[sel.packed_indices]
        return image.proj[0][sel.indices[0]]


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT (`LlavaNextForConditionalGeneration`): base image + anyres tiles."""

    family = "llava_next"

    def encode(self, pixel_values: torch.Tensor, image_sizes=None) -> list[ImageCrops]:
        from transformers.models.llava_next.modeling_llava_next import (
            get_anyres_image_grid_shape,
            image_size_to_num_patches,
        )

        if image_sizes is None:
            raise ValueError("LLaVA-NeXT inputs need `image_sizes` (the processor returns them)")
        vision_size = self.config.vision_config.image_size
        pinpoints = self.config.image_grid_pinpoints
        counts = [image_size_to_num_patches(s, pinpoints, vision_size) for s in image_sizes]
        if pixel_values.dim() == 5:
            pixel_values = torch.cat([pv[:c] for pv, c in zip(pixel_values, counts)], dim=0)
        pre = self._tower_features(pixel_values.to(self.tower.dtype))
        proj = self.project(pre[:, 1:])
        images, start = [], 0
        for size, c in zip(image_sizes, counts):
            rows, cols = get_anyres_image_grid_shape(size, pinpoints, vision_size)
            images.append(
                ImageCrops(
                    proj=proj[start : start + c],
                    pre=pre[start : start + c],
                    grid=(rows, cols),
                    image_size=tuple(int(x) for x in size),
                )
            )
            start += c
        return images

    def _side(self) -> int:
        return self.config.vision_config.image_size // self.config.vision_config.patch_size

    def _pack(self, image: ImageCrops, values: torch.Tensor, newline: torch.Tensor) -> torch.Tensor:
        """HF's `pack_image_features` for one image, applied to any per-token `values` [c, n, C]."""
        packed, _ = self.inner.pack_image_features(
            [values],
            torch.tensor([image.image_size]),
            vision_feature_select_strategy=self.config.vision_feature_select_strategy,
            image_newline=newline,
        )
        return packed[0]

    def full_sequence(self, image: ImageCrops) -> torch.Tensor:
        return self._pack(image, image.proj, self.inner.image_newline)

    def full_length(self, image: ImageCrops) -> int:
        c, n, _ = image.proj.shape
        return self._pack(image, torch.zeros(c, n, 1), torch.zeros(1)).shape[0]

    def _stitched_order(self, image: ImageCrops) -> torch.Tensor:
        """Flat (crop * n + token) ids of the tiles in raster order of the stitched high-res grid."""
        rows, cols = image.grid
        side = self._side()
        ids = torch.arange((image.num_crops - 1) * side * side).view(rows, cols, side, side)
        return ids.permute(0, 2, 1, 3).reshape(-1) + side * side  # offset past the base crop

    def assemble(self, image: ImageCrops, sel: CropSelection, layout: str) -> torch.Tensor:
        if layout not in LAYOUTS:
            raise ValueError(f"unknown LLaVA-NeXT layout {layout!r}; valid: {', '.join(LAYOUTS)}")
        if sel.features is not None:  # merged tokens have no grid position: crop order
            return torch.cat(sel.features, dim=0)
        if sel.packed_indices is not None:
            return self.full_sequence(image)[sel.packed_indices]
        c, n, dim = image.proj.shape
        keep = torch.zeros(c, n, dtype=torch.bool, device=image.proj.device)
        for crop, idx in enumerate(sel.indices):
            keep[crop, idx] = True
        flat = image.proj.reshape(c * n, dim)
        if c == 1:
            return flat[keep.view(-1)]
        if layout == "paper":
            # Paper protocol: base tokens, then tiles on the stitched grid in raster order;
            # no unpadding and no image-newline tokens.
            order = torch.cat([torch.arange(n), self._stitched_order(image)]).to(flat.device)
            return flat[order[keep.view(-1)[order]]]
        # HF layout: HF's own packing (unpad + newline per row) of the kept tokens; a row's
        # newline survives when the row keeps at least one token, so keep-all equals HF exactly.
        # integer codes and ids: they pass through HF's packing exactly, on any device
        codes = keep.long().unsqueeze(-1) + 1  # 2 = kept, 1 = dropped, 3 = newline
        ids = torch.arange(c * n, device=flat.device).view(c, n, 1)
        packed = self._pack(image, torch.cat([codes, ids], dim=-1), torch.tensor([3, -1], device=flat.device))
        code, src = packed[:, 0], packed[:, 1]
        is_newline = code == 3
        row = torch.cumsum(is_newline.long(), 0) - is_newline.long()  # a newline closes its row
        row_kept = torch.zeros(int(row.max()) + 1, dtype=torch.long, device=flat.device)
        in_tiles = torch.arange(code.shape[0], device=flat.device) >= n  # the base crop has no rows
        row_kept.scatter_add_(0, row, ((code == 2) & in_tiles).long())
        survive = (code == 2) | (is_newline & (row_kept[row] > 0))
        tokens = flat[src.clamp(min=0)]
        tokens[is_newline] = self.inner.image_newline.to(flat.dtype)
        return tokens[survive]


def max_crops(config) -> int:
    """Crops of the largest split a checkpoint can produce: 1 for LLaVA-1.5; for LLaVA-NeXT the
    base image plus the most tiles of any grid pinpoint (5 for the llava-hf checkpoints)."""
    pinpoints = getattr(config, "image_grid_pinpoints", None)
    if getattr(config, "model_type", None) != "llava_next" or not pinpoints:
        return 1
    size = config.vision_config.image_size
    return 1 + max((h // size) * (w // size) for h, w in pinpoints)


def tokens_per_crop(config) -> int:
    vision = config.vision_config
    return (vision.image_size // vision.patch_size) ** 2


def adapter_for(model: nn.Module) -> LlavaAdapter:
    from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

    if isinstance(model, LlavaNextForConditionalGeneration):
        return LlavaNextAdapter(model)
    if isinstance(model, LlavaForConditionalGeneration):
        return LlavaAdapter(model)
    raise TypeError(
        f"unsupported model class {type(model).__name__}; "
        "valid: LlavaForConditionalGeneration, LlavaNextForConditionalGeneration"
    )
