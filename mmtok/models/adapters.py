"""The family-adapter protocol: everything a model family differs in, behind one interface.

A pruner never looks at model internals. The request path (`mmtok.pruners.core.engine`) asks the model's
adapter to encode the images into per-crop tokens (`ImageCrops`), turns each image's kept tokens
(`CropSelection` from a method) into the tokens the LLM receives (`assemble` -> `KeptImage`), and
has the adapter build the shortened LLM inputs (`build_inputs` -> `LLMInputs`: embeddings,
attention mask, position ids, image spans) and the kwargs of the model's own `generate`. In-LLM
methods reach the decoder through `language_model` (layers, rotary embedding, final norm).

Each family folder `mmtok/models/<family>/` implements its adapter (`adapter.py`) and names it in
its `FamilySpec` (`mmtok.models.registry`); `adapter_for(model)` picks it by `config.model_type`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from mmtok.models.registry import FAMILIES, family_of

LAYOUTS = ("paper", "hf")


@dataclass
class ImageCrops:
    """Vision features of one image, crop-major (one crop, or a base image + tiles on tiling families)."""

    proj: torch.Tensor  # [c, n, D_llm] projected tokens (what the LLM would receive)
    pre: torch.Tensor  # [c, n(+1), D_vis] vision features before the projector; CLS at 0 when has_cls
    grid: tuple[int, int] | None = None  # tiling families: (rows, cols) of tiles; else the (h, w) token grid, if any
    image_size: tuple[int, int] | None = None  # NeXT: original (height, width)
    has_cls: bool = True  # CLIP towers put a CLS token at index 0 of `pre`; towers without one set False
    # signals a method captures inside the tower (VisionZip, VisPruner), None until one does:
    cls_attention: torch.Tensor | None = None  # [c, H, n+1] the CLS row's attention per head
    keys: torch.Tensor | None = None  # [c, n(+1), head_dim] the keys averaged over heads
    # towers without a CLS row: the family's substitute score per token (`encode_with_attention`)
    attention: torch.Tensor | None = None  # [c, n], aligned with `proj`

    @property
    def num_crops(self) -> int:
        return self.proj.shape[0]

    @property
    def tokens_per_crop(self) -> int:
        return self.proj.shape[1]

    @property
    def patches(self) -> torch.Tensor:
        """[c, n, D_vis] pre-projector features aligned with `proj` (CLS removed)."""
        return self.pre[:, 1:] if self.has_cls else self.pre


@dataclass(frozen=True)
class ImageSource:
    """One sample's image as the evaluation handed it to the family's preprocessing: its size then,
    and the `image_preprocess` mode it went through (what a geometry rule such as `padding_patches`
    needs: the processor only ever sees the preprocessed image)."""

    width: int
    height: int
    preprocess: str  # the `image_preprocess` mode ("crop", "pad", ...)


@dataclass
class CropSelection:
    """A pruner's answer for one image: kept indices per crop, or new features per crop."""

    indices: list[torch.Tensor] | None = None  # per crop, sorted LongTensor into that crop's tokens
    # per crop, [k_c, D_llm] (merging methods); with `indices` too, the tokens standing in those rows
    # (in the indices' order), for families whose kept tokens keep their original positions
    features: list[torch.Tensor] | None = None
    packed_indices: torch.Tensor | None = None  # indices into the family's full (HF) packed sequence


@dataclass
class KeptImage:
    """The image tokens one sample's LLM input receives, in sequence order."""

    tokens: torch.Tensor  # [k, D_llm]
    index: torch.Tensor | None = None  # [k] rows of `full_sequence` they are; None for merged tokens

    @property
    def count(self) -> int:
        return int(self.tokens.shape[0])


@dataclass
class ImageSpan:
    """Where one sample's image tokens sit in the padded sequence the LLM receives."""

    start: int
    length: int


@dataclass
class LLMInputs:
    """The shortened, left-padded prompt the LLM's `generate` receives."""

    inputs_embeds: torch.Tensor  # [B, L, D_llm]
    attention_mask: torch.Tensor  # [B, L]
    spans: list[ImageSpan]
    position_ids: torch.Tensor | None = None  # None: the model's own (1-D, from the mask); M-RoPE: [3, B, L]


@dataclass
class TextPrompt:
    """A batch's prompt without its image tokens (the text-only run, budget 0), left-padded again."""

    input_ids: torch.Tensor  # [B, L']
    attention_mask: torch.Tensor  # [B, L']
    spans: list[ImageSpan]  # per sample, an empty span where its image tokens were
    removed: list[int]  # image tokens removed per sample: what the unmodified model would have fed


class FamilyAdapter:
    """Base of the family adapters (see the module docstring for the protocol)."""

    family: ClassVar[str] = ""  # the HF model_type (set by the family's adapter)
    # keyword arguments of `generate` that describe the images (popped and handed to the adapter)
    image_keys: ClassVar[tuple[str, ...]] = ()
    # which per-token features a diversity method compares on this family (DivPrune, as its
    # release): "proj" (the LLM-space tokens) or "patches" (pre-projector features, CLS removed)
    diversity_features: ClassVar[str] = "proj"

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    @property
    def language_model(self) -> nn.Module:
        """The decoder stack: `.layers`, `.rotary_emb`, `.norm`, `.config`."""
        return self.model.model.language_model

    # -- vision -------------------------------------------------------------------------------
    def encode(self, pixel_values: torch.Tensor, **image_inputs) -> list[ImageCrops]:
        """Run the vision tower once; `image_inputs` are the family's `image_keys` from the call."""
        raise NotImplementedError

    @property
    def traits(self) -> frozenset[str]:
        """What the family offers a method (`mmtok.models.registry.TRAITS`)."""
        return FAMILIES[self.family].traits

    def encode_with_attention(self, pixel_values: torch.Tensor, **image_inputs) -> list[ImageCrops]:
        """`encode`, with every image's `attention` (one score per token) and `keys` set from the same
        tower pass: the substitute for CLS attention of a family with the "tower_attention" trait and
        no CLS token (a family with a CLS row offers that row instead)."""
        raise NotImplementedError(f"{self.family} declares no substitute for CLS attention")

    def question_embeddings(self, embed_tokens: nn.Module, tokenizer, question: str) -> torch.Tensor | None:
        """The question's text rows as this family's release of a text-guided method (MMTok) prepares
        them, or None where the family uses the method's own (cleaned-question) rule."""
        return None

    def padding_patches(self, image: ImageCrops, source: ImageSource) -> torch.Tensor | None:
        """`[c, n]` boolean mask of the tokens lying entirely in padding that the family's preprocessing
        (`source.preprocess`) added to the image (all False where it adds none), or None where the family
        has no such rule (`FamilySpec.padding_rule` False). MMTok++ excludes these tokens."""
        return None

    # -- assembly -----------------------------------------------------------------------------
    def max_crops(self) -> int:
        return 1

    def full_sequence(self, image: ImageCrops) -> torch.Tensor:
        """The image tokens exactly as the unmodified HF model would feed them."""
        return image.proj[0]

    def full_length(self, image: ImageCrops) -> int:
        return image.tokens_per_crop

    def assemble(self, image: ImageCrops, sel: CropSelection, layout: str) -> torch.Tensor:
        """The image tokens [k, D_llm] the LLM receives for selection `sel`."""
        raise NotImplementedError

    def kept(self, image: ImageCrops, sel: CropSelection, layout: str) -> KeptImage:
        """`assemble` plus, where the family needs it (original positions), which rows were kept."""
        return KeptImage(tokens=self.assemble(image, sel, layout))

    def kept_all(self, image: ImageCrops) -> KeptImage:
        """Every image token, exactly as the unmodified model feeds them."""
        full = self.full_sequence(image)
        return KeptImage(tokens=full, index=torch.arange(full.shape[0], device=full.device))

    def build_inputs(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, kept: list[KeptImage], image_inputs: dict
    ) -> LLMInputs:
        """The LLM inputs for a padded batch whose sample b keeps image tokens `kept[b]`."""
        raise NotImplementedError

    def text_prompt(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> TextPrompt:
        """The text-only prompt of a padded batch: every sample's prompt without the image
        placeholder's tokens (`config.image_token_id`, as the processor expanded it), everything
        else unchanged (start / end markers around the image stay), left-padded again. The model's
        own `generate` runs on it as on any text prompt."""
        image_id = self.config.image_token_id
        rows, firsts, removed = [], [], []
        for ids, mask in zip(input_ids, attention_mask):
            ids = ids[mask.bool()]
            is_image = ids == image_id
            where = is_image.nonzero().view(-1)
            firsts.append(int(where[0]) if where.numel() else int(ids.numel()))
            removed.append(int(where.numel()))
            rows.append(ids[~is_image])
        width = max(r.numel() for r in rows)
        pad = self.model.generation_config.pad_token_id
        pad = 0 if pad is None else int(pad)
        out = input_ids.new_full((len(rows), width), pad)
        mask = attention_mask.new_zeros(len(rows), width)
        spans = []
        for b, row in enumerate(rows):
            start = width - row.numel()  # left padding, as the processor pads
            out[b, start:] = row
            mask[b, start:] = 1
            spans.append(ImageSpan(start=start + firsts[b], length=0))
        return TextPrompt(input_ids=out, attention_mask=mask, spans=spans, removed=removed)

    def generate_inputs(self, inputs: LLMInputs) -> dict:
        """The keyword arguments of the model's own `generate` for `inputs`."""
        out = {"inputs_embeds": inputs.inputs_embeds, "attention_mask": inputs.attention_mask}
        if inputs.position_ids is not None:
            out["position_ids"] = inputs.position_ids
        return out


def adapter_for(model: nn.Module) -> FamilyAdapter:
    """The adapter of `model`'s family (by `config.model_type`); one-line TypeError otherwise."""
    model_type = getattr(getattr(model, "config", None), "model_type", None)
    info = FAMILIES.get(model_type)
    if info is None or type(model).__name__ != info.hf_class:
        valid = ", ".join(f.hf_class for f in FAMILIES.values())
        raise TypeError(f"unsupported model class {type(model).__name__}; valid: {valid}")
    return info.adapter_class()(model)


def max_crops(config) -> int:
    """Crops of the largest split a checkpoint can produce: 1, or on a tiling family (`anyres_tiles`)
    the base image plus the most tiles of any grid pinpoint (5 for the tiling checkpoints we run)."""
    pinpoints = getattr(config, "image_grid_pinpoints", None)
    spec = family_of(config)
    if spec is None or not spec.anyres_tiles or not pinpoints:
        return 1
    size = config.vision_config.image_size
    return 1 + max((h // size) * (w // size) for h, w in pinpoints)


def tokens_per_crop(config) -> int | None:
    """Image tokens of one crop; None where the count follows the image size (`tokens_follow_image`)."""
    vision = config.vision_config
    spec = family_of(config)
    if spec is not None and spec.tokens_follow_image:
        return None
    return (vision.image_size // vision.patch_size) ** 2


def image_capacity(config) -> int | None:
    """The most image tokens one image can give (a budget label's reference); None where it follows the image."""
    per_crop = tokens_per_crop(config)
    return None if per_crop is None else per_crop * max_crops(config)
