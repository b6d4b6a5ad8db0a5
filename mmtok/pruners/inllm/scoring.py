"""Attention and keys recomputed for a few query rows in one decoder layer, from its input (the in-LLM scores).

The model stays on its own fast attention path (SDPA): only the rows a method needs (the last
prompt token, the text raters) are recomputed, never the whole layer in eager mode.
"""

from __future__ import annotations

import torch
from torch import nn


def _rotate_half(x: torch.Tensor) -> torch.Tensor:
    half = x.shape[-1] // 2
    return torch.cat((-x[..., half:], x[..., :half]), dim=-1)


def _gather_rows(x: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """x [B, S, ...], rows [B, r] -> [B, r, ...]."""
    index = rows.view(*rows.shape, *([1] * (x.dim() - 2))).expand(*rows.shape, *x.shape[2:])
    return torch.gather(x, 1, index)


def attention_rows(
    layer: nn.Module,
    hidden: torch.Tensor,
    rows: torch.Tensor,
    position_embeddings: tuple[torch.Tensor, torch.Tensor],
    mask: torch.Tensor | None,
) -> torch.Tensor:
    """Head-averaged attention probabilities [B, r, S] of query `rows` [B, r] in decoder `layer`.

    Recomputed from the layer input `hidden` [B, S, D] as the layer itself does (input_layernorm,
    q_proj on the needed rows only, k_proj on every row, rotary with the layer's cos/sin, grouped
    key heads repeated) and masked by the layer's own mask restricted to those rows (`None` means
    plain causal over a prompt that starts at position 0). Scores and softmax are in float32.
    """
    attn = layer.self_attn
    batch, seq, _ = hidden.shape
    head_dim = attn.head_dim
    x = layer.input_layernorm(hidden)
    q = attn.q_proj(_gather_rows(x, rows)).view(batch, rows.shape[1], -1, head_dim).transpose(1, 2)
    k = attn.k_proj(x).view(batch, seq, -1, head_dim).transpose(1, 2)
    cos, sin = (t.expand(batch, -1, -1) for t in position_embeddings)
    q_cos, q_sin = _gather_rows(cos, rows).unsqueeze(1), _gather_rows(sin, rows).unsqueeze(1)
    q = q * q_cos + _rotate_half(q) * q_sin
    k = k * cos.unsqueeze(1) + _rotate_half(k) * sin.unsqueeze(1)
    k = k.repeat_interleave(q.shape[1] // k.shape[1], dim=1)  # GQA: key heads shared by groups
    logits = (q.float() @ k.float().transpose(-1, -2)) * attn.scaling  # [B, H, r, S]
    if mask is None:
        allowed = torch.arange(seq, device=hidden.device)[None, None, :] <= rows[..., None]
        logits = logits.masked_fill(~allowed[:, None], float("-inf"))
    else:
        row_mask = _gather_rows(mask[:, 0].expand(batch, -1, -1), rows)[:, None]  # [B, 1, r, S]
        if row_mask.dtype == torch.bool:
            logits = logits.masked_fill(~row_mask, float("-inf"))
        else:  # additive float mask (eager attention)
            logits = logits + row_mask.float()
    return torch.softmax(logits, dim=-1).mean(dim=1)


def rotary_keys(layer: nn.Module, hidden: torch.Tensor, position_embeddings) -> torch.Tensor:
    """The keys [B, S, kv_heads * head_dim] decoder `layer` computes from its input `hidden`
    (input_layernorm, k_proj, rotary with the layer's cos/sin), heads concatenated per token."""
    attn = layer.self_attn
    batch, seq, _ = hidden.shape
    k = attn.k_proj(layer.input_layernorm(hidden)).view(batch, seq, -1, attn.head_dim).transpose(1, 2)
    cos, sin = (t.expand(batch, -1, -1).unsqueeze(1) for t in position_embeddings)
    k = k * cos + _rotate_half(k) * sin
    return k.transpose(1, 2).reshape(batch, seq, -1)
