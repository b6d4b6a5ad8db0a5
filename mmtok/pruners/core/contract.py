"""The Pruner contract: the dataclass every method subclasses, its budget rules and its config-only checks.

    pruner = build_pruner("mmtok", budget=64)
    pruner.check_config(hf_config)  # one-line ValueError for settings the model cannot honour, no weights
    with pruner(model, tokenizer=processor.tokenizer, questions=questions):
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)
    pruner.last_stats  # PruneStats: kept tokens per sample, vision / selection time

A pre-LLM method implements `select` (which tokens of each crop stay); in-LLM methods subclass
`mmtok.pruners.InLLMPruner`. Applying a pruner (`with pruner(model)`) is the request engine's job
(`mmtok.pruners.core.engine`).
"""

from __future__ import annotations

import dataclasses
import warnings
import zlib
from dataclasses import dataclass, field, fields
from typing import ClassVar

import torch
from torch import nn

from mmtok.models.adapters import (
    LAYOUTS,
    CropSelection,
    FamilyAdapter,
    ImageCrops,
    ImageSource,
    KeptImage,
    max_crops,
    tokens_per_crop,
)
from mmtok.models.registry import method_defaults
from mmtok.pruners.core.engine import applied
from mmtok.pruners.core.records import PruneStats, SampleContext


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

    `budget=0` (pre-LLM methods): text only. The request engine never encodes the image; the LLM
    receives the prompt without its image tokens (`FamilyAdapter.text_prompt`), so every pre-LLM
    method gives the same run at 0. In-LLM methods refuse it.
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

    last_stats: PruneStats = field(default_factory=PruneStats, init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        budget = self.budget
        if budget is not None and (isinstance(budget, bool) or not isinstance(budget, int) or budget < 0):
            raise ValueError(f"budget must be an integer >= 0 (0: text only; None keeps all), got {budget!r}")
        if budget == 0 and self.in_llm:
            raise ValueError(
                f"pruner {self.name!r} prunes inside the LLM: budget 0 (text only) is for pre-LLM pruners; use none@0"
            )
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
        if self.budget == 0:  # text only: no crop reaches the LLM, on any split
            return 0
        crops = max_crops(config)
        k = self.budget // crops
        if k < 1:
            family = getattr(config, "model_type", None)
            raise ValueError(
                f"budget {self.budget} is below one token per crop for {family} ({crops} crops); use budget >= {crops}"
            )
        return k

    def check_config(self, config) -> None:
        """Raise a one-line ValueError if this pruner cannot run on a model with this HF config:
        a budget it cannot honour, or (in-LLM methods) decoder layers the LLM does not have.

        Needs the config only (no weights), so a runner checks before loading the model; a method
        with more settings to check overrides it and calls `super().check_config(config)`."""
        self._per_crop(config)

    # -- applying it ----------------------------------------------------------------------------
    def __call__(
        self,
        model: nn.Module,
        *,
        tokenizer=None,
        questions: list[str] | None = None,
        sources: list[ImageSource] | None = None,
    ):
        """`with pruner(model, tokenizer=..., questions=...):` prunes every `model.generate` call.
        `sources` (one `ImageSource` per sample: the image's size before the family's preprocessing
        and the mode) reach each sample's `SampleContext.source`."""
        return applied(self, model, tokenizer=tokenizer, questions=questions, sources=sources)

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
