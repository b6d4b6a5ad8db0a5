"""`dart` (DART, arXiv 2502.11494): keep pivot tokens and the tokens least duplicated by them.

At the output of layer K-1 (default K = 2, the release's `pruned_layer`), DART ranks tokens by the
L1 norm of their layer K-1 keys (4 image + 4 text pivots), lets every pivot claim the
`budget // 8` image tokens least cosine-similar to it (on the layer output through the final norm),
and keeps the image pivots plus the claimed tokens (`mmtok.selection.dart.dart_select`); layers >= K
see only those, with their ORIGINAL position ids (the release passes the kept indices as
positions), like FastV.

Budget: the release's `max_num_trunction`, the kept-token label of its tables (64/128/192 on
a 576-token crop; on a tiling family its multi-crop retain count, capped at n - 4): the LLM's layers
>= K receive 4 + 8 * (budget // 8) image tokens (132 for 128), as the release keeps them.
`budget=None` keeps everything.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

from mmtok.pruners import (
    Cut,
    InLLMPruner,
    LayerTrace,
    LayerView,
    keep_vision,
    one_cut_schedule,
    register,
    rotary_keys,
)
from mmtok.selection.dart import dart_kept_count, dart_select


@register
@dataclass
class DARTPruner(InLLMPruner):
    layer: int = 2  # K: layers >= K see the kept tokens; pivots and similarities come from layer K-1
    pivot_image: int = 4
    pivot_text: int = 4

    name: ClassVar[str] = "dart"
    renumber_positions: ClassVar[bool] = False

    def __post_init__(self) -> None:
        super().__post_init__()
        if not isinstance(self.layer, int) or self.layer < 1:
            raise ValueError(f"dart: layer K must be an integer >= 1 (pivots come from layer K-1), got {self.layer!r}")
        for field_name in ("pivot_image", "pivot_text"):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"dart: {field_name} must be an integer >= 0, got {value!r}")
        if self.pivot_image + self.pivot_text < 1:
            raise ValueError("dart: needs at least one pivot (pivot_image + pivot_text >= 1)")

    def prune_layers(self, num_layers: int) -> tuple[int, ...]:
        if self.layer >= num_layers:
            raise ValueError(f"dart: layer K={self.layer} must be below the LLM's {num_layers} layers")
        return (self.layer - 1,)

    def kept(self, n: int) -> int:
        if self.budget is None:
            return n
        return dart_kept_count(self.budget, n, self.pivot_image, self.pivot_text)

    def layer_schedule(self, n: int, config) -> list[int]:
        return one_cut_schedule(n, self.kept(n), self.layer, config)

    def cut(self, step: int, view: LayerView) -> list[Cut]:
        stage = view.stage
        rows = stage.rows
        if self.budget is None:
            return [Cut() for _ in stage.spans]
        keys = rotary_keys(view.layer, view.hidden, view.kwargs["position_embeddings"])
        states = view.final_norm(view.out)
        cuts, kept = [], []
        for b, span in enumerate(stage.spans):
            pad = int((~stage.valid[b]).sum())  # left padding: the release sees the unpadded prompt
            keep = dart_select(
                keys[b, pad:], states[b, pad:], span.start - pad, span.length, self.budget,
                self.pivot_image, self.pivot_text,
            )  # fmt: skip
            kept.append(keep.cpu())
            cuts.append(Cut() if keep.numel() >= span.length else keep_vision(span, rows, keep.to(view.out.device)))
        self.last_trace.append(LayerTrace(layer=view.index, keep=kept))
        return cuts
