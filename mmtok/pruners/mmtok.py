"""`mmtok`: multimodal coverage maximisation (arXiv 2508.18264), per crop, before the LLM.

The maths lives in `mmtok.selection.mmtok` (`mmtok_select`, re-exported here because other tools
import it from this module); this file only wires it to a request: the question's words are looked
up in the LLM's input embedding table, and every crop of the image is selected against them
(batched over crops), as in the paper's LLaVA-NeXT protocol.

Per family, as the authors' release does:
- LLaVA-1.5 / NeXT: text = the cleaned question (post-prompts and stop words removed,
  `mmtok.selection.text`); vision-vision on CLIP layer -2 (CLS removed); tau_t 0.02.
- Qwen2.5-VL: text = "Question: <question>" split on whitespace, nothing removed
  (`mmtok.models.qwen25vl.release_question_embeddings`); text-vision on the merged (LLM-space)
  tokens, vision-vision on the ViT's last block averaged over each 2x2 merge unit, in raster
  order; tau_t 0.01.
`tau_t=None` takes the family's value; the runner records the resolved one.
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
    """Defaults are the paper's: alpha 0.5, tau_v 0.2, tau_t by family (0.02 LLaVA, 0.01 Qwen2.5-VL)."""

    alpha: float = 0.5
    tau_t: float | None = None
    tau_v: float = 0.2
    keep_option_letters: bool = False  # True fixes the release's quirk of dropping option "A" (LLaVA text)

    name: ClassVar[str] = "mmtok"
    family_defaults: ClassVar[dict[str, dict]] = {
        "llava": {"tau_t": 0.02},
        "llava_next": {"tau_t": 0.02},
        "qwen2_5_vl": {"tau_t": 0.01},
    }

    def text_embeddings(self, ctx: SampleContext) -> torch.Tensor:
        if ctx.question is None or ctx.tokenizer is None:
            raise ValueError(
                "mmtok needs each sample's question text and the tokenizer: "
                "with pruner(model, tokenizer=processor.tokenizer, questions=[...])"
            )
        if ctx.adapter.family == "qwen2_5_vl":
            from mmtok.models.qwen25vl import release_question_embeddings  # defers the family module

            return release_question_embeddings(ctx.embed_tokens, ctx.tokenizer, ctx.question)
        ids = question_token_ids(ctx.question, ctx.tokenizer, keep_option_letters=self.keep_option_letters)
        weight = ctx.embed_tokens.weight
        return weight[torch.tensor(ids, dtype=torch.long, device=weight.device)]

    def select(self, image: ImageCrops, k: int, ctx: SampleContext) -> CropSelection:
        text = self.text_embeddings(ctx)
        tau_t = self.tau_t if self.tau_t is not None else self.family_defaults[ctx.adapter.family]["tau_t"]
        idx = mmtok_select(text, image.proj, image.patches, k, alpha=self.alpha, tau_t=tau_t, tau_v=self.tau_v)
        return CropSelection(indices=list(idx))


__all__ = ["MMTokPruner", "mmtok_select"]
