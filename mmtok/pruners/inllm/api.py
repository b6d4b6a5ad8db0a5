"""The in-LLM method API: `InLLMPruner` (where to prune, what to keep) and its validated prune-layer schedule."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar

from torch import nn

from mmtok.models.adapters import FamilyAdapter, image_capacity
from mmtok.pruners.core.contract import Pruner
from mmtok.pruners.core.records import LayerTrace
from mmtok.pruners.inllm.dropper import LayerDropper
from mmtok.pruners.inllm.views import Cut, LayerView


def one_cut_schedule(n: int, kept: int, layer: int, config) -> list[int]:
    """`InLLMPruner.layer_schedule` of a method that prunes once, the output of layer `layer - 1`
    (FastV, DART, mmtok_llm): `n` tokens in layers < `layer`, `kept` in the others."""
    layers = config.text_config.num_hidden_layers
    return [n] * layer + [kept] * (layers - layer)


@dataclass
class InLLMPruner(Pruner):
    """Base of the in-LLM methods: say where to prune (`prune_layers`) and what to keep (`cut`)."""

    in_llm: ClassVar[bool] = True
    takes_ratio: ClassVar[bool] = False  # schedules are defined by budget; a method opts in
    renumber_positions: ClassVar[bool] = False  # False: kept tokens keep their original positions

    # one record per prune layer of the last prefill (a method appends its own in `cut`)
    last_trace: list[LayerTrace] = field(default_factory=list, init=False, repr=False, compare=False)
    # the most vision tokens a pre-LLM selection before this method lets reach the LLM per image (set by
    # a composition, `mmtok.pruners.inllm.compose`); None: the checkpoint's own image capacity
    input_capacity: int | None = field(default=None, init=False, repr=False, compare=False)

    def prune_layers(self, num_layers: int) -> tuple[int, ...]:
        """Increasing decoder-layer indices whose output is pruned (raise for invalid settings)."""
        raise NotImplementedError

    def cut(self, step: int, view: LayerView) -> list[Cut]:
        """Per sample, what survives the output of prune layer number `step`."""
        raise NotImplementedError

    def layer_schedule(self, n: int, config) -> list[int]:
        """Vision tokens in the input of every decoder layer, for an image span of `n` tokens in a
        model with this HF `config`, as the method's rule for `budget` prescribes. The contract
        tests count what each layer really receives and compare."""
        raise NotImplementedError

    def capacity(self, config) -> int | None:
        """The most vision tokens one image can bring into the LLM: the checkpoint's `image_capacity`
        (None where it follows the image), or less after a pre-LLM selection (`input_capacity`).
        Budgets that are labels relative to a capacity (FastV's and PDrop's equivalent counts) use it."""
        full = image_capacity(config)
        if self.input_capacity is None:
            return full
        return self.input_capacity if full is None else min(full, self.input_capacity)

    def schedule(self, num_layers: int) -> tuple[int, ...]:
        """`prune_layers(num_layers)`, checked: increasing indices of layers an LLM of
        `num_layers` decoder layers has, else a one-line ValueError naming the valid range."""
        layers = tuple(self.prune_layers(num_layers))
        ok = all(isinstance(p, int) and not isinstance(p, bool) for p in layers)
        if not layers or not ok or list(layers) != sorted(set(layers)) or layers[0] < 0:
            raise ValueError(f"{self.name}: prune layers must be increasing layer indices, got {layers}")
        if layers[-1] >= num_layers:
            raise ValueError(
                f"{self.name}: prune layer {layers[-1]} does not exist ({num_layers} decoder layers); "
                f"valid: 0 to {num_layers - 1}"
            )
        return layers

    def check_config(self, config) -> None:
        """The prune layers exist in this model's LLM (from its HF config, no weights)."""
        super().check_config(config)
        self.schedule(config.text_config.num_hidden_layers)

    def llm_hooks(self, model: nn.Module, adapter: FamilyAdapter) -> list:
        return LayerDropper(self, adapter).register()
