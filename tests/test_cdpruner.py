"""CDPruner: hand-computed DPP cases, equality with the release's rule on random tensors, the CLIP
text path against the release's segmenting, and the missing-CLIP errors."""

from __future__ import annotations

import copy

import pytest
import torch

from mmtok.pruners import build_pruner
from mmtok.selection.cdpruner import cdpruner_select, conditional_kernel, dpp_greedy, relevance_scores
from tests._tiny import QUESTIONS, inputs, tiny_clip_path

# -- hand-computed cases ---------------------------------------------------------------------------
X = torch.tensor([[[1.0, 0.0], [0.8, 0.6], [0.0, 1.0]]])  # cos(0,1) = .8, cos(0,2) = 0, cos(1,2) = .6


def test_relevance_decides_between_a_near_duplicate_and_a_distinct_token():
    # r = [1, .9, .5]: L = r_i r_j cos_ij -> diag [1, .81, .25], L01 = .72, L02 = 0.
    # pick 0 (largest diagonal); gains after it: 1: .81 - .72^2 = .2916, 2: .25 - 0 -> pick 1
    kernel = conditional_kernel(X, torch.tensor([[1.0, 0.9, 0.5]]))
    assert torch.allclose(kernel[0], torch.tensor([[1, 0.72, 0], [0.72, 0.81, 0.27], [0, 0.27, 0.25]]))
    assert dpp_greedy(kernel, 1).tolist() == [[0]]
    assert dpp_greedy(kernel, 2).tolist() == [[0, 1]]
    # r = [1, .5, .6]: gains after 0: 1: .25 - .4^2 = .09, 2: .36 -> pick 2 (diversity wins)
    kernel = conditional_kernel(X, torch.tensor([[1.0, 0.5, 0.6]]))
    assert dpp_greedy(kernel, 2).tolist() == [[0, 2]]


def test_used_up_rank_falls_back_to_the_diagonal():
    # 2-D features, tokens 2 and 3 duplicate 0 and 1; dyadic values, so every gain is exact.
    # r = [1, .75, .5, .625]: pick 0, then 1 (.5625 > .390625 > 0 = token 2's gain); after that
    # both gains are exactly 0: the rank is used up (the release would divide by sqrt(0)); the rest
    # follow the diagonal r^2: 3 (.390625) before 2 (.25)
    x = torch.tensor([[[1.0, 0.0], [0.0, 1.0], [1.0, 0.0], [0.0, 1.0]]])
    kernel = conditional_kernel(x, torch.tensor([[1.0, 0.75, 0.5, 0.625]]))
    assert dpp_greedy(kernel, 2).tolist() == [[0, 1]]
    assert dpp_greedy(kernel, 3).tolist() == [[0, 1, 3]]
    assert dpp_greedy(kernel, 4).tolist() == [[0, 1, 2, 3]]


def test_relevance_is_minus_the_mean_cosine_min_max_normalised_over_the_image():
    img = torch.tensor([[[2.0, 0.0], [0.0, 3.0]], [[-1.0, 0.0], [1.0, 1.0]]])  # two crops
    one = relevance_scores(img, torch.tensor([[5.0, 0.0]]))
    # -cos: [[-1, 0], [1, -.7071]]; min -1, max 1 over both crops: (r + 1 + 1e-6) / 2
    expect = (torch.tensor([[-1.0, 0.0], [1.0, -(0.5**0.5)]]) + 1 + 1e-6) / 2
    assert torch.allclose(one, expect)
    two = relevance_scores(img, torch.tensor([[1.0, 0.0], [0.0, 1.0]]))  # two segments: mean of both
    mean = -torch.tensor([[0.5, 0.5], [-0.5, 0.5**0.5]])
    assert torch.allclose(two, (mean - mean.min() + 1e-6) / (mean.max() - mean.min()))
    theta = relevance_scores(img, torch.tensor([[5.0, 0.0]]), theta=0.5)  # alpha = .5 / (2 * .5) = .5
    assert torch.allclose(theta, torch.exp(0.5 * expect))
    flat = relevance_scores(torch.ones(1, 3, 2), torch.tensor([[1.0, 0.0]]))
    assert flat.tolist() == [[1.0, 1.0, 1.0]]  # constant relevance (the release divides by zero)


# -- the release's rule, as written (batch = the crops of one image) --------------------------------
def _release(image_features, image_embeds, text_embeds, visual_token_num):
    """`encode_images` of the release after the projector, plus the gap between the two best
    gains at every step (so the test can refuse instances decided by rounding)."""
    B, N, C = image_features.shape
    image_normalized = image_features / image_features.norm(dim=-1, keepdim=True)
    image_normalized = image_normalized.float()
    similarity = torch.matmul(image_normalized, image_normalized.transpose(1, 2))
    image_embeds = image_embeds / image_embeds.norm(dim=-1, keepdim=True)
    text_embeds = text_embeds / text_embeds.norm(dim=-1, keepdim=True)
    relevance = torch.matmul(image_embeds, text_embeds.t())
    relevance = (-relevance).mean(dim=-1)
    relevance = (relevance - relevance.min() + 1e-6) / (relevance.max() - relevance.min())
    kernel = relevance.unsqueeze(2) * similarity * relevance.unsqueeze(1)
    cis = torch.zeros((visual_token_num, B, N))
    di2s = torch.diagonal(kernel, dim1=1, dim2=2).clone()
    select_idx = torch.empty((visual_token_num, B), dtype=torch.long)
    gaps = []
    for i in range(visual_token_num):
        top = torch.topk(di2s, 2, dim=-1).values
        gaps.append(((top[:, 0] - top[:, 1]) / top[:, 0]).min().item())
        assert (top[:, 0] > 0).all()
        j = torch.argmax(di2s, dim=-1)
        select_idx[i] = j
        eis = (
            kernel[torch.arange(B), j] - torch.einsum("tb,tbn->bn", cis[:i, torch.arange(B), j], cis[:i])
        ) / torch.sqrt(di2s[torch.arange(B), j]).unsqueeze(-1)
        cis[i, :, :] = eis
        di2s -= torch.square(eis)
        di2s[torch.arange(B), j] = -float("inf")
    return torch.sort(select_idx.t()).values, min(gaps)


CASES = [  # crops, tokens, LLM width, CLIP width, text segments, kept per crop, dtype of the tokens
    (1, 576, 4096, 768, 1, 64, torch.float32),
    (1, 576, 1024, 768, 2, 128, torch.float32),
    (1, 576, 1024, 768, 1, 192, torch.float16),
    (5, 576, 512, 768, 1, 32, torch.float16),
    (3, 576, 256, 64, 3, 96, torch.float32),
    (1, 36, 64, 16, 2, 8, torch.float32),
]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_select_equals_the_release_rule_on_random_tensors(case):
    c, n, dim, clip_dim, segments, k, dtype = CASES[case]
    g = torch.Generator().manual_seed(case)
    # correlated tokens (a shared component and a low-rank part), as real ones are, so similarity
    # matters; CLIP embeddings likewise
    feats = torch.randn(c, n, dim, generator=g) + torch.randn(c, n, 16, generator=g) @ torch.randn(16, dim, generator=g)
    feats = (feats + 2 * torch.randn(1, 1, dim, generator=g)).to(dtype)
    embeds = torch.randn(c, n, clip_dim, generator=g) + torch.randn(1, 1, clip_dim, generator=g)
    text = torch.randn(segments, clip_dim, generator=g)
    want, gap = _release(feats, embeds, text, k)
    assert gap > 1e-6, f"instance too close to a tie to decide ({gap})"
    got = cdpruner_select(feats, embeds, text, k)
    assert got.tolist() == want.tolist()
    assert all(len(set(row)) == k for row in got.tolist())


# -- the CLIP side, against the release's own classes and segmenting --------------------------------
def test_text_and_image_embeddings_follow_the_release():
    from transformers import AutoTokenizer, CLIPTextModelWithProjection, CLIPVisionModelWithProjection

    from mmtok.pruners.cdpruner import load_clip
    from mmtok.selection.text import strip_prompt

    path = tiny_clip_path()
    ours = load_clip(path, "cpu")
    tokenizer = AutoTokenizer.from_pretrained(path)
    text_tower = CLIPTextModelWithProjection.from_pretrained(path).eval()
    vision = CLIPVisionModelWithProjection.from_pretrained(path).eval()
    width = text_tower.config.max_position_embeddings
    for question in QUESTIONS:
        text = strip_prompt(question)
        assert "Answer" not in text  # the release strips the benchmark's answer-format suffix
        inputs_ = tokenizer(text=text, return_tensors="pt")
        segment = (inputs_.input_ids.shape[1] - 1) // width + 1
        padding = width * segment - inputs_.input_ids.shape[1]
        inputs_ = {
            k: torch.cat([v, v.new_zeros((v.shape[0], padding))], dim=1).reshape(-1, width)
            for k, v in inputs_.items()
            if k in ("input_ids", "attention_mask")
        }
        with torch.no_grad():
            want = text_tower(**inputs_).text_embeds
        got = ours.text_embeds(text)
        assert got.shape[0] == segment and torch.equal(got, want)
    assert max(ours.text_embeds(strip_prompt(q)).shape[0] for q in QUESTIONS) > 1  # segments exercised
    patches = torch.randn(2, 36, 32)
    with torch.no_grad():
        tower = vision.vision_model
        norm = (tower.vision_model if hasattr(tower, "vision_model") else tower).post_layernorm
        want = vision.visual_projection(norm(patches).float())
    assert torch.equal(ours.image_embeds(patches), want)
    # a float16 tower: the release's layer norm is the tower's (float16) module, the projection float32
    half = patches.half()
    with torch.no_grad():
        want = vision.visual_projection(copy.deepcopy(norm).half()(half).float())
    assert torch.equal(ours.image_embeds(half), want)


def test_pruner_uses_the_question_and_the_clip(tiny_models):
    """On the tiny LLaVA-1.5: the kept indices are `cdpruner_select` of the projected tokens, the
    CLIP embeddings of the patch features (CLS dropped) and the cleaned question; they depend on it."""
    from mmtok.models.adapters import adapter_for
    from mmtok.pruners import SampleContext
    from mmtok.pruners.cdpruner import load_clip
    from mmtok.selection.text import strip_prompt

    model, processor = tiny_models["llava"]
    adapter = adapter_for(model)
    pruner = build_pruner("cdpruner", budget=8, clip_path=tiny_clip_path())
    clip = load_clip(tiny_clip_path(), "cpu")
    picks = []
    for q in QUESTIONS:
        batch = inputs(processor, [q])
        with torch.no_grad():
            image = pruner.encode(adapter, batch["pixel_values"])[0]
            embed = model.get_input_embeddings()
            ctx = SampleContext(0, batch["input_ids"][0], q, processor.tokenizer, embed, 0, adapter)
            got = pruner.select(image, 8, ctx).indices[0]
            text = clip.text_embeds(strip_prompt(q))
            want = cdpruner_select(image.proj, clip.image_embeds(image.pre[:, 1:]), text, 8)
        assert got.tolist() == want[0].tolist()
        picks.append(tuple(got.tolist()))
    assert len(set(picks)) > 1  # the instruction changes the kept tokens of the same image


# -- settings and errors --------------------------------------------------------------------------
def test_settings():
    with pytest.raises(ValueError, match=r"theta must be in \[0, 1\) or null"):
        build_pruner("cdpruner", budget=8, theta=1.0)
    with pytest.raises(ValueError, match="clip_path must be a CLIP folder or hub id"):
        build_pruner("cdpruner", budget=8, clip_path="")
    with pytest.raises(ValueError, match="1 <= k <= 3"):
        dpp_greedy(torch.eye(3)[None], 4)


def test_missing_clip_is_a_one_line_error_before_any_generation(tiny_models, tmp_path, monkeypatch):
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))  # nothing cached
    model, processor = tiny_models["llava"]
    pruner = build_pruner("cdpruner", budget=8)  # the default hub id
    with pytest.raises(ValueError) as err:
        pruner.check_config(model.config)  # what the runner calls before the weights load
    msg = str(err.value)
    assert "\n" not in msg
    assert "'openai/clip-vit-large-patch14-336' is not in the local HF cache" in msg
    assert "hf download openai/clip-vit-large-patch14-336" in msg and "clip_path=<a local CLIP folder>" in msg
    calls = []
    with pruner(model, tokenizer=processor.tokenizer, questions=QUESTIONS[:1]):
        original = model.generate.generate
        model.generate.generate = lambda *a, **kw: calls.append(1) or original(*a, **kw)
        with pytest.raises(ValueError, match="is not in the local HF cache"):
            model.generate(**inputs(processor, QUESTIONS[:1]), max_new_tokens=2)
    assert calls == []  # failed while selecting, before generation
    with pytest.raises(ValueError, match=f"clip_path '{tmp_path}' has no config.json"):
        build_pruner("cdpruner", budget=8, clip_path=str(tmp_path)).check_config(model.config)
    with pytest.raises(ValueError, match="clip_path '/no/such/clip' does not exist"):
        build_pruner("cdpruner", budget=8, clip_path="/no/such/clip").check_config(model.config)
    with pytest.raises(ValueError, match="is not in the local HF cache"):  # a ratio prunes too
        build_pruner("cdpruner", retain_ratio=0.25).check_config(model.config)
    build_pruner("cdpruner", budget=None).check_config(model.config)  # keep-all needs no CLIP
    build_pruner("cdpruner", budget=8, clip_path=tiny_clip_path()).check_config(model.config)


def test_clip_of_another_width_is_refused_from_the_configs(tiny_models, tmp_path):
    from tests._tiny import build_tiny_clip

    model, _ = tiny_models["llava"]
    other = build_tiny_clip(tmp_path / "clip48", vision_width=48)
    with pytest.raises(ValueError, match="has vision width 48, the model's vision tower 32"):
        build_pruner("cdpruner", budget=8, clip_path=str(other)).check_config(model.config)


def _runner_config(mmtok_cache, tmp_path, *overrides):
    from mmtok.run.compose import compose

    common = [f"cache_dir={mmtok_cache}", "model=tiny_llava", "benchmark=pope_local", "progress=false", "limit=2"]
    return compose([*common, "max_new_tokens=2", f"results_dir={tmp_path}", "wandb.mode=disabled", *overrides])


def test_runner_fails_before_the_model_loads(mmtok_cache, tiny_llava_path, tmp_path, monkeypatch):
    from mmtok.run.execute import run
    from mmtok.run.schema import ConfigError

    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path / "empty-cache"))
    monkeypatch.setattr("mmtok.run.execute.load", lambda cfg: pytest.fail("the model loaded"))
    with pytest.raises(ConfigError, match="is not in the local HF cache"):
        run(_runner_config(mmtok_cache, tmp_path, "pruner=cdpruner", "budget=8"))
    assert not (tmp_path / "runs.csv").exists()


def test_runner_runs_it_with_a_local_clip(mmtok_cache, tiny_llava_path, tmp_path):
    from mmtok.run.execute import run

    clip = f"pruner.params.clip_path={tiny_clip_path()}"
    outcome = run(_runner_config(mmtok_cache, tmp_path, "pruner=cdpruner", "budget=8", clip))
    assert outcome.status == "completed"
    assert outcome.row.pruner == "cdpruner" and outcome.row.vision_tokens_mean == 8
