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
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mmtok.pruners import CropSelection, ImageCrops, Pruner, SampleContext, register
from mmtok.selection.mmtok import mmtok_select
from mmtok.selection.text import question_token_ids


@register
@dataclass
class MMTokPruner(Pruner):
    """Defaults are the paper's: alpha 0.5, tau_v 0.2, tau_t by family (`FamilySpec.method_defaults`)."""

    alpha: float = 0.5
    tau_t: float | None = None
    tau_v: float = 0.2
    keep_option_letters: bool = False  # True fixes the release's quirk of dropping option "A" (cleaned text)

    name: ClassVar[str] = "mmtok"

    def text_embeddings(self, ctx: SampleContext) -> torch.Tensor:
        if ctx.question is None or ctx.tokenizer is None:
            raise ValueError(
                "mmtok needs each sample's question text and the tokenizer: "
                "with pruner(model, tokenizer=processor.tokenizer, questions=[...])"
            )
        own = ctx.adapter.question_embeddings(ctx.embed_tokens, ctx.tokenizer, ctx.question)
        if own is not None:  # the family's release prepares the text its own way
            return own
        ids = question_token_ids(ctx.question, ctx.tokenizer, keep_option_letters=self.keep_option_letters)
        weight = ctx.embed_tokens.weight
        return weight[torch.tensor(ids, dtype=torch.long, device=weight.device)]

    def select(self, image: ImageCrops, k: int, ctx: SampleContext) -> CropSelection:
        text = self.text_embeddings(ctx)
        tau_t = self.tau_t if self.tau_t is not None else self.for_family(ctx.adapter.family).tau_t
        idx = mmtok_select(text, image.proj, image.patches, k, alpha=self.alpha, tau_t=tau_t, tau_v=self.tau_v)
        return CropSelection(indices=list(idx))


__all__ = ["MMTokPruner", "mmtok_select"]
