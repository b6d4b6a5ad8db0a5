"""Qwen2.5-VL at a fixed resolution (the paper's Table 20, second unpruned row): min_pixels = max_pixels,
as `model=qwen25vl_7b_fixed` (2048*28*28) and its tiny stand-in `model=tiny_qwen25vl_fixed` (36*16*16)."""

from __future__ import annotations

import numpy as np
from omegaconf import OmegaConf
from PIL import Image

from mmtok.run.compose import compose
from mmtok.run.identity import config_hash, identity
from mmtok.run.pruner import build_pruner_from
from mmtok.run.validate import validate


def _key(overrides) -> str:
    cfg = compose(overrides)
    return config_hash(identity(OmegaConf.to_container(cfg, resolve=True), build_pruner_from(cfg)))


def test_the_fixed_configs_differ_from_the_dynamic_ones_in_sizing_and_name_only():
    for fixed, dynamic, pixels in (
        ("qwen25vl_7b_fixed", "qwen25vl_7b", 2048 * 28 * 28),
        ("tiny_qwen25vl_fixed", "tiny_qwen25vl", 36 * 16 * 16),
    ):
        a = OmegaConf.to_container(compose([f"model={fixed}"]).model)
        b = OmegaConf.to_container(compose([f"model={dynamic}"]).model)
        assert (a.pop("name"), a.pop("min_pixels"), a.pop("max_pixels")) == (fixed, pixels, pixels)
        assert (b.pop("name"), b.pop("max_pixels") >= pixels) == (dynamic, True)
        b.pop("min_pixels")
        assert a == b
        validate(compose([f"model={fixed}"]), check_model=False)
        assert _key([f"model={fixed}", "pruner=none"]) != _key([f"model={dynamic}", "pruner=none"])


def test_tiny_fixed_resolution_sizes_every_image_to_about_36_tokens(mmtok_cache):
    """min = max = 9216 px: 333x500 shrinks to 64x112 px (floor after scaling by sqrt(166500 / 9216)),
    20x30 grows to 80x128 px (ceil): 4x7 = 28 and 5x8 = 40 merged 16-px tokens."""
    from mmtok.models.loading import ensure_tiny, load_model

    m = compose(["model=tiny_qwen25vl_fixed"]).model
    path = ensure_tiny(mmtok_cache / "tiny" / "qwen2_5_vl", "qwen2_5_vl")
    _, processor, _ = load_model(str(path), dtype="float32", min_pixels=m.min_pixels, max_pixels=m.max_pixels)
    got = []
    for h, w in ((333, 500), (20, 30)):
        image = Image.fromarray((np.random.RandomState(0).rand(h, w, 3) * 255).astype("uint8"))
        grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0].tolist()
        got.append(grid)
    assert got == [[1, 8, 14], [1, 10, 16]]  # patches of 8 px; 2x2 patches = one LLM token
