"""`mmtok`: multimodal coverage maximisation (arXiv 2508.18264), per crop, before the LLM.

The maths lives in `mmtok.selection.mmtok` (`mmtok_select`, re-exported here because other tools
import it from this module); this file only wires it to a request: the question's words are looked
up in the LLM's input embedding table, and every crop of the image is selected against them
(batched over crops), as in the paper's multi-crop protocol.

Per family, as the authors' release does: the text is the cleaned question (post-prompts and
stop words removed, `mmtok.selection.text`) unless the family's adapter prepares it its own way
(`FamilyAdapter.question_embeddings`); text-vision on the projected (LLM-space) tokens,
vision-vision on the pre-projector features the adapter exposes (`ImageCrops.patches`).
`tau_t=None` takes the family's value (`FamilySpec.method_defaults`, docs/families.md); the runner
records the resolved one.

The paper's ablations and MMTok++ are parameters of this one method, off by default (docs/mmtok.md,
"Variants"; the config files of configs/pruner/ named after the paper's method keys set them):
`terms` / `similarity` (Table 6), `adaptive_tau_v` (Table 9), `word_pooling` / `pooling_stage`
(Table 10), `exclude_padding` (MMTok++, Table 15: the padding tokens of a family with a padding rule
are never picked while others remain; when the budget exceeds the others, the greedy goes on over
them, so the LLM always receives `budget` distinct tokens).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mmtok.pruners import CropSelection, FamilyAdapter, ImageCrops, Pruner, SampleContext, family_of, register
from mmtok.selection.mmtok import Objective, mmtok_select
from mmtok.selection.text import question_token_ids, question_token_words


@register
@dataclass
class MMTokPruner(Pruner):
    """Defaults are the paper's: alpha 0.5, tau_v 0.2, tau_t by family (`FamilySpec.method_defaults`),
    and the main text's objective (every variant parameter below off)."""

    alpha: float = 0.5
    tau_t: float | None = None
    tau_v: float = 0.2
    keep_option_letters: bool = False  # True fixes the release's quirk of dropping option "A" (cleaned text)
    terms: str = "both"  # coverage terms: both | tv (text-vision only) | vv (vision-vision only)
    similarity: str = "softmax"  # softmax (calibrated rows) | raw (cosines)
    adaptive_tau_v: bool = False  # tau_v per crop from the paper's grid (Table 9)
    word_pooling: str = "none"  # none | mean | max | first: one text row per word (Table 10)
    pooling_stage: str = "pre"  # pre (pool embeddings) | post (pool cosine rows)
    exclude_padding: bool = False  # MMTok++: padding tokens excluded (families with a padding rule)

    name: ClassVar[str] = "mmtok"

    def __post_init__(self) -> None:
        super().__post_init__()
        self.objective()  # one-line errors for bad variant parameters, at construction
        if not isinstance(self.exclude_padding, bool):
            raise ValueError(f"exclude_padding must be true or false, got {self.exclude_padding!r}")

    def objective(self) -> Objective:
        return Objective(
            terms=self.terms,
            similarity=self.similarity,
            adaptive_tau_v=self.adaptive_tau_v,
            word_pooling=self.word_pooling,
            pooling_stage=self.pooling_stage,
        )

    def check_config(self, config) -> None:
        super().check_config(config)
        spec = family_of(config)
        if spec is None:
            return
        if self.exclude_padding and not spec.padding_rule:
            raise ValueError(
                f"mmtok exclude_padding=true (MMTok++) needs a rule for the tokens the image's padding fills, "
                f"which {spec.label} ({spec.model_type}) does not have; set exclude_padding=false"
            )
        own_text = spec.adapter_class().question_embeddings is not FamilyAdapter.question_embeddings
        if self.word_pooling != "none" and own_text:
            raise ValueError(
                f"mmtok word_pooling pools the cleaned question's words; {spec.label} ({spec.model_type}) "
                "prepares MMTok's text its own way: set word_pooling=none"
            )

    def text_embeddings(self, ctx: SampleContext) -> torch.Tensor:
        return self.text_rows(ctx)[0]

    def text_rows(self, ctx: SampleContext) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The question's rows of the input embedding table, and each row's word (None unless pooling)."""
        if ctx.question is None or ctx.tokenizer is None:
            raise ValueError(
                "mmtok needs each sample's question text and the tokenizer: "
                "with pruner(model, tokenizer=processor.tokenizer, questions=[...])"
            )
        own = ctx.adapter.question_embeddings(ctx.embed_tokens, ctx.tokenizer, ctx.question)
        pools = self.word_pooling != "none"
        if own is not None:  # the family's release prepares the text its own way
            if pools:
                raise ValueError(f"mmtok word_pooling does not apply to {ctx.adapter.family}: it prepares its own text")
            return own, None
        weight = ctx.embed_tokens.weight
        if pools:
            ids, words = question_token_words(ctx.question, ctx.tokenizer, keep_option_letters=self.keep_option_letters)
            words = torch.tensor(words, dtype=torch.long)
        else:
            ids = question_token_ids(ctx.question, ctx.tokenizer, keep_option_letters=self.keep_option_letters)
            words = None
        return weight[torch.tensor(ids, dtype=torch.long, device=weight.device)], words

    def padding_mask(self, image: ImageCrops, ctx: SampleContext) -> torch.Tensor | None:
        """MMTok++: the `[c, n]` padding tokens to exclude (None when `exclude_padding` is off)."""
        if not self.exclude_padding:
            return None
        if ctx.source is None:
            raise ValueError(
                "mmtok exclude_padding=true needs each sample's image size before preprocessing: "
                "with pruner(model, ..., sources=[ImageSource(width, height, image_preprocess), ...])"
            )
        mask = ctx.adapter.padding_patches(image, ctx.source)
        if mask is None:
            raise ValueError(f"mmtok exclude_padding=true: {ctx.adapter.family} has no padding rule")
        return mask

    def select(self, image: ImageCrops, k: int, ctx: SampleContext) -> CropSelection:
        text, words = self.text_rows(ctx)
        tau_t = self.tau_t if self.tau_t is not None else self.for_family(ctx.adapter.family).tau_t
        variant = {}
        if self.objective() != Objective():
            variant.update(objective=self.objective(), words=words)
        if self.exclude_padding:
            variant.update(exclude=self.padding_mask(image, ctx), fill_excluded=True)
        idx = mmtok_select(
            text, image.proj, image.patches, k, alpha=self.alpha, tau_t=tau_t, tau_v=self.tau_v, **variant
        )
        return CropSelection(indices=list(idx))


__all__ = ["MMTokPruner", "mmtok_select"]
