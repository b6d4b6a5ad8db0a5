"""LLaVA-NeXT in vLLM with per-crop budgets, as our HF path (`MMTokLlavaNextForConditionalGeneration`).

The rules of `mmtok.pruners.base.Pruner` / `mmtok.models.llava.LlavaNextAdapter` with the default
options: a budget is an upper bound over the largest anyres split (max_crops = base + the most
tiles of any pinpoint, 5 for the llava-hf checkpoints); each crop present keeps k = budget //
max_crops tokens; kept tokens are laid out as the paper ("paper" layout: the base crop's kept
tokens, then the tiles' kept tokens in raster order of the stitched grid; no unpadding, no
image-newline tokens). A per-crop k >= the crop's tokens keeps every token in that layout.
DivPrune selects globally (its default scope) over the packed HF sequence (unpadded, with newline
tokens), keeping k x crops of it; VisionZip concatenates each crop's merged tokens in crop order.
The unpruned model ("none") is vLLM's own packing.
"""

from __future__ import annotations

import torch
from vllm.model_executor.models.llava import LlavaDummyInputsBuilder
from vllm.model_executor.models.llava_next import (
    LlavaNextForConditionalGeneration,
    LlavaNextMultiModalProcessor,
    LlavaNextProcessingInfo,
    get_anyres_image_grid_shape,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from mmtok.selection.divprune import divprune_select
from mmtok.selection.mmtok import mmtok_select
from mmtok.selection.random import random_select
from mmtok.selection.visionzip import visionzip_merge, visionzip_split
from mmtok.selection.vispruner import vispruner_select
from mmtok.serving.methods import (
    CLS_METHODS,
    DIVPRUNE_ARITHMETIC,
    METHODS,
    VISPRUNER_IMPORTANT_RATIO,
    VISPRUNER_STEP,
    ModelParams,
    PruneRequest,
)
from mmtok.serving.vllm_llava import SPEC_FIELD, TEXT_FIELD, PruningProcessorMixin, tower_features

ARCHITECTURE = "MMTokLlavaNextForConditionalGeneration"


def max_crops(config) -> int:
    """Crops of the largest split the checkpoint can produce (`mmtok.models.adapters.max_crops`)."""
    size = config.vision_config.image_size
    return 1 + max((h // size) * (w // size) for h, w in config.image_grid_pinpoints)


def per_crop(budget: int, config) -> int:
    crops = max_crops(config)
    k = budget // crops
    if k < 1:
        raise ValueError(
            f"budget {budget} is below one token per crop for llava_next ({crops} crops); use budget >= {crops}"
        )
    return k


class PrunedLlavaNextProcessingInfo(LlavaNextProcessingInfo):
    def check_budget(self, req: PruneRequest) -> None:
        if req.budget is not None:
            per_crop(req.budget, self.get_hf_config())

    def get_num_kept_tokens(self, req: PruneRequest, *, image_width: int, image_height: int) -> int:
        full = self.get_num_image_tokens(image_width=image_width, image_height=image_height)
        if req.method == "none" or req.budget is None:
            return full
        config = self.get_hf_config()
        size = config.vision_config.image_size
        n = (size // config.vision_config.patch_size) ** 2
        rows, cols = get_anyres_image_grid_shape((image_height, image_width), config.image_grid_pinpoints, size)
        crops = 1 + rows * cols
        k = per_crop(req.budget, config)
        if k >= n:
            return n * crops
        if req.method == "divprune":
            return min(k * crops, full)
        return k * crops


class PrunedLlavaNextProcessor(PruningProcessorMixin, LlavaNextMultiModalProcessor):
    pass


@MULTIMODAL_REGISTRY.register_processor(
    PrunedLlavaNextProcessor, info=PrunedLlavaNextProcessingInfo, dummy_inputs=LlavaDummyInputsBuilder
)
class MMTokLlavaNextForConditionalGeneration(LlavaNextForConditionalGeneration):
    """vLLM's LLaVA-NeXT whose image embeddings are the tokens the request's method keeps per crop."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.mmtok_params = ModelParams.from_config(self.config)
        # per image of the latest batch: (method, kept rows per crop, or [indices into the packed
        # sequence] for DivPrune; None for merged / unpruned tokens); read by `vllm_llava.take_selection`
        self.mmtok_last: list[tuple[str, list[list[int]] | None]] = []

    def _stitched_order(self, grid: tuple[int, int], side: int) -> torch.Tensor:
        """Flat (crop * n + token) ids of the tiles in raster order of the stitched grid."""
        rows, cols = grid
        ids = torch.arange(rows * cols * side * side).view(rows, cols, side, side)
        return ids.permute(0, 2, 1, 3).reshape(-1) + side * side

    def _paper(self, proj: torch.Tensor, indices: list[torch.Tensor], grid) -> torch.Tensor:
        c, n, dim = proj.shape
        keep = torch.zeros(c, n, dtype=torch.bool, device=proj.device)
        for crop, idx in enumerate(indices):
            keep[crop, idx.to(proj.device)] = True
        flat = proj.reshape(c * n, dim)
        if c == 1:
            return flat[keep.view(-1)]
        side = int(round(n**0.5))
        order = torch.cat([torch.arange(n), self._stitched_order(grid, side)]).to(proj.device)
        return flat[order[keep.view(-1)[order]]]

    def embed_multimodal(self, **kwargs):
        spec = kwargs.pop(SPEC_FIELD, None)
        text_ids = kwargs.pop(TEXT_FIELD, None)
        pixel_values, image_sizes = kwargs.get("pixel_values"), kwargs.get("image_sizes")
        if spec is None or pixel_values is None:
            return super().embed_multimodal(**kwargs)
        if self.config.vision_feature_select_strategy != "default" or self.select_layers is not None:
            raise ValueError("mmtok pruning needs one vision_feature_layer and the 'default' strategy (CLS dropped)")
        config = self.config
        size = config.vision_config.image_size
        spec = spec.reshape(-1, 3).tolist()
        methods = [METHODS[code] for code, _, _ in spec]
        sizes = [tuple(int(x) for x in s) for s in image_sizes]
        grids = [get_anyres_image_grid_shape(s, config.image_grid_pinpoints, size) for s in sizes]
        counts = [1 + r * c for r, c in grids]
        crops = [pv[:count] for pv, count in zip(pixel_values, counts)]  # batches may pad the crops
        pixels = torch.cat(crops)
        if any(m in CLS_METHODS for m in methods):
            pre, probs, keys = tower_features(self.vision_tower, pixels, with_cls=True)
            patches = pre[:, 1:]
        else:  # vLLM's own tower call
            patches = self._image_pixels_to_features(self.vision_tower, pixels)
            pre = probs = keys = None
        proj_all = self.multi_modal_projector(patches)
        out, self.mmtok_last, start = [], [], 0
        for b, (method, (_, budget, seed)) in enumerate(zip(methods, spec)):
            c, grid = counts[b], grids[b]
            sl = slice(start, start + c)
            start += c
            proj, n = proj_all[sl], proj_all.shape[1]
            if method == "none" or budget < 0:
                out.append(self._merge_image_patch_embeddings(image_sizes[b], proj, strategy="spatial_unpad"))
                self.mmtok_last.append(("none", None))
                continue
            k = per_crop(budget, config)
            if k >= n:
                every = [torch.arange(n)] * c
                out.append(self._paper(proj, every, grid))
                self.mmtok_last.append((method, [x.tolist() for x in every]))
                continue
            indices = None
            if method == "mmtok":
                text = self.language_model.model.embed_tokens(text_ids[b].to(proj.device))
                p = self.mmtok_params
                idx = mmtok_select(text, proj, patches[sl], k, alpha=p.alpha, tau_t=p.tau_t, tau_v=p.tau_v)
                indices = list(idx)
            elif method == "random":
                gen = torch.Generator().manual_seed(seed)
                indices = [random_select(n, k, generator=gen, device=proj.device) for _ in range(c)]
            elif method == "vispruner":
                attention = probs[sl][:, :, 1:].mean(dim=1)
                indices = [
                    vispruner_select(patches[sl][i], attention[i], k, VISPRUNER_IMPORTANT_RATIO, VISPRUNER_STEP)
                    for i in range(c)
                ]
            elif method == "divprune":
                packed = self._merge_image_patch_embeddings(image_sizes[b], proj, strategy="spatial_unpad")
                total = k * c
                if c == 1:
                    indices = [divprune_select(proj[0], k, arithmetic=DIVPRUNE_ARITHMETIC)]
                elif total >= packed.shape[0]:
                    out.append(packed)
                    self.mmtok_last.append((method, None))
                    continue
                else:
                    idx = divprune_select(packed, total, arithmetic=DIVPRUNE_ARITHMETIC)
                    out.append(packed[idx])
                    self.mmtok_last.append((method, [idx.tolist()]))
                    continue
            elif method == "visionzip":
                dominant, contextual = visionzip_split(k)
                merged = torch.stack(
                    [visionzip_merge(pre[sl][i], probs[sl][i], keys[sl][i], dominant, contextual) for i in range(c)]
                )
                projected = self.multi_modal_projector(merged.to(pre.dtype))
                out.append(projected.reshape(-1, projected.shape[-1]))
                self.mmtok_last.append((method, None))
                continue
            out.append(self._paper(proj, indices, grid))
            self.mmtok_last.append((method, [x.tolist() for x in indices]))
        return out
