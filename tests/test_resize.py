"""The resize baseline (the paper's Table 7): `pruner.image_scale` downscales every image on both
sides (the release's `(int(W // d), int(H // d))`, LANCZOS) before the family's rule and the
processor, unpruned (`resize_0.5`) or followed by a pruner (`mmtok_resize_0.25@r0.55`); token
counts follow the resized image; scale 1 is today's run, bit for bit."""

from __future__ import annotations

import numpy as np
import pytest
from omegaconf import OmegaConf
from PIL import Image

from mmtok.eval.prompts import preprocess_image, scale_image
from mmtok.run.compose import compose
from mmtok.run.execute import load, run
from mmtok.run.identity import config_hash, identity, new_run_id
from mmtok.run.pruner import build_pruner_from
from mmtok.run.schema import ConfigError
from mmtok.run.validate import validate


def _image(w: int, h: int) -> Image.Image:
    return Image.fromarray((np.random.RandomState(w * h).rand(h, w, 3) * 255).astype("uint8"))


@pytest.mark.parametrize(
    ("size", "scale", "want"),
    [
        ((90, 60), 0.5, (45, 30)),
        ((90, 60), 0.25, (22, 15)),
        ((90, 60), 0.125, (11, 7)),
        ((101, 37), 0.5, (50, 18)),
        ((5, 3), 0.125, (1, 1)),
    ],  # fmt: skip
)
def test_scale_image_is_the_releases_resize(size, scale, want):
    image = _image(*size)
    out = scale_image(image, scale)
    assert out.size == want
    assert np.array_equal(np.asarray(out), np.asarray(image.resize(want, Image.LANCZOS)))


def test_scale_1_is_the_image_itself_and_bad_scales_are_refused():
    image = _image(90, 60)
    assert scale_image(image, 1.0) is image and scale_image(image, 1) is image
    for bad in (0, -0.5, 1.5, True):
        with pytest.raises(ValueError, match=r"^image_scale must be a number in \(0, 1\], got "):
            scale_image(image, bad)


@pytest.mark.parametrize("bad", ["0", "1.5", "-0.25"])
def test_image_scale_out_of_range_is_a_one_line_config_error(bad):
    with pytest.raises(ConfigError) as info:
        validate(compose(["model=tiny_llava", f"pruner.image_scale={bad}"]))
    message = str(info.value)
    assert message.startswith("pruner.image_scale must be a number in (0, 1]") and message.endswith(f"got {float(bad)}")
    assert "\n" not in message


def test_resize_files_and_their_identity():
    for scale in ("0.5", "0.25", "0.125"):
        cfg = compose(["model=tiny_llava", f"pruner=resize_{scale}"])
        assert (cfg.pruner.name, cfg.pruner.image_scale, cfg.budget, dict(cfg.pruner.params)) == (
            "none", float(scale), None, {}
        )  # fmt: skip
    cfg = compose(["model=tiny_qwen25vl", "pruner=mmtok_resize_0.25", "budget=null", "pruner.retain_ratio=0.55"])
    mmtok = compose(["model=tiny_qwen25vl", "pruner=mmtok", "budget=null", "pruner.retain_ratio=0.55"])
    assert cfg.pruner.image_scale == 0.25 and dict(cfg.pruner.params) == dict(mmtok.pruner.params)

    def key(c):
        ident = identity(OmegaConf.to_container(c, resolve=True), build_pruner_from(c))
        return ident, config_hash(ident)

    (plain_ident, plain), (resized_ident, resized) = key(mmtok), key(cfg)
    assert "image_scale" not in plain_ident["pruner"] and resized_ident["pruner"]["image_scale"] == 0.25
    assert {k: v for k, v in resized_ident["pruner"].items() if k != "image_scale"} == plain_ident["pruner"]
    assert resized != plain
    assert "_tiny_qwen25vl_mmtok-r0.55-s0.25_scenes_pope_" in new_run_id(cfg, resized)
    none = compose(["model=tiny_qwen25vl", "pruner=none"])
    assert key(compose(["model=tiny_qwen25vl", "pruner=none", "pruner.image_scale=1"]))[1] == key(none)[1]
    assert "_none-all-s0.5_" in new_run_id(compose(["model=tiny_qwen25vl", "pruner=resize_0.5"]), "0" * 16)


def _docs(mmtok_cache):
    import datasets

    (path,) = (mmtok_cache / "testbed").glob("pope-n24/*.parquet")
    return datasets.Dataset.from_parquet(str(path))


def _spy_processor(monkeypatch, cfg) -> list[tuple[int, int]]:
    """Every image size the loaded processor is called with (the processor is the one `run` reuses)."""
    _, processor, _ = load(cfg)
    seen: list[tuple[int, int]] = []
    original = type(processor).__call__

    def spy(self, *args, images=None, **kwargs):
        seen.extend(im.size for im in images or [])
        return original(self, *args, images=images, **kwargs)

    monkeypatch.setattr(type(processor), "__call__", spy)
    return seen


def test_the_processor_sees_the_resized_image(mmtok_cache, tmp_path, monkeypatch):
    """LLaVA (no size rule of its own in crop mode): the processor gets exactly (W // 2, H // 2)."""
    common = [f"cache_dir={mmtok_cache}", "model=tiny_llava", "benchmark=pope_local", "limit=4", "progress=false",
              "wandb.mode=disabled", f"results_dir={tmp_path}"]  # fmt: skip
    seen = _spy_processor(monkeypatch, compose(common))
    out = run(compose([*common, "pruner=resize_0.5"]))
    docs = _docs(mmtok_cache)
    sizes = [docs[s.doc_id]["image"].size for s in out.samples]
    assert sorted(seen) == sorted((w // 2, h // 2) for w, h in sizes)  # requests run longest prompt first
    assert out.row.image_scale == 0.5 and out.row.pruner == "none"


def test_token_counts_follow_the_resized_image_on_qwen(mmtok_cache, tmp_path, monkeypatch):
    """Tiny Qwen2.5-VL sizes images by pixels: the resized image's own token count (the processor's
    grid after the family's size rule), and MMTok's ratio applies to that count."""
    common = [f"cache_dir={mmtok_cache}", "model=tiny_qwen25vl", "benchmark=pope_local", "limit=4", "progress=false",
              "wandb.mode=disabled", f"results_dir={tmp_path}"]  # fmt: skip
    cfg = compose(common)
    seen = _spy_processor(monkeypatch, cfg)
    _, processor, _ = load(cfg)
    docs = _docs(mmtok_cache)

    def tokens(image) -> int:
        image = preprocess_image(image, processor, "crop", "qwen2_5_vl")
        grid = processor.image_processor(images=[image], return_tensors="pt")["image_grid_thw"][0]
        return int(grid.prod()) // processor.image_processor.merge_size**2

    full = {}
    for cell, scale, ratio in (("none", 1.0, 1.0), ("resize_0.5", 0.5, 1.0), ("mmtok_resize_0.25@r0.55", 0.25, 0.55)):
        from mmtok.run.cells import cell_config

        seen.clear()
        out = run(cell_config(compose([*common, f"cells=[{cell}]"]), cell))
        images = [scale_image(docs[s.doc_id]["image"], scale) for s in out.samples]
        want = [tokens(im) for im in images]
        assert sorted(seen) == sorted(preprocess_image(im, processor, "crop", "qwen2_5_vl").size for im in images)
        assert [s.vision_tokens_full for s in out.samples] == want, cell
        assert [s.vision_tokens for s in out.samples] == [int(ratio * n) for n in want], cell
        full[scale] = want
    assert all(a > b for a, b in zip(full[1.0], full[0.5]))  # these images are above the pixel floor at 1/2
