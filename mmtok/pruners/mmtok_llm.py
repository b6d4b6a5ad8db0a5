"""`mmtok_llm`: MMTok's coverage selection again, inside the LLM at decoder layer K (the paper's Table 14).

The paper (App. B.6, "a preliminary experiment") selects 160 tokens with MMTok after the encoder and
then again 80 "for an intermediate layer (i.e., L-24)" of its 40-layer 13B model; it states nothing else and
the authors' release has no code for it. Every choice below is ours (docs/pruners.md lists them):

- Where: the output of decoder layer K-1 is pruned, so layers >= K see the kept tokens, FastV's and
  DART's convention. `layer=24` therefore keeps the selection's input in the first 24 layers
  (indices 0-23, "the 24th layer" counted from 1 is the last to see every token) and 80 tokens in
  layers 24-39 of the 40-layer 13B LLM.
- What it compares: the hidden states layer K receives, as its attention reads them (the output of
  layer K-1 through layer K's input RMSNorm, `LayerView.next_input`), for both sides: the vision
  side is the image span's rows (text-vision and vision-vision terms on the same states, since the
  layer has no separate pre-projector features), the text side every prompt row after the image
  span (the question and the chat template's tail: the rows that follow the image in the prompt).
- The greedy, alpha, tau_v and the family's tau_t are pre-LLM MMTok's (`mmtok_select`), unchanged.
- Over the whole image span (all of an image's crops together on a tiling family: the LLM's span
  has no crop boundaries left), `budget` tokens kept; `budget=None` keeps everything.
- Kept tokens keep their original position ids and the KV cache of layers >= K holds only them (the
  shared in-LLM path, as FastV); the selection runs once, in prefill, never during decoding.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mmtok.pruners import Cut, InLLMPruner, LayerTrace, LayerView, keep_vision, one_cut_schedule, register
from mmtok.selection.mmtok import mmtok_select


@register
@dataclass
class MMTokLLMPruner(InLLMPruner):
    """Keep `budget` image tokens from decoder layer `layer` on, chosen by MMTok's coverage on that layer's input."""

    layer: int = 2  # K: layers >= K see the kept tokens (the paper's Table 14: 24)
    alpha: float = 0.5
    tau_t: float | None = None  # None: the family's MMTok value (FamilySpec.method_defaults)
    tau_v: float = 0.2

    name: ClassVar[str] = "mmtok_llm"

    def __post_init__(self) -> None:
        super().__post_init__()
        if isinstance(self.layer, bool) or not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(
                f"mmtok_llm: layer K must be an integer >= 1 (layer K-1's output is pruned), got {self.layer!r}"
            )

    def prune_layers(self, num_layers: int) -> tuple[int, ...]:
        if self.layer >= num_layers:
            raise ValueError(
                f"mmtok_llm: layer K={self.layer} must be below the LLM's {num_layers} layers; "
                f"valid: 1 to {num_layers - 1}"
            )
        return (self.layer - 1,)

    def kept(self, n: int) -> int:
        return n if self.budget is None else min(self.budget, n)

    def layer_schedule(self, n: int, config) -> list[int]:
        return one_cut_schedule(n, self.kept(n), self.layer, config)

    def cut(self, step: int, view: LayerView) -> list[Cut]:
        stage = view.stage
        rows = stage.rows
        states = view.next_input()
        cuts, kept = [], []
        for b, span in enumerate(stage.spans):
            k = self.kept(span.length)
            if k >= span.length:
                kept.append(torch.arange(span.length))
                cuts.append(Cut())
                continue
            end = span.start + span.length
            text_rows = torch.arange(end, rows, device=states.device)
            text_rows = text_rows[stage.valid[b, end:].to(states.device)]
            vision = states[b, span.start : end]
            ctx = self.request.contexts[b]
            tau_t = self.tau_t if self.tau_t is not None else self.for_family(ctx.adapter.family).tau_t
            keep = mmtok_select(
                states[b, text_rows], vision, vision, k, alpha=self.alpha, tau_t=tau_t, tau_v=self.tau_v
            )
            kept.append(keep.cpu())
            cuts.append(keep_vision(span, rows, keep.to(view.out.device)))
        self.last_trace.append(LayerTrace(layer=view.index, keep=kept))
        return cuts
