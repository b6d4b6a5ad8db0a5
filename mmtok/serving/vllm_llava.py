"""LLaVA-1.5 in vLLM with the image reduced to k tokens before the LLM (`MMTokLlavaForConditionalGeneration`).

vLLM's own LLaVA (vllm/model_executor/models/llava.py, vLLM 0.32) with two hooks changed:

- the front-end processor (`PrunedLlavaProcessor`) resolves each request's method, budget and
  question (request `mm_processor_kwargs` over the model's `hf_overrides`), checks them (one-line
  errors before the engine sees the request), and expands the prompt's `<image>` into k
  placeholders instead of n (`_get_prompt_updates`). The resolved keys stay in the processor
  kwargs, which vLLM hashes into the image's cache key: the encoder cache, the processor cache
  and prefix caching never reuse one question's (or budget's) selection for another. The method,
  k, Random's seed and MMTok's question token ids travel to the model as per-image tensors;
- the model's `embed_multimodal` runs the CLIP tower once, projects, and returns the k selected
  rows per image in ascending order (`mmtok.serving.methods.select_rows`, the HF path's
  selection code). Kept rows get contiguous positions, as in our HF path (1-D RoPE).

Everything else (weights, attention, KV cache, scheduling, sampling) is vLLM's.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping, Sequence

import torch
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.inputs import MultiModalFieldConfig
from vllm.multimodal.parse import ImageProcessorItems
from vllm.multimodal.processing import PromptReplacement

from mmtok.selection.text import question_token_ids
from mmtok.serving.methods import (
    CLS_METHODS,
    KEY_BUDGET,
    KEY_METHOD,
    KEY_QUESTION,
    METHOD_CODES,
    METHODS,
    ImageSignals,
    ModelParams,
    PruneRequest,
    kept_count,
    prompt_seed,
    resolve,
    select_rows,
)

ARCHITECTURE = "MMTokLlavaForConditionalGeneration"
# The per-image tensors the processor hands to the model.
SPEC_FIELD, TEXT_FIELD = "mmtok_spec", "mmtok_text_ids"  # [method code, k, seed]; question token ids
KEY_SEED = "mmtok_prompt_seed"  # Random's per-request seed, resolved in the front end from the prompt
_OWN_KEYS = (KEY_METHOD, KEY_BUDGET, KEY_QUESTION, KEY_SEED)


class PrunedLlavaProcessingInfo(LlavaProcessingInfo):
    def check_budget(self, req: PruneRequest) -> None:
        """One-line ValueError if the family cannot honour `req.budget` (LLaVA-1.5: any k >= 1)."""

    def get_num_kept_tokens(self, req: PruneRequest, *, image_width: int, image_height: int) -> int:
        """k: the placeholders vLLM reserves for one image of this request (the unpruned count is
        `get_num_image_tokens`, which stays the maximum vLLM profiles and budgets its caches for)."""
        n = self.get_num_image_tokens(image_width=image_width, image_height=image_height)
        return kept_count(req, n)


class PruningProcessorMixin:
    """The front end of a pruned family (put before vLLM's processor class): resolves and checks
    each request, keeps the resolved keys in the (hashed) processor kwargs, hands the method, k,
    seed and question ids to the model as per-image tensors, and reserves the kept count of
    placeholders (`info.get_num_kept_tokens`)."""

    def _request(self, kwargs: Mapping[str, object]) -> PruneRequest:
        req = resolve(self.info.get_hf_config(), {k: v for k, v in kwargs.items() if k in _OWN_KEYS})
        self.info.check_budget(req)
        return req

    def get_dummy_inputs(self, seq_len, mm_counts, mm_options):
        # Profiling: the unpruned image is the largest any request can send.
        inputs = super().get_dummy_inputs(seq_len, mm_counts, mm_options)
        return dataclasses.replace(inputs, hf_processor_mm_kwargs={KEY_METHOD: "none"})

    def apply(self, inputs, timing_ctx):
        """Resolve and check the pruning first, and keep only the keys the selection depends on,
        so that they (and nothing else) enter the image's cache key."""
        kwargs = {k: v for k, v in inputs.hf_processor_mm_kwargs.items() if k not in _OWN_KEYS}
        req = self._request(inputs.hf_processor_mm_kwargs)
        if req.method != "none":
            kwargs.update({KEY_METHOD: req.method, KEY_BUDGET: req.budget})
            if req.question is not None:
                kwargs[KEY_QUESTION] = req.question
            if req.method == "random":
                run_seed = ModelParams.from_config(self.info.get_hf_config()).seed
                kwargs[KEY_SEED] = prompt_seed(run_seed, self._hf_ids(inputs))
        else:  # explicit, so that the model's default (hf_overrides) cannot apply later
            kwargs[KEY_METHOD] = "none"
        return super().apply(dataclasses.replace(inputs, hf_processor_mm_kwargs=kwargs), timing_ctx)

    def _hf_ids(self, inputs) -> list[int]:
        """The prompt ids as the HF processor gives them to the HF model (each `<image>` expanded to
        its image's full token count): what the HF path seeds Random from."""
        config = self.info.get_hf_config()
        images = inputs.mm_data_items.get_items("image", ImageProcessorItems)
        out: list[int] = []
        i = 0
        for tok in inputs.prompt:
            if tok == config.image_token_index:
                size = images.get_image_size(i)
                out.extend([tok] * self.info.get_num_image_tokens(image_width=size.width, image_height=size.height))
                i += 1
            else:
                out.append(tok)
        return out

    def _call_hf_processor(self, hf_data, hf_kwargs):
        own = {k: hf_kwargs[k] for k in _OWN_KEYS if k in hf_kwargs}
        out = super()._call_hf_processor(hf_data, {k: v for k, v in hf_kwargs.items() if k not in _OWN_KEYS})
        req = self._request(own)
        images = len(out["pixel_values"]) if "pixel_values" in out else 0
        ids: list[int] = []
        if req.question is not None:
            ids = question_token_ids(req.question, self.info.get_tokenizer())
        spec = [METHOD_CODES[req.method], -1 if req.budget is None else req.budget, int(own.get(KEY_SEED, 0))]
        out[SPEC_FIELD] = torch.tensor([spec] * images, dtype=torch.long)
        out[TEXT_FIELD] = [torch.tensor(ids, dtype=torch.long) for _ in range(images)]
        return out

    def _get_mm_fields_config(self, hf_inputs, hf_processor_mm_kwargs):
        fields = dict(super()._get_mm_fields_config(hf_inputs, hf_processor_mm_kwargs))
        fields[SPEC_FIELD] = MultiModalFieldConfig.batched("image", keep_on_cpu=True)
        fields[TEXT_FIELD] = MultiModalFieldConfig.batched("image", keep_on_cpu=True)
        return fields

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs, out_mm_kwargs) -> Sequence[PromptReplacement]:
        req = self._request(hf_processor_mm_kwargs)
        if req.method == "none":
            return super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        image_token_id = self.info.get_hf_config().image_token_index

        def replacement(item_idx: int) -> list[int]:
            images = mm_items.get_items("image", ImageProcessorItems)
            size = images.get_image_size(item_idx)
            k = self.info.get_num_kept_tokens(req, image_width=size.width, image_height=size.height)
            return [image_token_id] * k

        return [PromptReplacement(modality="image", target=[image_token_id], replacement=replacement)]


class PrunedLlavaProcessor(PruningProcessorMixin, LlavaMultiModalProcessor):
    pass


def cls_signals(layer: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The CLS row's attention probabilities per head [B, H, T] and the keys averaged over heads
    [B, T, head_dim] of vLLM's CLIP `layer` for its normalised input `x` [B, T, D]: what the HF
    path's `cls_attention_and_keys` computes from q_proj / k_proj (vLLM fuses them into qkv_proj)."""
    attn = layer.self_attn
    b, t, _ = x.shape
    heads, hd = attn.num_heads_per_partition, attn.head_dim
    qkv, _ = attn.qkv_proj(x)
    q, k, _ = qkv.chunk(3, dim=-1)
    q = q[:, :1].reshape(b, 1, heads, hd).transpose(1, 2)
    k = k.reshape(b, t, heads, hd).transpose(1, 2)
    probs = torch.softmax((q.float() @ k.float().transpose(-1, -2)) * attn.scale, dim=-1)[:, :, 0]
    return probs, k.mean(dim=1)


def tower_features(vision_tower, pixel_values: torch.Tensor, with_cls: bool):
    """(features with CLS [B, n+1, Dv], CLS attention [B, H, n+1], keys [B, n+1, hd]) of vLLM's
    CLIP tower at the layer LLaVA reads (vLLM builds the tower only up to it, so its last layer
    produces it); the signals only when `with_cls`. The same operations as the tower's forward."""
    vm = vision_tower.vision_model
    h = vm.pre_layrnorm(vm.embeddings(pixel_values.to(vm.dtype)))
    layers = vm.encoder.layers
    for layer in layers[:-1]:
        h = layer(h)
    probs = keys = None
    if with_cls:
        probs, keys = cls_signals(layers[-1], layers[-1].layer_norm1(h))
    h = layers[-1](h)
    if vm.post_layernorm is not None:
        h = vm.post_layernorm(h)
    return h, probs, keys


@MULTIMODAL_REGISTRY.register_processor(
    PrunedLlavaProcessor, info=PrunedLlavaProcessingInfo, dummy_inputs=LlavaDummyInputsBuilder
)
class MMTokLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """vLLM's LLaVA-1.5 whose image embeddings are the k rows the request's method keeps."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.mmtok_params = ModelParams.from_config(self.config)
        # per image of the latest `embed_multimodal` call: (method, kept row indices or None for
        # merged tokens); read and cleared by `take_selection` through `LLM.apply_model` (tests, debugging)
        self.mmtok_last: list[tuple[str, list[int] | None]] = []

    def _tower(self, pixel_values: torch.Tensor, with_cls: bool):
        """(patch features [B, n, Dv], features with CLS or None, CLS attention, keys): vLLM's own
        tower call, or one pass that also captures the CLS row's signals (VisionZip, VisPruner)."""
        if not with_cls:
            strategy = self.config.vision_feature_select_strategy
            patches = self.vision_tower(pixel_values, feature_select_strategy=strategy)
            return patches, None, None, None
        pre, probs, keys = tower_features(self.vision_tower, pixel_values, True)
        return pre[:, 1:], pre, probs, keys

    def embed_multimodal(self, **kwargs):
        spec = kwargs.pop(SPEC_FIELD, None)
        text_ids = kwargs.pop(TEXT_FIELD, None)
        pixel_values = kwargs.get("pixel_values")
        if spec is None or pixel_values is None:
            return super().embed_multimodal(**kwargs)
        if self.config.vision_feature_select_strategy != "default" or not isinstance(
            self.config.vision_feature_layer, int
        ):
            raise ValueError("mmtok pruning needs one vision_feature_layer and the 'default' strategy (CLS dropped)")
        if isinstance(pixel_values, (list, tuple)):
            pixel_values = torch.stack(list(pixel_values))
        spec = spec.reshape(-1, 3).tolist()
        methods = [METHODS[code] for code, _, _ in spec]
        patches, pre, probs, keys = self._tower(pixel_values, with_cls=any(m in CLS_METHODS for m in methods))
        proj = self.multi_modal_projector(patches)
        out, self.mmtok_last = [], []
        for b, (method, (_, k, seed)) in enumerate(zip(methods, spec)):
            if method == "none" or k < 0:
                out.append(proj[b])
                self.mmtok_last.append(("none", list(range(proj.shape[1]))))
                continue
            image = ImageSignals(
                proj=proj[b],
                patches=patches[b],
                pre=None if pre is None else pre[b],
                cls_attention=None if probs is None else probs[b],
                keys=None if keys is None else keys[b],
            )
            text = None
            if method == "mmtok":
                ids = text_ids[b].to(proj.device)
                text = self.language_model.model.embed_tokens(ids)
            rows, idx = select_rows(
                method, k, image, self.mmtok_params, text=text, seed=seed, project=self.multi_modal_projector
            )
            out.append(rows)
            self.mmtok_last.append((method, None if idx is None else idx.tolist()))
        return out


def take_selection(model) -> list[tuple[str, list | None]]:
    """For `LLM.apply_model(take_selection)`: the per-image (method, kept rows) of the model's
    latest image batch (LLaVA or LLaVA-NeXT: its `mmtok_last`), which it then forgets, so a request
    whose image embedding came from vLLM's encoder or prefix cache reads [] rather than an earlier
    batch's rows (needs VLLM_ALLOW_INSECURE_SERIALIZATION=1 with vLLM's multiprocess engine)."""
    taken = list(getattr(model, "mmtok_last", []))
    model.mmtok_last = []
    return taken
