"""VisionZip on LLaVA-NeXT: the release's tile arrangement (`restore_image_features_sorted`)."""

from __future__ import annotations

import pytest
import torch

from mmtok.pruners import build_pruner
from mmtok.selection.visionzip import release_next_order, visionzip_dominant_indices
from tests._tiny import QUESTIONS, inputs


def test_release_order_hand_case():
    # base + a 1 x 2 grid of 2 x 2 tiles; d = CLS + 2 patches, 1 contextual: 4 tokens per crop
    dominant = torch.tensor([[0, 2, 3], [0, 1, 4], [0, 2, 3]])
    # tile 1 keeps patches 0, 3 -> stitched (0,0), (1,1) = raster 0, 5 (slots 5, 6)
    # tile 2 keeps patches 1, 2 -> stitched (0,3), (1,2) = raster 3, 6 (slots 9, 10)
    order = release_next_order(dominant, (1, 2), 2, 1)
    assert order.tolist() == [0, 1, 2, 3, 5, 9, 6, 10, 4, 8, 7, 11]
    with pytest.raises(ValueError, match="do not fit"):
        release_next_order(dominant, (2, 2), 2, 1)


def _release_restore(tokens: torch.Tensor, keep: torch.Tensor, rows: int, cols: int, side: int) -> torch.Tensor:
    """A plain re-implementation of the release's arrangement: `tokens` [c, d + ctx, D] per crop,
    `keep` [c, d] their dominant indices (CLS first); crop 0 is the base image."""
    c, per, dim = tokens.shape
    d = keep.shape[1]
    grid = {}
    for t in range(1, c):
        r, q = divmod(t - 1, cols)
        for slot, idx in enumerate(sorted(keep[t].tolist())[1:], start=1):
            p = idx - 1
            grid[(r * side + p // side, q * side + p % side)] = tokens[t, slot]
    spatial = [grid[key] for key in sorted(grid)]
    cls = [tokens[t, 0] for t in range(1, c)]
    ctx = [tokens[t, j] for t in range(1, c) for j in range(d, per)]
    return torch.cat([tokens[0], torch.stack(spatial + cls + ctx)])


@pytest.mark.parametrize("seed", range(4))
def test_release_order_equals_the_release_rule_on_random_instances(seed):
    g = torch.Generator().manual_seed(seed)
    rows, cols = [(1, 2), (2, 2), (2, 1), (1, 3)][seed]
    side, d, ctx = 6, 9, 3
    c = 1 + rows * cols
    keep = torch.stack([visionzip_dominant_indices(torch.rand(2, side * side + 1, generator=g), d) for _ in range(c)])
    tokens = torch.randn(c, d + ctx, 5, generator=g)
    order = release_next_order(keep, (rows, cols), side, ctx)
    assert torch.equal(tokens.reshape(-1, 5)[order], _release_restore(tokens, keep, rows, cols, side))


def test_next_tiles_release_on_the_tiny_next_model(tiny_models):
    model, processor = tiny_models["llava_next"]
    batch = inputs(processor, QUESTIONS[:2])
    received = {}

    def grab(module, args, kwargs):
        received.setdefault("embeds", []).append(kwargs["inputs_embeds"])

    lm = model.model.language_model
    seqs = {}
    for tiles in ("crop", "release"):
        pruner = build_pruner("visionzip", budget=40, next_tiles=tiles)
        received.clear()
        handle = lm.register_forward_pre_hook(grab, with_kwargs=True)
        try:
            with pruner(model, tokenizer=processor.tokenizer), torch.no_grad():
                model.generate(**batch, max_new_tokens=1, do_sample=False)
        finally:
            handle.remove()
        seqs[tiles] = received["embeds"][0]
        counts = [s.vision_tokens for s in pruner.last_stats.samples]
        assert counts == [8 * s.crops for s in pruner.last_stats.samples]
    # the same tokens in another order: row multisets agree, sequences do not
    a, b = seqs["crop"], seqs["release"]
    assert a.shape == b.shape and not torch.equal(a, b)
    for row_a, row_b in zip(a, b):
        key = lambda t: tuple(t.tolist())  # noqa: E731
        assert sorted(map(key, row_a)) == sorted(map(key, row_b))
    with pytest.raises(ValueError, match="unknown visionzip next_tiles 'x'; valid: crop, release"):
        build_pruner("visionzip", budget=40, next_tiles="x")
