"""`none`: the unpruned model, run through the same request path as every pruner (so its timings
are measured the same way); it must reproduce the unmodified model exactly."""

from dataclasses import dataclass
from typing import ClassVar

from mmtok.pruners import Pruner, register


@register
@dataclass
class NoPruner(Pruner):
    name: ClassVar[str] = "none"

    def __post_init__(self) -> None:
        if self.budget is not None:
            raise ValueError("pruner 'none' takes no budget (it keeps every vision token)")
        super().__post_init__()
