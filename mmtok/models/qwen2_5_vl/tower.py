"""Qwen2.5-VL's substitute for CLS attention: the attention each token receives in the last ViT block.

Its ViT has no CLS token, so VisionZip's ranking by the CLS row has no direct counterpart. The
VisionZip authors' Qwen2.5-VL port (their lmms-eval model `qwen2_5_vl_visionzip`, "Modified from
Transformers 4.49.0, Copyright 2025 Senqiao Yang"; docs/families.md says where it was found) ranks
tokens instead by the attention they RECEIVE in the tower's last block:

    attn_mean = softmax(q k^T / sqrt(d)).mean(heads).sum(queries)  # [patches], window order
    attn_mean = attn_mean.view(-1, 4).mean(-1)[reverse_window]     # per merged token, raster order
    attn_key  = k.view(H, -1, 4, d).mean(2)[:, reverse_window].mean(heads)

with q and k the last block's queries and keys after the vision rotary embedding. This module
recomputes exactly that from the block's input (one forward pre-hook during the tower's normal
pass), so the tower itself stays on its own attention path. Differences, all ours:
- float32 throughout (the release's flash path works in the model's dtype);
- attention within the block's own segments (`cu_seqlens`: one image each for a full-attention
  last block, as in every released checkpoint) - the release's eager path; its flash path spans the
  whole batch, which equals this for its batch of one image;
- the queries are summed in chunks (exact up to float summation order), so memory stays bounded
  on large images instead of holding heads x patches x patches.
"""

from __future__ import annotations

import torch
from torch import nn

# elements of one chunk of attention probabilities (heads x queries x keys), float32: 64 MiB
CHUNK_ELEMENTS = 1 << 24


def received_attention(
    attn: nn.Module, x: torch.Tensor, cu_seqlens: torch.Tensor, position_embeddings: tuple[torch.Tensor, torch.Tensor]
) -> tuple[torch.Tensor, torch.Tensor]:
    """(received attention `[T]`, keys `[T, H, head_dim]`) of a Qwen2.5-VL vision attention module for
    its input `x` `[T, D]` (window order): per key row, the attention probability it receives from
    every query of its segment, summed over queries and averaged over heads; the keys after the
    rotary embedding. Both float32."""
    from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import apply_rotary_pos_emb_vision

    t = x.shape[0]
    q, k, _ = attn.qkv(x).reshape(t, 3, attn.num_heads, -1).permute(1, 0, 2, 3).unbind(0)
    cos, sin = position_embeddings
    q, k = apply_rotary_pos_emb_vision(q.float(), k.float(), cos, sin)
    received = torch.zeros(t, dtype=torch.float32, device=x.device)
    bounds = cu_seqlens.tolist()
    for start, end in zip(bounds[:-1], bounds[1:]):
        qs, ks = q[start:end].transpose(0, 1), k[start:end].transpose(0, 1)  # [H, L, d]
        heads, length = qs.shape[:2]
        rows = max(1, CHUNK_ELEMENTS // (heads * length))
        for r in range(0, length, rows):
            probs = torch.softmax((qs[:, r : r + rows] @ ks.mT) * attn.scaling, dim=-1)  # [H, rows, L]
            received[start:end] += probs.sum(dim=(0, 1))
    return received / attn.num_heads, k


def per_merged_token(values: torch.Tensor, unit: int, reverse: torch.Tensor) -> torch.Tensor:
    """Window-order per-patch `values` `[T, ...]` averaged over each merge unit of `unit` consecutive rows
    and put in raster order (`reverse` = argsort of the tower's window index), as the merger does."""
    merged = values.reshape(values.shape[0] // unit, unit, *values.shape[1:]).mean(dim=1)
    return merged[reverse.to(merged.device)]


class LastBlockCapture:
    """A forward pre-hook on the vision tower's last attention module that keeps its input, its segments
    and its rotary embedding for `received_attention` (`with LastBlockCapture(model) as grab: ...`)."""

    def __init__(self, model: nn.Module):
        self.attn = model.model.visual.blocks[-1].attn
        self.inputs: dict = {}

    def _grab(self, module, args, kwargs):
        self.inputs = {
            "x": args[0] if args else kwargs["hidden_states"],
            "cu_seqlens": kwargs["cu_seqlens"] if "cu_seqlens" in kwargs else args[1],
            "position_embeddings": kwargs["position_embeddings"],
        }

    def __enter__(self) -> LastBlockCapture:
        self.handle = self.attn.register_forward_pre_hook(self._grab, with_kwargs=True)
        return self

    def __exit__(self, *exc) -> None:
        self.handle.remove()

    def signals(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(received attention `[T]`, keys `[T, H, head_dim]`) of the captured pass, window order."""
        if not self.inputs:
            raise RuntimeError("the vision tower's last block did not run")
        return received_attention(self.attn, **self.inputs)
