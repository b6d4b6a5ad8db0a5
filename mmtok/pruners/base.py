"""The Pruner contract: a small dataclass per method, applied as a context manager.

    pruner = build_pruner("mmtok", budget=64)
    with pruner(model, tokenizer=processor.tokenizer, questions=questions):
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    pruner.last_stats  # kept tokens per sample, vision / selection time

Every pruner runs the same request path (`_PrunedGenerate`): the image is encoded once, each image's
crops are reduced by the method (`select`, pre-LLM methods) or kept whole (in-LLM methods and
`none`), the shorter `inputs_embeds` + attention mask are built per sample and re-left-padded, and
the original `generate` runs on them. In-LLM methods additionally register decoder-layer hooks
(`llm_hooks`). On exit every hook and the `generate` override are removed: the model is unmodified.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
import zlib
from dataclasses import dataclass, field, fields
from typing import Any, ClassVar

import torch
from torch import nn

from mmtok.models.adapters import (
    LAYOUTS,
    CropSelection,
    FamilyAdapter,
    ImageCrops,
    ImageSpan,
    KeptImage,
    adapter_for,
    max_crops,
    tokens_per_crop,
)
from mmtok.models.registry import method_defaults, refusal
from mmtok.timing import now


@dataclass
class SampleContext:
    """What a pruner may know about one request besides its image."""

    index: int  # position in the batch (never use it for randomness: batches must not matter)
    input_ids: torch.Tensor  # the sample's prompt ids without padding
    question: str | None
    tokenizer: Any
    embed_tokens: nn.Module  # the LLM's input embedding table
    seed: int
    adapter: FamilyAdapter  # the model family (for methods that work on the packed sequence)


@dataclass
class Request:
    """One `generate` call as the in-LLM hooks see it."""

    spans: list[ImageSpan]
    attention_mask: torch.Tensor  # [B, L] of the (possibly shortened) prompt
    prompt_length: int
    contexts: list[SampleContext]
    position_ids: torch.Tensor | None = None  # [3, B, L] on M-RoPE families, else None


@dataclass
class Pruner:
    """Base of every method. `budget=None` keeps every vision token.

    Budget rule (pre-LLM methods): a one-crop family keeps `budget` tokens of its single crop. On a
    tiling family labels are upper bounds over the largest anyres split (5 crops for the tiling
    checkpoints: `budget=160` means 32 per crop); each crop keeps `budget // max_crops` tokens, and
    the LLM receives that many per crop actually present. A per-crop budget at or above the crop size
    keeps every token (with a warning when it is strictly above). A family whose token count follows
    the image (one image = one crop of a size-dependent count n): `budget` tokens, or all n when n <= budget.

    `retain_ratio` (instead of `budget`): every crop keeps int(ratio x its tokens), the release's
    rule on such families (k = int(0.2 x n) there); a method that cannot honour a ratio says so.
    """

    budget: int | None = None
    retain_ratio: float | None = None
    next_layout: str = "paper"  # tiling families' assembly of kept tokens: "paper" or "hf" (see adapters)
    seed: int = 0

    name: ClassVar[str] = ""
    in_llm: ClassVar[bool] = False  # acts inside the LLM (FastV, SparseVLM) rather than before it
    supports_batch: ClassVar[bool] = True
    merges: ClassVar[bool] = False  # returns new (merged) tokens, so keeping k = n is not the identity
    # what the method needs from a model family (mmtok.models.registry.TRAITS); families lacking
    # one are refused with a one-line error before any weights load
    requires: ClassVar[frozenset[str]] = frozenset()
    takes_ratio: ClassVar[bool] = True  # accepts `retain_ratio`

    last_stats: dict = field(default_factory=dict, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.budget is not None and (not isinstance(self.budget, int) or self.budget < 1):
            raise ValueError(f"budget must be an integer >= 1 (or None to keep all), got {self.budget!r}")
        if self.retain_ratio is not None:
            if not self.takes_ratio:
                raise ValueError(f"pruner {self.name!r} does not take retain_ratio; give a budget")
            if self.budget is not None:
                raise ValueError("give either budget or retain_ratio, not both")
            ratio = self.retain_ratio
            if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
                raise ValueError(f"retain_ratio must be a number in (0, 1], got {ratio!r}")
        if self.next_layout not in LAYOUTS:
            raise ValueError(f"unknown next_layout {self.next_layout!r}; valid: {', '.join(LAYOUTS)}")

    @classmethod
    def keep_all(cls, **params) -> Pruner:
        """This method configured to keep every vision token: the unpruned model's generations
        exactly. `budget=None` by default; a method whose "everything" is a ratio or a schedule
        overrides this."""
        return cls(budget=None, **params)

    # -- what a method implements ---------------------------------------------------------------
    def select(self, image: ImageCrops, k: int, ctx: SampleContext) -> CropSelection:
        """Pre-LLM methods: keep `k` tokens of every crop of `image` (k < tokens per crop)."""
        raise NotImplementedError(f"{type(self).__name__} does not select before the LLM")

    def encode(self, adapter: FamilyAdapter, pixel_values, **image_inputs) -> list[ImageCrops]:
        """Run the vision tower once; methods that need signals from inside it override this."""
        return adapter.encode(pixel_values, **image_inputs)

    def llm_hooks(self, model: nn.Module, adapter: FamilyAdapter) -> list:
        """In-LLM methods: register hooks (they read `self.request`); return their handles."""
        return []

    def for_family(self, model_type: str) -> Pruner:
        """This pruner with every parameter left at None set to the family's default (a copy);
        the family declares them (`FamilySpec.method_defaults`, e.g. MMTok's tau_t)."""
        defaults = method_defaults(model_type, self.name)
        unset = {k: v for k, v in defaults.items() if getattr(self, k) is None}
        return dataclasses.replace(self, **unset) if unset else self

    def params(self) -> dict:
        """Every hyper-parameter by name (for result rows)."""
        return {f.name: getattr(self, f.name) for f in fields(self) if f.init}

    # -- budget ---------------------------------------------------------------------------------
    def per_crop_budget(self, adapter: FamilyAdapter, image: ImageCrops | None = None) -> int | None:
        """Tokens each crop of `image` keeps (None: all); a ratio needs the image."""
        if self.retain_ratio is not None and not self.in_llm:
            n = image.tokens_per_crop if image is not None else tokens_per_crop(adapter.config)
            return int(self.retain_ratio * n)
        return self._per_crop(adapter.config)

    def _per_crop(self, config) -> int | None:
        if self.budget is None or self.in_llm:
            return None
        crops = max_crops(config)
        k = self.budget // crops
        if k < 1:
            family = getattr(config, "model_type", None)
            raise ValueError(
                f"budget {self.budget} is below one token per crop for {family} ({crops} crops); use budget >= {crops}"
            )
        return k

    def check_budget(self, config) -> None:
        """Raise a one-line ValueError if `budget` cannot work for a model with this HF config.

        Needs the config only (no weights), so a runner can check before loading the model."""
        self._per_crop(config)

    # -- applying it ----------------------------------------------------------------------------
    @contextlib.contextmanager
    def __call__(self, model: nn.Module, *, tokenizer=None, questions: list[str] | None = None):
        adapter = adapter_for(model)  # raises for unsupported classes before touching the model
        reason = refusal(self.name, self.requires, adapter.family)
        if reason:
            raise ValueError(reason)
        if "generate" in vars(model):
            raise RuntimeError("a pruner is already applied to this model (nested `with pruner(model)`)")
        self.tokenizer, self.questions = tokenizer, questions
        self.request: Request | None = None  # the latest request; kept after exit for inspection
        handles = self.llm_hooks(model, adapter)
        model.generate = _PrunedGenerate(self, model, adapter, model.generate)
        try:
            yield self
        finally:
            del model.generate
            for h in handles:
                h.remove()

    # -- the per-image reduction (shared by every method) ---------------------------------------
    def reduce_image(self, adapter: FamilyAdapter, image: ImageCrops, ctx: SampleContext) -> KeptImage:
        k = self.per_crop_budget(adapter, image)
        n = image.tokens_per_crop
        if k is None:  # no budget: exactly the unmodified model's image tokens
            return adapter.kept_all(image)
        if k == 0:  # a ratio of a small image (the release drops every image token then)
            empty = torch.zeros(0, dtype=torch.long, device=image.proj.device)
            return adapter.kept(image, CropSelection(indices=[empty] * image.num_crops), self.next_layout)
        if k >= n:
            if k > n and tokens_per_crop(adapter.config) is not None:  # n follows the image: no warning
                warnings.warn(
                    f"{self.name}: per-crop budget {k} exceeds the {n} tokens of a crop; keeping all",
                    stacklevel=3,
                )
            # every token, laid out as this pruner lays out kept tokens (so counts grow with k)
            every = torch.arange(n, device=image.proj.device)
            return adapter.kept(image, CropSelection(indices=[every] * image.num_crops), self.next_layout)
        return adapter.kept(image, self.select(image, k, ctx), self.next_layout)

    def sample_seed(self, ctx: SampleContext) -> int:
        """A seed that depends on the run seed and the prompt, never on the batch position."""
        return (self.seed * 1_000_003 + zlib.crc32(ctx.input_ids.cpu().numpy().tobytes())) % (2**63)


class _PrunedGenerate:
    """Stands in for `model.generate` inside the `with` block (an instance attribute, removed on exit)."""

    def __init__(self, pruner: Pruner, model: nn.Module, adapter: FamilyAdapter, generate):
        self.pruner, self.model, self.adapter, self.generate = pruner, model, adapter, generate

    def __call__(self, input_ids=None, attention_mask=None, pixel_values=None, **kwargs):
        pruner, adapter, model = self.pruner, self.adapter, self.model
        image_inputs = {key: kwargs.pop(key) for key in adapter.image_keys if key in kwargs}
        if pixel_values is None or input_ids is None:
            return self.generate(input_ids=input_ids, attention_mask=attention_mask, **image_inputs, **kwargs)
        kwargs = _length_as_new_tokens(model, input_ids, kwargs)
        if pruner.in_llm and (kwargs.get("num_beams", 1) > 1 or kwargs.get("num_return_sequences", 1) > 1):
            raise ValueError(f"pruner {pruner.name!r} supports num_beams=1 and num_return_sequences=1 only")
        batch = input_ids.shape[0]
        if batch > 1 and not pruner.supports_batch:
            raise ValueError(f"pruner {pruner.name!r} supports batch size 1 only (got {batch})")
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        questions = pruner.questions
        if questions is not None and len(questions) != batch:
            raise ValueError(f"got {len(questions)} questions for a batch of {batch}")
        device = input_ids.device
        embed = model.get_input_embeddings()

        with torch.no_grad():
            t0 = now(device)
            images = pruner.encode(adapter, pixel_values, **image_inputs)
            t1 = now(device)
            if len(images) != batch:
                raise ValueError(f"mmtok supports one image per sample; got {len(images)} images for {batch} samples")
            contexts, kept = [], []
            for b in range(batch):
                ids = input_ids[b][attention_mask[b].bool()]
                ctx = SampleContext(
                    index=b,
                    input_ids=ids,
                    question=None if questions is None else questions[b],
                    tokenizer=pruner.tokenizer,
                    embed_tokens=embed,
                    seed=pruner.seed,
                    adapter=adapter,
                )
                contexts.append(ctx)
                kept.append(pruner.reduce_image(adapter, images[b], ctx))
            t2 = now(device)
            inputs = adapter.build_inputs(input_ids, attention_mask, kept, image_inputs)

        mask = inputs.attention_mask
        pruner.request = Request(
            spans=inputs.spans,
            attention_mask=mask,
            prompt_length=mask.shape[1],
            contexts=contexts,
            position_ids=inputs.position_ids,
        )
        pruner.last_stats = {
            "vision_s": t1 - t0,
            "select_s": t2 - t1,
            "samples": [
                {
                    "vision_tokens_full": adapter.full_length(img),
                    "vision_tokens": k.count,
                    "crops": img.num_crops,
                    # rows of the full image sequence kept, where the family tracks them (original positions)
                    "kept_index": None if k.index is None else k.index.tolist(),
                }
                for img, k in zip(images, kept)
            ],
        }
        out = self.generate(**adapter.generate_inputs(inputs), **kwargs)
        # HF returns only new tokens for an embeddings prompt; put the prompt ids back in front so
        # callers slice `out[:, input_ids.shape[1]:]` exactly as with the unmodified model.
        if isinstance(out, torch.Tensor):
            return torch.cat([input_ids, out], dim=1)
        out.sequences = torch.cat([input_ids, out.sequences], dim=1)
        return out


def _length_as_new_tokens(model, input_ids, kwargs: dict) -> dict:
    """HF counts `max_length` against the prompt it is given, which is shorter once pruned; turn
    it into `max_new_tokens` against the original prompt so lengths mean what they mean unpruned."""
    if kwargs.get("max_new_tokens") is not None:
        return kwargs
    config = kwargs.get("generation_config") or model.generation_config
    max_length = kwargs.get("max_length", config.max_length)
    if max_length is None:
        return kwargs
    kwargs = {k: v for k, v in kwargs.items() if k != "max_length"}
    kwargs["max_new_tokens"] = max(max_length - input_ids.shape[1], 0)
    return kwargs
