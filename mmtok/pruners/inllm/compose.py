"""A pre-LLM selection followed by an in-LLM stage, in one run: `Composed(first, stage)`.

    pruner = Composed(build_pruner("mmtok", budget=160), build_pruner("mmtok_llm", budget=80, layer=24))
    with pruner(model, tokenizer=processor.tokenizer, questions=questions):
        out = model.generate(**inputs, max_new_tokens=16, do_sample=False)

The first pruner chooses the image tokens the LLM receives (k per image, its own budget rule); the
stage then works on that shorter prompt exactly as it would on an unpruned one, through the same
in-LLM contract (`InLLMPruner`, `LayerDropper`): its prune layers, its `cut`, its schedule, with the
image span being the k kept tokens at their positions. The per-layer vision counts are therefore the
stage's `layer_schedule(k, config)`: k up to its prune layer, then its budget. Keep-all of both (both
budgets None) is the unpruned model exactly. A budget the stage reads relative to a capacity (FastV's
and PDrop's equivalent counts) is relative to the most tokens the first pruner lets through
(`InLLMPruner.input_capacity`), not to the checkpoint's full image.

Statistics: `vision_tokens_full` is the image's full count, `kept_index` the first pruner's rows,
`layer_vision_tokens` starts at k, `vision_tokens` is what the last layers see (the stage's report).
"""

from __future__ import annotations

from torch import nn

from mmtok.models.adapters import FamilyAdapter, ImageCrops, KeptImage, max_crops, tokens_per_crop
from mmtok.pruners.core.contract import Pruner
from mmtok.pruners.core.engine import applied
from mmtok.pruners.core.records import PruneStats, SampleContext
from mmtok.pruners.core.registry import PRUNERS


def _names(select) -> str:
    return ", ".join(name for name, cls in PRUNERS.items() if select(cls))


class Composed:
    """`first` (a pre-LLM method) chooses the tokens the LLM receives; `stage` (an in-LLM method)
    prunes inside the LLM from its own layers on. One-line ValueErrors for a pairing that cannot be."""

    in_llm = True  # it acts inside the LLM (one beam, one sequence per prompt)

    def __init__(self, first: Pruner, stage: Pruner):
        if first.in_llm or first.name == "none":
            what = "keeps every token" if first.name == "none" else "acts inside the LLM"
            raise ValueError(
                f"pruner.then follows a pre-LLM selection, and pruner {first.name!r} {what}; "
                f"valid first pruners: {_names(lambda c: not c.in_llm and c.name != 'none')}"
            )
        if not stage.in_llm:
            raise ValueError(
                f"pruner.then.name {stage.name!r} selects before the LLM; the stage after a pre-LLM selection "
                f"acts inside it; valid: {_names(lambda c: c.in_llm)}"
            )
        if first.budget is not None and stage.budget is not None and stage.budget >= first.budget:
            raise ValueError(
                f"pruner.then.budget ({stage.budget}) must be below the pre-LLM budget ({first.budget}): "
                f"the stage would keep every token the LLM receives"
            )
        self.first, self.stage = first, stage
        self.tokenizer, self.questions, self.sources = None, None, None

    def __repr__(self) -> str:
        return f"Composed({self.first!r}, then={self.stage!r})"

    # -- what the request engine and the runner read --------------------------------------------------
    @property
    def name(self) -> str:
        return f"{self.first.name}+{self.stage.name}"

    @property
    def requires(self) -> frozenset[str]:
        return self.first.requires | self.stage.requires

    @property
    def supports_batch(self) -> bool:
        return self.first.supports_batch and self.stage.supports_batch

    @property
    def seed(self) -> int:
        return self.first.seed

    @property
    def budget(self) -> int | None:
        return self.first.budget

    @property
    def retain_ratio(self) -> float | None:
        return self.first.retain_ratio

    # the in-LLM hooks (the stage's) read and write the request's state on the stage
    @property
    def request(self):
        return self.stage.request

    @request.setter
    def request(self, value) -> None:
        self.stage.request = value

    @property
    def last_stats(self) -> PruneStats:
        return self.stage.last_stats

    @last_stats.setter
    def last_stats(self, value: PruneStats) -> None:
        self.stage.last_stats = value

    @property
    def last_trace(self) -> list:
        return self.stage.last_trace

    def params(self) -> dict:
        """The first pruner's parameters, with the stage's under "then" (result rows, the run identity)."""
        return {**self.first.params(), "then": {"name": self.stage.name, **self.stage.params()}}

    def for_family(self, model_type: str) -> Composed:
        return Composed(self.first.for_family(model_type), self.stage.for_family(model_type))

    # -- the budgets ----------------------------------------------------------------------------------
    def input_capacity(self, config) -> int | None:
        """The most image tokens the first pruner lets reach the LLM per image (None: not fixed by
        the config: keep-all, or a ratio of images whose size decides their token count)."""
        full = tokens_per_crop(config)
        if self.first.retain_ratio is not None:
            per_crop = None if full is None else int(self.first.retain_ratio * full)
        else:
            per_crop = self.first._per_crop(config)
        if per_crop is None:
            return None
        if full is None:  # one image = one crop whose size follows the image: at most the budget
            return per_crop
        return min(per_crop, full) * max_crops(config)

    def _bind(self, config) -> None:
        self.stage.input_capacity = self.input_capacity(config)

    def check_config(self, config) -> None:
        """Both pruners' checks against the checkpoint's config (no weights), the stage's with the
        capacity the first leaves."""
        self.first.check_config(config)
        self._bind(config)
        self.stage.check_config(config)

    def layer_schedule(self, n: int, config) -> list[int]:
        """Vision tokens in every decoder layer's input when the LLM receives `n` image tokens (the
        first pruner's count for the image): the stage's schedule on them."""
        self._bind(config)
        return self.stage.layer_schedule(n, config)

    # -- applying it ------------------------------------------------------------------------------------
    def __call__(self, model: nn.Module, *, tokenizer=None, questions: list[str] | None = None, sources=None):
        """As `Pruner.__call__` (`sources`: one `ImageSource` per sample, for the first pruner's rules)."""
        return applied(self, model, tokenizer=tokenizer, questions=questions, sources=sources)

    def encode(self, adapter: FamilyAdapter, pixel_values, **image_inputs) -> list[ImageCrops]:
        return self.first.encode(adapter, pixel_values, **image_inputs)

    def reduce_image(self, adapter: FamilyAdapter, image: ImageCrops, ctx: SampleContext) -> KeptImage:
        return self.first.reduce_image(adapter, image, ctx)

    def llm_hooks(self, model: nn.Module, adapter: FamilyAdapter) -> list:
        self._bind(adapter.config)
        return self.stage.llm_hooks(model, adapter)
