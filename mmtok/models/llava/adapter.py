"""The LLaVA families' adapters: LLaVA-1.5 (one crop) and LLaVA-NeXT (base image + anyres tiles).

Where their image features live (CLIP tower, CLS at 0, the projector), how kept tokens are laid
out (NeXT: the paper's order or HF's packing), and the request: the unpadded prompt's
embeddings with the contiguous run of image placeholders replaced by the kept tokens, left-padded
again; positions come from the attention mask (1-D RoPE), as in the unmodified model.
"""

from __future__ import annotations

import torch
from torch import nn

from mmtok.models.adapters import (
    LAYOUTS,
    CropSelection,
    FamilyAdapter,
    ImageCrops,
    ImageSource,
    ImageSpan,
    KeptImage,
    LLMInputs,
    max_crops,
)
from mmtok.models.llava.prompts import padding_patches


class LlavaAdapter(FamilyAdapter):
    """LLaVA-1.5 (`LlavaForConditionalGeneration`): one 336px crop, patches without CLS."""

    family = "llava"

    def __init__(self, model: nn.Module):
        super().__init__(model)
        self.inner = model.model

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

    def encode(self, pixel_values: torch.Tensor, **image_inputs) -> list[ImageCrops]:
        pre = self._tower_features(pixel_values.to(self.tower.dtype))
        proj = self.project(pre[:, 1:])
        return [ImageCrops(proj=proj[i : i + 1], pre=pre[i : i + 1]) for i in range(pre.shape[0])]

    def padding_patches(self, image: ImageCrops, source: ImageSource) -> torch.Tensor | None:
        """Under `pad` the patches `prompts.padding_patches` names (the MMTok release's rule); the HF
        processor's `crop` adds no padding."""
        mask = torch.zeros(image.num_crops, image.tokens_per_crop, dtype=torch.bool, device=image.proj.device)
        if source.preprocess == "pad":
            vision = self.config.vision_config
            mask[0, padding_patches(source.width, source.height, vision.image_size, vision.patch_size)] = True
        return mask

    # -- assembly -----------------------------------------------------------------------------
    def max_crops(self) -> int:
        return max_crops(self.config)

    def assemble(self, image: ImageCrops, sel: CropSelection, layout: str) -> torch.Tensor:
        if sel.features is not None:
            return torch.cat(sel.features, dim=0)
        if sel.packed_indices is not None:
            return self.full_sequence(image)[sel.packed_indices]
        return image.proj[0][sel.indices[0]]

    def build_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, kept: list[KeptImage], image_inputs: dict
    ) -> LLMInputs:
        prompts = [ids[mask.bool()] for ids, mask in zip(input_ids, attention_mask)]
        return build_spliced_inputs(self.model, prompts, [k.tokens for k in kept])


class LlavaNextAdapter(LlavaAdapter):
    """LLaVA-NeXT (`LlavaNextForConditionalGeneration`): base image + anyres tiles."""

    family = "llava_next"
    image_keys = ("image_sizes",)

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

    def padding_patches(self, image: ImageCrops, source: ImageSource) -> torch.Tensor | None:
        return None  # anyres tiles are padded to their grid resolution by the processor: no rule here

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


def build_spliced_inputs(model, prompts: list[torch.Tensor], image_tokens: list[torch.Tensor]) -> LLMInputs:
    """Per sample: the unpadded prompt's embeddings with the image placeholder run replaced by
    `image_tokens[b]`, then left-padded again (the pruned lengths can differ per sample)."""
    embed = model.get_input_embeddings()
    image_id = model.config.image_token_id
    pad_id = model.generation_config.pad_token_id
    if pad_id is None:
        pad_id = 0
    rows, spans = [], []
    for b, (ids, feats) in enumerate(zip(prompts, image_tokens)):
        where = (ids == image_id).nonzero().flatten()
        if where.numel() == 0:
            raise ValueError(f"sample {b} has no image placeholder token (id {image_id})")
        start, end = int(where[0]), int(where[-1]) + 1
        if end - start != where.numel():
            raise ValueError(f"sample {b}: image placeholders are not one contiguous run (one image per sample)")
        text = embed(ids)
        rows.append(torch.cat([text[:start], feats.to(text.dtype), text[end:]], dim=0))
        spans.append(start)
    length = max(r.shape[0] for r in rows)
    device = prompts[0].device
    pad = embed(torch.tensor([pad_id], device=device))[0]
    embeds = pad.expand(len(rows), length, pad.shape[0]).clone()
    mask = torch.zeros(len(rows), length, dtype=torch.long, device=device)
    out_spans = []
    for b, (row, feats) in enumerate(zip(rows, image_tokens)):
        offset = length - row.shape[0]
        embeds[b, offset:] = row
        mask[b, offset:] = 1
        out_spans.append(ImageSpan(start=offset + spans[b], length=int(feats.shape[0])))
    return LLMInputs(inputs_embeds=embeds, attention_mask=mask, spans=out_spans)
