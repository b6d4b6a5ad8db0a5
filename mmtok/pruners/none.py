"""`none`: the unpruned model, run through the same request path as every pruner (so its timings
are measured the same way); it must reproduce the unmodified model exactly. With budget 0 it is the
text-only run (no image token reaches the LLM), as every pre-LLM method is at 0."""

from dataclasses import dataclass
from typing import ClassVar

from mmtok.pruners import Pruner, register


@register
@dataclass
class NoPruner(Pruner):
    name: ClassVar[str] = "none"

    def __post_init__(self) -> None:
        if self.budget not in (None, 0):
            raise ValueError("pruner 'none' takes no budget (it keeps every vision token); budget 0 is text only")
        super().__post_init__()
