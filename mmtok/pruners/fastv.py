"""`fastv` (ECCV 2024): drop image tokens from layer K on, by the last prompt token's attention.

In layer K-1 the attention probabilities of the last prompt token to the image tokens (averaged
over heads) are recomputed for that one row (`attention_rows`); the top-R image tokens stay, in
their original order, with every text token. Layers >= K see (and cache) only the kept tokens,
which keep their ORIGINAL position ids; decode positions continue from the full prompt length.
On a tiling family the image span is the whole packed anyres span (newline tokens included).

Budget (`budget_mode`):
  "equivalent" (default, the 64/128/192 tables): `budget` is the layer-averaged count
      T_eq = (K*N + (L-K)*R) / L for an L-layer LLM and N image tokens, so
      R = round_half_up((T_eq*L - K*N) / (L-K)); R < 1 is an error naming the minimum budget.
      On a tiling family the label is relative to the 5 x 576 capacity (T_eq = budget * N / 2880), as
      the NeXT tables' labels are; with K=2 of 32 layers a label below 181 cannot be reached.
  "kept": `budget` is R itself.
R >= N (or `budget=None`) keeps every token: the scores are still computed, nothing is dropped.
Batches: every sample gets its own top-R; when the kept lengths differ (NeXT images with
different spans) the shorter samples are re-padded on the left with masked filler rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import torch

from mmtok.pruners import Cut, InLLMPruner, LayerTrace, LayerView, keep_vision, one_cut_schedule, register
from mmtok.selection import top_in_order

BUDGET_MODES = ("equivalent", "kept")


def fastv_keep(scores: torch.Tensor, r: int) -> torch.Tensor:
    """Indices of the `r` highest `scores` (ties to the lower index), in original order."""
    return top_in_order(scores, r)


@register
@dataclass
class FastVPruner(InLLMPruner):
    layer: int = 2  # K: layers >= K see the pruned sequence; scores come from layer K-1
    budget_mode: str = "equivalent"

    name: ClassVar[str] = "fastv"
    takes_ratio: ClassVar[bool] = True  # R = int(retain_ratio x image tokens)
    renumber_positions: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"fastv: layer K must be an integer >= 1 (scores come from layer K-1), got {self.layer!r}")
        if self.budget_mode not in BUDGET_MODES:
            raise ValueError(f"fastv: unknown budget_mode {self.budget_mode!r}; valid: {', '.join(BUDGET_MODES)}")

    def prune_layers(self, num_layers: int) -> tuple[int, ...]:
        if self.layer >= num_layers:
            raise ValueError(f"fastv: layer K={self.layer} must be below the LLM's {num_layers} layers")
        return (self.layer - 1,)

    def kept_tokens(self, n: int, num_layers: int, capacity: int | None = None) -> int:
        """R for an image of `n` tokens in an LLM of `num_layers` layers (at most n).

        `capacity` is the most image tokens the model can produce (576 on a one-crop family, 5 x 576
        on a tiling one). An equivalent budget is a label relative to it, like the NeXT tables' labels:
        an image of n tokens gets the target T_eq = budget * n / capacity (= budget on a one-crop family).
        """
        if self.retain_ratio is not None:  # the release's ratio rule, applied to R
            return int(self.retain_ratio * n)
        if self.budget is None:
            return n
        if self.budget_mode == "kept":
            return min(self.budget, n)
        capacity = n if capacity is None else capacity
        k, layers = self.layer, num_layers
        target = Fraction(self.budget * n, capacity)
        r = math.floor((target * layers - k * n) / (layers - k) + Fraction(1, 2))
        if r < 1:
            at_capacity = math.floor(Fraction(self.budget * layers - k * capacity, layers - k) + Fraction(1, 2))
            if at_capacity >= 1:
                return 1  # a small image of a feasible label: keep at least one token
            minimum = math.ceil((k * capacity + Fraction(layers - k, 2)) / layers)
            raise ValueError(
                f"fastv: budget {self.budget} (equivalent tokens of {capacity}) is too small for K={k} and "
                f"{layers} layers: it leaves R={at_capacity} kept tokens; the minimum budget is {minimum} "
                f"(or use budget_mode='kept')"
            )
        return min(r, n)

    def llm_hooks(self, model, adapter):
        self._capacity = self.capacity(adapter.config)
        return super().llm_hooks(model, adapter)

    def check_config(self, config) -> None:
        super().check_config(config)
        capacity = self.capacity(config)
        if capacity is not None:  # else the count follows the image: checked per request
            self.kept_tokens(capacity, config.text_config.num_hidden_layers, capacity)

    def layer_schedule(self, n: int, config) -> list[int]:
        r = self.kept_tokens(n, config.text_config.num_hidden_layers, self.capacity(config))
        return one_cut_schedule(n, min(r, n), self.layer, config)

    def cut(self, step: int, view: LayerView) -> list[Cut]:
        rows = view.stage.rows
        batch = view.hidden.shape[0]
        last = torch.full((batch, 1), rows - 1, dtype=torch.long, device=view.hidden.device)
        probs = view.attention(last)[:, 0]  # [B, rows]: the last prompt token's row
        cuts, scores, kept = [], [], []
        for b, span in enumerate(view.stage.spans):
            score = probs[b, span.start : span.start + span.length]
            r = self.kept_tokens(span.length, view.num_layers, self._capacity)
            keep = fastv_keep(score, r)
            scores.append(score.cpu())
            kept.append(keep.cpu())
            cuts.append(Cut() if r >= span.length else keep_vision(span, rows, keep))
        self.last_trace.append(LayerTrace(layer=view.index, keep=kept, scores=scores))
        return cuts
