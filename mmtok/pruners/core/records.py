"""The typed records a pruner shares with its callers: what it may know about a request, and what it reports."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from mmtok.models.adapters import FamilyAdapter, ImageSource, ImageSpan


@dataclass
class SampleContext:
    """What a pruner may know about one request besides its image."""

    index: int  # position in the batch (never use it for randomness: batches must not matter)
    input_ids: torch.Tensor  # the sample's prompt ids without padding
    question: str | None
    tokenizer: Any
    embed_tokens: nn.Module  # the LLM's input embedding table
    seed: int
    adapter: FamilyAdapter  # the model family (for methods that work on the packed sequence)
    # the image before the family's preprocessing (size, image_preprocess mode), when the caller
    # passed it (`pruner(model, sources=[...])`; the evaluation always does), else None
    source: ImageSource | None = None


@dataclass
class Request:
    """One `generate` call as the in-LLM hooks see it."""

    spans: list[ImageSpan]
    attention_mask: torch.Tensor  # [B, L] of the (possibly shortened) prompt
    prompt_length: int
    contexts: list[SampleContext]
    position_ids: torch.Tensor | None = None  # [3, B, L] on M-RoPE families, else None


@dataclass
class SampleStats:
    """What one sample's image became (one per sample of the latest request)."""

    vision_tokens_full: int  # image tokens the unmodified model would feed
    vision_tokens: int  # image tokens the LLM received (in-LLM methods: what the last layers see)
    crops: int
    # rows of the full image sequence kept, where the family tracks them (original positions), else None
    kept_index: list[int] | None = None
    # in-LLM methods: the layer average of `layer_vision_tokens` (None before the LLM)
    equivalent_tokens: float | None = None
    # in-LLM methods: vision tokens in the input of every decoder layer (None before the LLM)
    layer_vision_tokens: list[int] | None = None


@dataclass
class PruneStats:
    """The latest request's pruning statistics (`pruner.last_stats`): timings and one record per sample."""

    vision_s: float = 0.0  # the vision tower, seconds
    select_s: float = 0.0  # the method's selection and the assembly of kept tokens, seconds
    samples: list[SampleStats] = field(default_factory=list)


@dataclass
class LayerTrace:
    """What an in-LLM method decided at one prune layer of the latest prefill (`pruner.last_trace`).

    Every list holds one entry per sample of the batch; fields a method does not compute are None."""

    layer: int  # the decoder layer whose attention ranked the tokens
    keep: list[torch.Tensor]  # kept vision tokens, ascending indices into the layer's image span
    scores: list[torch.Tensor] | None = None  # the score of every vision token of the span
    raters: list[torch.Tensor] | None = None  # SparseVLM: the rater rows (original prompt rows)
    recycled: list[int] | None = None  # SparseVLM: recycled tokens inserted after the kept ones
