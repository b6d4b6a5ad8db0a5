"""`mmtok`: multimodal coverage maximisation (arXiv 2508.18264), per crop, before the LLM.

The maths lives in `mmtok.selection.mmtok` (`mmtok_select`, re-exported here because other tools
import it from this module); this file only wires it to a request: the question's cleaned words
are looked up in the LLM's input embedding table, and every crop of the image is selected against
them (batched over crops), as in the paper's LLaVA-NeXT protocol.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mmtok.models.adapters import CropSelection, ImageCrops
from mmtok.pruners.base import Pruner, SampleContext
from mmtok.pruners.registry import register
from mmtok.selection.mmtok import mmtok_select
from mmtok.selection.text import question_token_ids


@register
@dataclass
class MMTokPruner(Pruner):
    """Defaults are the paper's LLaVA-1.5 / LLaVA-NeXT ones (Qwen2.5-VL would use tau_t=0.01)."""

    alpha: float = 0.5
    tau_t: float = 0.02
    tau_v: float = 0.2
    keep_option_letters: bool = False  # True fixes the release's quirk of dropping option "A"

    name: ClassVar[str] = "mmtok"

    def text_embeddings(self, ctx: SampleContext) -> torch.Tensor:
        if ctx.question is None or ctx.tokenizer is None:
            raise ValueError(
                "mmtok needs each sample's question text and the tokenizer: "
                "with pruner(model, tokenizer=processor.tokenizer, questions=[...])"
            )
        ids = question_token_ids(ctx.question, ctx.tokenizer, keep_option_letters=self.keep_option_letters)
        weight = ctx.embed_tokens.weight
        return weight[torch.tensor(ids, dtype=torch.long, device=weight.device)]

    def select(self, image: ImageCrops, k: int, ctx: SampleContext) -> CropSelection:
        text = self.text_embeddings(ctx)
        idx = mmtok_select(text, image.proj, image.pre[:, 1:], k, alpha=self.alpha, tau_t=self.tau_t, tau_v=self.tau_v)
        return CropSelection(indices=list(idx))


__all__ = ["MMTokPruner", "mmtok_select"]
