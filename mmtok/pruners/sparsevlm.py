"""`sparsevlm` (ICML 2025, v1.5 style): text-guided pruning at a few decoder layers, with recycling.

* Raters: from the layer-0 input embeddings, the text tokens after the image whose relevance
  (`softmax(V T^T)` over text, averaged over vision tokens) is above the mean (`text_raters`).
* At each pruning layer (default 2, 6, 15) the attention of the rater rows to the current vision
  tokens is recomputed from the layer input, averaged over heads and raters; the top-k vision
  tokens of the layer's OUTPUT stay (in order). Recycling follows the release exactly
  (`mmtok.selection.sparsevlm.recycle`): of the m pruned tokens, the top `int(0.3 m) + 1` by score
  are clustered into `int(n / 10) + 1` groups by the release's density-peak k-NN (`cluster_num`
  neighbours, self included; the densest token's distance is the matrix maximum), and each
  cluster's normalised sum (of the layer output) is inserted right after the kept vision tokens,
  clusters in centre-score order; recycled tokens count as vision tokens for later pruning layers.
  One deliberate difference: no `rand * 1e-6` noise on the densities (deterministic instead).
* Positions are renumbered contiguously after every drop; a decode token's position in a layer is
  that layer's cached length.
* k per layer: `counts` if given, else `layer_counts(budget, N)` — the v1.5 tables for N=576
  (192 -> 300/200/110, 128 -> 303/110/36, 64 -> 66/30/17), interpolated / rescaled otherwise.
Batch size 1 only, like the original release.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from mmtok.pruners import Cut, InLLMPruner, LayerTrace, LayerView, keep_vision, register
from mmtok.selection.sparsevlm import layer_counts, recycle, recycled_groups, text_raters


@register
@dataclass
class SparseVLMPruner(InLLMPruner):
    layers: tuple[int, ...] = (2, 6, 15)  # decoder layers whose output is pruned
    counts: tuple[int, ...] | None = None  # kept vision tokens per pruning layer (overrides budget)

    name: ClassVar[str] = "sparsevlm"
    requires: ClassVar[frozenset[str]] = frozenset({"rope_1d"})
    supports_batch: ClassVar[bool] = False
    renumber_positions: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.layers = tuple(self.layers)
        if self.counts is not None:
            self.counts = tuple(self.counts)
            if len(self.counts) != len(self.layers) or any(not isinstance(c, int) or c < 1 for c in self.counts):
                raise ValueError(
                    f"sparsevlm: counts must be {len(self.layers)} integers >= 1 (one per layer), got {self.counts}"
                )
            if self.budget is not None:
                raise ValueError("sparsevlm: give either budget or counts, not both")
        elif len(self.layers) != 3 and self.budget is not None:
            raise ValueError("sparsevlm: the budget rule covers three pruning layers; give counts for other layers")

    def prune_layers(self, num_layers: int) -> tuple[int, ...]:
        return self.layers

    def layer_counts(self, n: int) -> tuple[int, ...]:
        if self.counts is not None:
            return self.counts
        if self.budget is None:
            return (n,) * len(self.layers)
        return layer_counts(self.budget, n)

    def layer_schedule(self, n: int, config) -> list[int]:
        vision, schedule = n, []
        counts = self.layer_counts(n)
        for i in range(config.text_config.num_hidden_layers):
            schedule.append(vision)
            if i in self.layers:
                k = min(counts[self.layers.index(i)], vision)
                if k < vision:  # the pruned tokens come back as recycled clusters
                    vision = k + recycled_groups(vision - k)[1]
        return schedule

    def cut(self, step: int, view: LayerView) -> list[Cut]:
        stage = view.stage
        if view.hidden.shape[0] != 1:
            raise ValueError("sparsevlm supports batch size 1 only")
        span = stage.spans[0]
        vision = slice(span.start, span.start + span.length)
        if step == 0:
            # raters once per prompt, from the layer-0 input; tracked by original row afterwards
            embeds = view.embeds[0]
            text = torch.arange(span.start + span.length, stage.rows, device=embeds.device)
            self._raters = text[text_raters(embeds[vision], embeds[text])]
            self._counts = self.layer_counts(span.length)
        rows = torch.isin(stage.origin[0], self._raters).nonzero().flatten()
        score = view.attention(rows[None])[0][:, vision].mean(dim=0)  # [vision tokens]
        k = min(self._counts[step], span.length)
        order = torch.sort(score, descending=True, stable=True).indices
        keep, pruned = order[:k].sort().values, order[k:].sort().values
        extra = recycle(view.out[0, span.start + pruned], score[pruned])
        self.last_trace.append(
            LayerTrace(
                layer=view.index,
                keep=[keep.cpu()],
                scores=[score.cpu()],
                raters=[self._raters.cpu()],
                recycled=[int(extra.shape[0])],
            )
        )
        if k >= span.length:
            return [Cut()]
        return [keep_vision(span, stage.rows, keep, extra)]
