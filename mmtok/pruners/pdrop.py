"""`pdrop` (PyramidDrop, CVPR 2025): staged drops of image tokens inside the LLM by a ratio lambda.

At each rank layer r (default L/4, L/2, 3L/4: the release's 8, 16, 24 of 32), the attention of the
last prompt token to the current image tokens is computed in layer r from its input (= layer r-1's
output; averaged over heads, `attention_rows` on that one row), and the top `int(N * lambda^s)`
image tokens stay (original order), N being the image's original count; layers >= r see only them.
Positions are renumbered contiguously after every drop, as the release does (its decode positions
are shifted by the dropped count, which is the same thing).

Budget: `budget=None` and `ratio=None` is the release's lambda = 0.5 (a 576-token crop: 576 -> 288 / 144 /
72, 270 equivalent tokens). `ratio` sets lambda. A `budget` is the layer-averaged equivalent count
of the 64/128/192 tables (on a tiling family relative to the 5 x 576 capacity, like FastV's labels);
lambda is solved so that the schedule averages `budget` before the counts are floored. Budgets at
or below N * (first stage's layers) / L cannot be reached (the first stage sees every token): an
error names the minimum and suggests earlier `layers`.
"""

from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction
from typing import ClassVar

import torch

from mmtok.pruners import Cut, InLLMPruner, LayerTrace, LayerView, keep_vision, register
from mmtok.selection import top_in_order
from mmtok.selection.pdrop import RELEASE_RATIO, default_rank_layers, solve_ratio, stage_counts


@register
@dataclass
class PDropPruner(InLLMPruner):
    layers: tuple[int, ...] | None = None  # rank layers (the release's layer_list); None: L/4, L/2, 3L/4
    ratio: float | None = None  # lambda; None: 0.5 without a budget, solved from the budget with one

    name: ClassVar[str] = "pdrop"
    requires: ClassVar[frozenset[str]] = frozenset({"rope_1d"})
    renumber_positions: ClassVar[bool] = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.layers is not None:
            self.layers = tuple(self.layers)
        if self.ratio is not None:
            if isinstance(self.ratio, bool) or not isinstance(self.ratio, (int, float)) or not 0 < self.ratio <= 1:
                raise ValueError(f"pdrop: ratio (lambda) must be in (0, 1], got {self.ratio!r}")
            if self.budget is not None:
                raise ValueError("pdrop: give either budget or ratio, not both")

    @classmethod
    def keep_all(cls, **params) -> PDropPruner:
        return cls(ratio=1.0, **params)

    def rank_layers(self, num_layers: int) -> tuple[int, ...]:
        layers = default_rank_layers(num_layers) if self.layers is None else self.layers
        if not layers or any(not isinstance(r, int) for r in layers) or list(layers) != sorted(set(layers)):
            raise ValueError(f"pdrop: layers must be increasing layer indices, got {layers}")
        if layers[0] < 1 or layers[-1] >= num_layers:
            raise ValueError(
                f"pdrop: rank layers must lie in [1, {num_layers - 1}] for {num_layers} layers, got {layers}"
            )
        return tuple(layers)

    def prune_layers(self, num_layers: int) -> tuple[int, ...]:
        return tuple(r - 1 for r in self.rank_layers(num_layers))

    def lam(self, num_layers: int, capacity: int):
        if self.ratio is not None:
            return float(self.ratio)
        if self.budget is None:
            return RELEASE_RATIO
        rank = self.rank_layers(num_layers)
        try:
            return solve_ratio(Fraction(self.budget, capacity), rank, num_layers)
        except ValueError:
            minimum = capacity * rank[0] // num_layers + 1
            raise ValueError(
                f"pdrop: budget {self.budget} (equivalent tokens of {capacity}) is unreachable with rank layers "
                f"{rank} of {num_layers}: the first {rank[0]} layers see every token; the minimum budget is "
                f"{minimum} (or give earlier layers)"
            ) from None

    def counts(self, n: int, num_layers: int, capacity: int) -> tuple[int, ...]:
        """Kept image tokens after each drop for an image of n tokens."""
        return stage_counts(n, self.lam(num_layers, capacity), len(self.rank_layers(num_layers)))

    def layer_schedule(self, n: int, config) -> list[int]:
        layers = config.text_config.num_hidden_layers
        rank = self.rank_layers(layers)
        counts = self.counts(n, layers, self.capacity(config))
        return [n if i < rank[0] else counts[sum(r <= i for r in rank) - 1] for i in range(layers)]

    def llm_hooks(self, model, adapter):
        self._capacity = self.capacity(adapter.config)
        return super().llm_hooks(model, adapter)

    def check_config(self, config) -> None:
        super().check_config(config)
        self.lam(config.text_config.num_hidden_layers, self.capacity(config))

    def cut(self, step: int, view: LayerView) -> list[Cut]:
        stage = view.stage
        rows, batch = stage.rows, view.hidden.shape[0]
        if step == 0:
            self._original = [span.length for span in stage.spans]
        last = torch.full((batch, 1), rows - 1, dtype=torch.long, device=view.hidden.device)
        probs = view.next_attention(last)[:, 0]  # [B, rows]: the last prompt token in the next layer
        cuts, scores, kept = [], [], []
        for b, span in enumerate(stage.spans):
            score = probs[b, span.start : span.start + span.length]
            k = min(self.counts(self._original[b], view.num_layers, self._capacity)[step], span.length)
            keep = top_in_order(score, k)
            scores.append(score.cpu())
            kept.append(keep.cpu())
            cuts.append(Cut() if k >= span.length else keep_vision(span, rows, keep))
        self.last_trace.append(LayerTrace(layer=view.index + 1, keep=kept, scores=scores))
        return cuts
