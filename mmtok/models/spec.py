"""What a model family declares about itself (`FamilySpec`) and the input rules it implements (`InputRules`).

Importable without torch, transformers or PIL: a family folder's `__init__.py` builds its specs from
this module alone, so the config validator and the sweep preflight can read every family's traits,
options and defaults before anything heavy loads. The code behind a spec (adapter, processor,
prompt and image rules, tiny builder) is named by import path and imported on first use.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any


def load_object(path: str) -> Any:
    """The object at "package.module:attribute"."""
    module, _, attr = path.partition(":")
    # a function-local import of our own code: the family's implementation needs torch /
    # transformers / PIL, which the spec's readers (config validation, preflight) must not load
    return getattr(importlib.import_module(module), attr)


@dataclass(frozen=True)
class FamilySpec:
    """One HF `model_type` a family folder supports, and everything the model-agnostic code asks of it."""

    model_type: str  # HF config.model_type
    hf_class: str  # the transformers class that loads it, unmodified
    label: str  # for messages and the docs
    traits: frozenset[str]  # what a pruning method may `require` (mmtok.models.registry.TRAITS)
    adapter: str  # "module:Class" of its FamilyAdapter (mmtok.models.adapters)
    rules: str  # "module:object" of its InputRules (prompt, image, stop strings)
    tiny: str  # "module:function": function(out_dir, model_type) writes a tiny random checkpoint
    processor: str | None = None  # "module:function(source, *, local_files_only, min_pixels, max_pixels)";
    # None: transformers' AutoProcessor
    prompt_formats: tuple[str, ...] = ("hf",)  # the `prompt_format` values it offers
    image_preprocess: tuple[str, ...] = ("crop",)  # the `image_preprocess` values it offers
    option_meanings: dict[str, str] = field(default_factory=dict)  # its own option values, explained
    pixel_bounds: bool = False  # its processor takes `model.min_pixels` / `model.max_pixels`
    anyres_tiles: bool = False  # crops = a base image + tiles from `config.image_grid_pinpoints`
    tokens_follow_image: bool = False  # an image's token count follows its size (no fixed per-crop count)
    # its adapter's `padding_patches` knows which tokens its preprocessing's padding fills (MMTok++)
    padding_rule: bool = False
    method_defaults: dict[str, dict[str, Any]] = field(default_factory=dict)  # pruner name -> parameter defaults

    def adapter_class(self) -> type:
        return load_object(self.adapter)

    def input_rules(self) -> InputRules:
        return load_object(self.rules)

    def tiny_builder(self):
        return load_object(self.tiny)

    def processor_loader(self):
        return None if self.processor is None else load_object(self.processor)


class InputRules:
    """How a family turns one question + one image into what its processor receives, and how its
    answers end. The evaluation layer calls these; a family implements them in its own folder."""

    # stop strings the family's lmms-eval wrapper drops from a task's `until`
    dropped_stops: tuple[str, ...] = ()

    def prompt(self, processor, question: str, prompt_format: str) -> str:
        """The full prompt text for one image + `question` under `prompt_format`."""
        raise NotImplementedError

    def image(self, image, processor, mode: str):
        """The PIL image handed to the processor under `image_preprocess` `mode`."""
        raise NotImplementedError


def image_token(processor) -> str:
    """The placeholder a processor expands into the image's tokens."""
    return getattr(processor, "image_token", None) or "<image>"
