"""`cdpruner` (CDPruner, NeurIPS 2025): a DPP over instruction-conditioned similarities, before the LLM.

The relevance term needs CLIP's text tower and both projections, which the VLM checkpoints lack, so
the pruner loads a CLIP model beside the VLM (`clip_path`: a hub id in the local HF cache or a
folder; by default the CLIP-L/336 the CLS-towered checkpoints were built on), lazily on first
use and once per path and device. As the release: the instruction (the question without the image
placeholder and the benchmark's answer-format suffix) is tokenised without truncation, cut into
`max_position_embeddings`-token segments (zero-padded) and encoded in float32; the patches'
image embeddings are CLIP's `visual_projection(post_layernorm(.))` of the features the projector
reads (the layer the model selects, CLS dropped), in float32. The rule is
`mmtok.selection.cdpruner.cdpruner_select` over all crops of the image at once.

Budget: `budget` tokens per crop reach the LLM (the release's `visual_token_num`: 64/128/192 for
one 576-token crop; its multi-crop scripts pass a per-crop number, 32 -> "32 x 5 = 160"). Tiling families: per
crop under our layouts (the release keeps T per crop, then unpads with the mask).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mmtok.pruners import (
    CropSelection,
    ImageCrops,
    Pruner,
    SampleContext,
    cached_hub_snapshot,
    is_hub_id,
    register,
)
from mmtok.selection.cdpruner import cdpruner_select
from mmtok.selection.text import strip_prompt

DEFAULT_CLIP = "openai/clip-vit-large-patch14-336"


class ClipText(nn.Module):
    """The parts of a CLIP model CDPruner uses: text tower + projection, the vision tower's
    post-layernorm and its projection (the vision encoder itself is dropped after loading)."""

    def __init__(self, clip: nn.Module, tokenizer):
        super().__init__()
        self.tokenizer = tokenizer
        self.text_model = clip.text_model
        self.text_projection = clip.text_projection
        vision = clip.vision_model
        self.post_layernorm = (vision.vision_model if hasattr(vision, "vision_model") else vision).post_layernorm
        self.visual_projection = clip.visual_projection
        self.segment = int(clip.config.text_config.max_position_embeddings)

    @property
    def vision_width(self) -> int:
        return self.visual_projection.in_features

    @torch.no_grad()
    def text_embeds(self, text: str) -> torch.Tensor:
        """[M, C]: one embedding per `segment`-token piece of the tokenised text (zero-padded)."""
        inputs = self.tokenizer(text=text, return_tensors="pt")
        length = inputs["input_ids"].shape[1]
        pieces = (length - 1) // self.segment + 1
        pad = pieces * self.segment - length
        device = self.visual_projection.weight.device
        batch = {
            key: torch.cat([inputs[key], inputs[key].new_zeros(1, pad)], dim=1).reshape(-1, self.segment).to(device)
            for key in ("input_ids", "attention_mask")
        }
        pooled = self.text_model(**batch).pooler_output
        return self.text_projection(pooled)

    @torch.no_grad()
    def image_embeds(self, patches: torch.Tensor) -> torch.Tensor:
        """[..., C] float32 CLIP image embeddings of patch features [..., D_vis]: the layer norm in
        the features' (the tower's) dtype, the projection in float32, as the release."""
        norm = self.post_layernorm
        weight, bias = norm.weight.to(patches.dtype), norm.bias.to(patches.dtype)
        normed = torch.nn.functional.layer_norm(patches, norm.normalized_shape, weight, bias, norm.eps)
        return self.visual_projection(normed.float())


_LOADED: dict[tuple[str, str], ClipText] = {}


def clip_source_problem(path: str) -> str | None:
    """Why `path` cannot provide a CLIP model here (one line), or None. Never downloads."""
    how = "pass clip_path=<a local CLIP folder> (run.py: pruner.params.clip_path=...)"
    if os.path.isdir(path):
        if not os.path.isfile(os.path.join(path, "config.json")):
            return f"cdpruner: clip_path {path!r} has no config.json; {how}"
        return None
    if not is_hub_id(path):
        return f"cdpruner: clip_path {path!r} does not exist; {how} or a cached hub id such as {DEFAULT_CLIP}"
    if cached_hub_snapshot(path) is None:
        return (
            f"cdpruner needs a CLIP model for its relevance term: {path!r} is not in the local HF cache; "
            f"pre-download it with `hf download {path}`, or {how}"
        )
    return None


def load_clip(path: str, device: torch.device | str) -> ClipText:
    """The CLIP parts at `path` on `device`, float32 (as the release), loaded once per path/device."""
    key = (path, str(device))
    if key not in _LOADED:
        problem = clip_source_problem(path)
        if problem:
            raise ValueError(problem)
        from transformers import AutoTokenizer, CLIPModel

        clip = CLIPModel.from_pretrained(path, dtype=torch.float32)
        parts = ClipText(clip, AutoTokenizer.from_pretrained(path)).eval().to(device)
        del clip
        _LOADED[key] = parts
    return _LOADED[key]


@register
@dataclass
class CDPrunerPruner(Pruner):
    clip_path: str = DEFAULT_CLIP  # CLIP model (text tower + projections) the relevance comes from
    theta: float | None = None  # the release's commented-out relevance reweighting; None = off, as released

    name: ClassVar[str] = "cdpruner"
    # CLIP vision features (a CLS tower: CLS at 0, dropped) go through a CLIP model's projection
    requires: ClassVar[frozenset[str]] = frozenset({"cls"})

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.clip_path, str) or not self.clip_path.strip():
            raise ValueError(f"cdpruner: clip_path must be a CLIP folder or hub id, got {self.clip_path!r}")
        if self.theta is not None and (
            isinstance(self.theta, bool) or not isinstance(self.theta, (int, float)) or not 0 <= self.theta < 1
        ):
            raise ValueError(f"cdpruner: theta must be in [0, 1) or null (off), got {self.theta!r}")

    def check_config(self, config) -> None:
        """Also fails early, from the configs alone, when the CLIP model is missing or does not fit
        the VLM's vision tower (runners call this before the VLM's weights load)."""
        super().check_config(config)
        if self.budget in (None, 0) and self.retain_ratio is None:
            return  # keeps everything, or text only (budget 0): no CLIP needed
        problem = clip_source_problem(self.clip_path)
        if problem:
            raise ValueError(problem)
        from transformers import AutoConfig

        clip_config = AutoConfig.from_pretrained(self.clip_path)
        vision = getattr(clip_config, "vision_config", None)
        if vision is None or not hasattr(clip_config, "text_config"):
            raise ValueError(f"cdpruner: clip_path {self.clip_path!r} is not a CLIP model (no text/vision configs)")
        width = config.vision_config.hidden_size
        if vision.hidden_size != width:
            raise ValueError(
                f"cdpruner: the CLIP at {self.clip_path!r} has vision width {vision.hidden_size}, the model's "
                f"vision tower {width}; pass the CLIP the tower came from"
            )

    def select(self, image: ImageCrops, k: int, ctx: SampleContext) -> CropSelection:
        if ctx.question is None:
            raise ValueError("cdpruner needs each sample's question text: with pruner(model, questions=[...])")
        clip = load_clip(self.clip_path, image.pre.device)
        patches = image.pre[:, 1:]
        if patches.shape[-1] != clip.vision_width:
            raise ValueError(
                f"cdpruner: the CLIP at {self.clip_path!r} has vision width {clip.vision_width}, the model's "
                f"vision tower {patches.shape[-1]}; pass the CLIP the tower came from"
            )
        text = clip.text_embeds(strip_prompt(ctx.question))
        idx = cdpruner_select(image.proj, clip.image_embeds(patches), text, k, theta=self.theta)
        return CropSelection(indices=list(idx))
