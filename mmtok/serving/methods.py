"""Which pruner runs inside vLLM, with which parameters, and the per-image selection itself.

Pure torch + `mmtok.selection` (the same selection code as the HF path, `mmtok.pruners.*`): the
vLLM model classes (`mmtok.serving.vllm_llava`) call `select_rows` from their `embed_multimodal`
hook, the front-end processor calls `resolve` to check a request before anything runs.

What runs here: the pre-LLM methods whose whole input is one image's tower output (plus, for
MMTok, the question's rows of the LLM embedding table). They reduce the image to k rows before the
LLM, so vLLM schedules a prompt of text + k tokens. In-LLM methods (FastV, SparseVLM, PDrop, DART, MMTok's in-LLM stage)
drop tokens between decoder layers; vLLM fixes a request's sequence length and KV slots when it
schedules it, so they cannot run behind this hook.

Parameters and defaults are those of the HF pruners (`mmtok/pruners/<name>.py`, checked by
tests/test_serving_methods.py): MMTok alpha 0.5, tau_v 0.2, tau_t 0.02 (LLaVA), the cleaned
question's sub-words looked up in the LLM's input embeddings, vision-vision on the tower features
LLaVA reads (CLS removed); DivPrune on the projected tokens with the release's arithmetic; Random
seeded from the run seed and the prompt ids; VisionZip / VisPruner on the CLS row's attention at
the layer LLaVA reads.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass

import torch

from mmtok.selection.divprune import divprune_select
from mmtok.selection.mmtok import mmtok_select
from mmtok.selection.random import random_select
from mmtok.selection.visionzip import visionzip_merge, visionzip_split
from mmtok.selection.vispruner import vispruner_select

# Methods the plugin runs; "none" keeps every image token (the unmodified model).
METHODS = ("none", "mmtok", "divprune", "random", "visionzip", "vispruner")
# Methods that need the CLS row's attention at the feature layer (computed in the tower pass).
CLS_METHODS = frozenset({"visionzip", "vispruner"})
# Our other methods, and why they do not run here (the one-line refusal).
IN_LLM = ("fastv", "sparsevlm", "pdrop", "dart", "mmtok_llm")
NOT_PORTED = ("cdpruner", "prumerge_plus")

# The HF pruners' defaults (MMTokPruner, DivPrunePruner, VisPrunerPruner, Pruner.seed).
MMTOK_ALPHA, MMTOK_TAU_T_LLAVA, MMTOK_TAU_V = 0.5, 0.02, 0.2
DIVPRUNE_ARITHMETIC = "release"
VISPRUNER_IMPORTANT_RATIO, VISPRUNER_STEP = 0.5, 8
SEED = 0

# Keys: on the HF config (hf_overrides={...}) for the model's defaults, in mm_processor_kwargs
# per request. Only method / budget / question are per request.
KEY_METHOD, KEY_BUDGET, KEY_QUESTION = "mmtok_method", "mmtok_budget", "mmtok_question"
MODEL_KEYS = ("mmtok_alpha", "mmtok_tau_t", "mmtok_tau_v", "mmtok_seed")


@dataclass(frozen=True)
class PruneRequest:
    """One image's pruning, as resolved by the processor (front end) from the model's defaults and
    the request's mm_processor_kwargs."""

    method: str
    budget: int | None  # None: keep every token
    question: str | None = None  # MMTok only


@dataclass(frozen=True)
class ModelParams:
    """Per-model hyper-parameters (hf_overrides), with the HF pruners' defaults."""

    alpha: float = MMTOK_ALPHA
    tau_t: float = MMTOK_TAU_T_LLAVA
    tau_v: float = MMTOK_TAU_V
    seed: int = SEED

    @classmethod
    def from_config(cls, config) -> ModelParams:
        values = {key[len("mmtok_") :]: getattr(config, key) for key in MODEL_KEYS if hasattr(config, key)}
        return cls(**values)


def refusal(method: object) -> str | None:
    """The one-line reason `method` cannot run in vLLM, or None if it can."""
    if method in METHODS:
        return None
    if method in IN_LLM:
        return (
            f"pruning method {method!r} prunes inside the LLM's layers, which vLLM cannot do (a request's "
            f"length and KV slots are fixed when it is scheduled); valid in vLLM: {', '.join(METHODS)}"
        )
    if method in NOT_PORTED:
        return f"pruning method {method!r} is not ported to vLLM; valid in vLLM: {', '.join(METHODS)}"
    return f"unknown pruning method {method!r}; valid in vLLM: {', '.join(METHODS)}"


def check_budget(budget: object) -> int | None:
    """`budget` as an int >= 1 or None (keep all); one-line ValueError otherwise."""
    if budget is None:
        return None
    if isinstance(budget, bool) or not isinstance(budget, int) or budget < 1:
        raise ValueError(f"mmtok_budget must be an integer >= 1 (or None to keep all), got {budget!r}")
    return budget


def resolve(config, request_kwargs: dict) -> PruneRequest:
    """The pruning of one request: request keys over the model's (hf_overrides) defaults.

    Raises a one-line ValueError for an unsupported method, a bad budget, or MMTok without a
    question."""
    method = request_kwargs.get(KEY_METHOD, getattr(config, KEY_METHOD, "none"))
    reason = refusal(method)
    if reason:
        raise ValueError(reason)
    budget = check_budget(request_kwargs.get(KEY_BUDGET, getattr(config, KEY_BUDGET, None)))
    question = request_kwargs.get(KEY_QUESTION)
    if method == "none" or budget is None:
        return PruneRequest("none", None)
    if method == "mmtok":
        if not isinstance(question, str):
            raise ValueError(
                "mmtok needs the question text of each request: mm_processor_kwargs={'mmtok_question': '...'}"
            )
        return PruneRequest(method, budget, question)
    return PruneRequest(method, budget)


def kept_count(req: PruneRequest, n: int) -> int:
    """Image tokens the LLM receives for `req` from an image of n tokens (the HF rule: k >= n keeps all)."""
    return n if req.budget is None else min(req.budget, n)


def prompt_seed(seed: int, prompt_ids: list[int]) -> int:
    """`Pruner.sample_seed`: from the run seed and the prompt ids as the HF model sees them (int64,
    the image placeholder expanded to the full token count), never the batch position."""
    data = torch.tensor(prompt_ids, dtype=torch.long).numpy().tobytes()
    return (seed * 1_000_003 + zlib.crc32(data)) % (2**63)


# Codes of the methods in the tensors the processor hands to the model (vLLM batches tensors).
METHOD_CODES = {name: i for i, name in enumerate(METHODS)}


@dataclass
class ImageSignals:
    """One image's tower outputs for selection (LLaVA-1.5: one crop)."""

    proj: torch.Tensor  # [n, D_llm] projected tokens
    patches: torch.Tensor  # [n, D_vis] features of the layer LLaVA reads, CLS removed
    pre: torch.Tensor | None = None  # [n + 1, D_vis] the same with CLS (VisionZip)
    cls_attention: torch.Tensor | None = None  # [H, n + 1] the CLS row's attention (VisionZip / VisPruner)
    keys: torch.Tensor | None = None  # [n + 1, head_dim] keys averaged over heads (VisionZip)


def select_rows(
    method: str,
    k: int,
    image: ImageSignals,
    params: ModelParams,
    *,
    text: torch.Tensor | None = None,
    seed: int = 0,
    project=None,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """(the [k', D_llm] image tokens the LLM receives, in sequence order; the kept row indices,
    ascending, or None for VisionZip's merged tokens), k' = min(k, n).

    `text`: MMTok's question rows of the LLM input embeddings [m, D_llm]; `seed`: Random's
    per-request seed (`prompt_seed`); `project`: the projector (VisionZip's merged tokens)."""
    n = image.proj.shape[0]
    if method == "none" or k >= n:
        return image.proj, torch.arange(n)
    if method == "mmtok":
        idx = mmtok_select(
            text, image.proj, image.patches, k, alpha=params.alpha, tau_t=params.tau_t, tau_v=params.tau_v
        )
    elif method == "divprune":
        idx = divprune_select(image.proj, k, arithmetic=DIVPRUNE_ARITHMETIC)
    elif method == "random":
        gen = torch.Generator().manual_seed(seed)
        idx = random_select(n, k, generator=gen, device=image.proj.device)
    elif method == "vispruner":
        attention = image.cls_attention[:, 1:].mean(dim=0)
        idx = vispruner_select(image.patches, attention, k, VISPRUNER_IMPORTANT_RATIO, VISPRUNER_STEP)
    elif method == "visionzip":
        dominant, contextual = visionzip_split(k)
        merged = visionzip_merge(image.pre, image.cls_attention, image.keys, dominant, contextual)
        return project(merged.to(image.pre.dtype)), None
    else:
        raise ValueError(refusal(method) or f"method {method!r} has no selection")
    return image.proj[idx], idx.cpu()
