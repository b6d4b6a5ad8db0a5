"""Signals captured inside the CLIP vision tower in the image's one pass: the CLS row's attention and the keys.

VisionZip and VisPruner rank patches by them at the CLIP layer the projector reads. Both are recomputed
from that layer's input for the CLS row only (one hook during the tower pass), so the tower stays
on its fast attention path.
"""

from __future__ import annotations

import torch

from mmtok.models.adapters import FamilyAdapter, ImageCrops


def cls_attention_and_keys(attn: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """CLIP self-attention signals for input `x` [C, T, D]: CLS-row probabilities per head
    [C, H, T] and keys averaged over heads [C, T, head_dim]."""
    c, t, _ = x.shape
    heads, hd = attn.num_heads, attn.head_dim
    q = attn.q_proj(x[:, :1]).view(c, 1, heads, hd).transpose(1, 2)  # [C, H, 1, hd]
    k = attn.k_proj(x).view(c, t, heads, hd).transpose(1, 2)  # [C, H, T, hd]
    probs = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * attn.scale, dim=-1)[:, :, 0]
    return probs, k.mean(dim=1)


def encode_with_cls_signals(adapter: FamilyAdapter, pixel_values, **image_inputs) -> list[ImageCrops]:
    """`adapter.encode`, with every image's `cls_attention` and `keys` set from the same tower pass."""
    attn = adapter.feature_layer_module().self_attn
    captured = {}

    def grab(module, args, kwargs):
        captured["x"] = kwargs["hidden_states"] if "hidden_states" in kwargs else args[0]

    handle = attn.register_forward_pre_hook(grab, with_kwargs=True)
    try:
        images = adapter.encode(pixel_values, **image_inputs)
    finally:
        handle.remove()
    probs, keys = cls_attention_and_keys(attn, captured["x"])
    start = 0
    for image in images:
        c = image.num_crops
        image.cls_attention, image.keys = probs[start : start + c], keys[start : start + c]
        start += c
    return images
