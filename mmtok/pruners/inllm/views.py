"""What an in-LLM method sees at a prune layer (`Stage`, `LayerView`) and what it answers (`Cut`, `keep_vision`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from mmtok.models.adapters import ImageSpan
from mmtok.pruners.inllm.scoring import attention_rows


@dataclass
class Cut:
    """One sample's decision at a prune layer, in that layer's row coordinates.

    `keep=None` keeps every row. `extra` [m, D] are new tokens (e.g. recycled clusters) placed
    right after the kept vision tokens; they count as vision tokens from then on.
    """

    keep: torch.Tensor | None = None
    extra: torch.Tensor | None = None


def keep_vision(span: ImageSpan, rows: int, keep: torch.Tensor, extra: torch.Tensor | None = None) -> Cut:
    """The `Cut` that keeps every row outside the vision `span` of a `rows`-row stage, the vision
    tokens `keep` (ascending indices into the span) and, right after them, the new tokens `extra`."""
    device = keep.device
    end = span.start + span.length
    kept = [torch.arange(span.start, device=device), span.start + keep, torch.arange(end, rows, device=device)]
    return Cut(keep=torch.cat(kept), extra=extra)


@dataclass
class Stage:
    """The prompt rows that the layers of one stage see (see the module docstring)."""

    valid: torch.Tensor  # [B, P] bool
    origin: torch.Tensor  # [B, P] long, row in the original prompt or -1
    pos: torch.Tensor  # [B, P] long, position ids
    spans: list[ImageSpan]
    shift: torch.Tensor  # [B] decode positions: incoming position id - shift
    changed: bool  # False while it equals stage 0 (then the layers' inputs are left untouched)
    mrope: torch.Tensor | None = None  # [3, B, P] M-RoPE rows (M-RoPE families); then `pos` is unused
    # Read once when the stage is built (prefill), so decode steps never wait on the device
    all_valid: bool = False
    any_shift: bool = False

    @property
    def rows(self) -> int:
        return self.valid.shape[1]


@dataclass
class LayerView:
    """What a method sees at a prune layer during prefill."""

    index: int  # decoder layer index
    layer: nn.Module
    hidden: torch.Tensor  # the layer's input [B, P, D]
    out: torch.Tensor  # the layer's output [B, P, D]
    kwargs: dict
    stage: Stage
    embeds: torch.Tensor  # layer-0 input (the prompt embeddings) [B, L, D]
    num_layers: int
    next_layer: nn.Module | None = None  # the decoder layer that receives `out` (None after the last)
    final_norm: nn.Module | None = None  # the LLM's last RMSNorm (DART compares normalised states)

    def attention(self, rows: torch.Tensor) -> torch.Tensor:
        """Head-averaged attention [B, r, P] of `rows` [B, r], recomputed in this layer."""
        return attention_rows(
            self.layer, self.hidden, rows, self.kwargs["position_embeddings"], self.kwargs.get("attention_mask")
        )

    def next_input(self) -> torch.Tensor:
        """This layer's output [B, P, D] as the next layer's attention reads it (its input norm applied)."""
        if self.next_layer is None:
            raise ValueError(f"layer {self.index} is the last decoder layer: there is no next layer")
        return self.next_layer.input_layernorm(self.out)

    def next_attention(self, rows: torch.Tensor) -> torch.Tensor:
        """Head-averaged attention [B, r, P] of `rows` [B, r] in the NEXT layer, from this layer's
        output (the rows, positions and mask are the same until the cut is applied)."""
        if self.next_layer is None:
            raise ValueError(f"layer {self.index} is the last decoder layer: there is no next layer to score with")
        return attention_rows(
            self.next_layer, self.out, rows, self.kwargs["position_embeddings"], self.kwargs.get("attention_mask")
        )
