"""The request engine: how a pruner is applied to one model and runs every `generate` call on it.

`applied(pruner, model)` (what `with pruner(model):` enters) installs the method's decoder hooks and
puts `RequestEngine` in place of `model.generate`: the image is encoded once, each image's crops
are reduced by the method (`Pruner.reduce_image`), the shorter `inputs_embeds` + attention mask are
built per sample and re-left-padded by the family adapter, and the original `generate` runs on
them. At budget 0 (text only) no image is encoded: the original `generate` runs on the prompt
without its image tokens. On exit every hook and the `generate` override are removed: the model is unmodified.

The engine knows a pruner by the contract's attributes only (`name`, `requires`, `in_llm`,
`supports_batch`, `seed`, `encode`, `reduce_image`, `llm_hooks`), so it does not import it.
"""

from __future__ import annotations

import contextlib

import torch
from torch import nn

from mmtok.models.adapters import FamilyAdapter, adapter_for
from mmtok.models.registry import refusal
from mmtok.pruners.core.records import PruneStats, Request, SampleContext, SampleStats
from mmtok.timing import now


@contextlib.contextmanager
def applied(
    pruner, model: nn.Module, *, tokenizer=None, questions: list[str] | None = None, sources: list | None = None
):
    """`pruner` applied to `model` for the `with` block (see the module docstring); yields the pruner.
    `sources`: one `ImageSource` per sample of every request (what the image was before the
    family's preprocessing), for methods with a geometry rule; None when the caller does not know."""
    adapter = adapter_for(model)  # raises for unsupported classes before touching the model
    reason = refusal(pruner.name, pruner.requires, adapter.family)
    if reason:
        raise ValueError(reason)
    if "generate" in vars(model):
        raise RuntimeError("a pruner is already applied to this model (nested `with pruner(model)`)")
    pruner.tokenizer, pruner.questions, pruner.sources = tokenizer, questions, sources
    pruner.request = None  # the latest request; kept after exit for inspection
    handles = pruner.llm_hooks(model, adapter)
    model.generate = RequestEngine(pruner, model, adapter, model.generate)
    try:
        yield pruner
    finally:
        del model.generate
        for h in handles:
            h.remove()


class RequestEngine:
    """Stands in for `model.generate` inside the `with` block (an instance attribute, removed on exit)."""

    def __init__(self, pruner, model: nn.Module, adapter: FamilyAdapter, generate):
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
        sources = pruner.sources
        if sources is not None and len(sources) != batch:
            raise ValueError(f"got {len(sources)} image sources for a batch of {batch}")
        if pruner.budget == 0:
            return self._text_only(input_ids, attention_mask, kwargs)
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
                    source=None if sources is None else sources[b],
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
        pruner.last_stats = PruneStats(
            vision_s=t1 - t0,
            select_s=t2 - t1,
            samples=[
                SampleStats(
                    vision_tokens_full=adapter.full_length(img),
                    vision_tokens=k.count,
                    crops=img.num_crops,
                    kept_index=None if k.index is None else k.index.tolist(),
                )
                for img, k in zip(images, kept)
            ],
        )
        out = self.generate(**adapter.generate_inputs(inputs), **kwargs)
        # HF returns only new tokens for an embeddings prompt; put the prompt ids back in front so
        # callers slice `out[:, input_ids.shape[1]:]` exactly as with the unmodified model.
        if isinstance(out, torch.Tensor):
            return torch.cat([input_ids, out], dim=1)
        out.sequences = torch.cat([input_ids, out.sequences], dim=1)
        return out

    def _text_only(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, kwargs: dict):
        """Budget 0: the image is not encoded and no image token reaches the LLM; the model's own
        `generate` runs on the prompt without them (`FamilyAdapter.text_prompt`), i.e. exactly the
        model on that text prompt (on M-RoPE families, text positions: no gap where the image was)."""
        pruner = self.pruner
        device = input_ids.device
        t0 = now(device)
        text = self.adapter.text_prompt(input_ids, attention_mask)
        t1 = now(device)
        mask = text.attention_mask
        pruner.request = Request(spans=text.spans, attention_mask=mask, prompt_length=mask.shape[1], contexts=[])
        pruner.last_stats = PruneStats(
            vision_s=0.0,
            select_s=t1 - t0,
            samples=[SampleStats(vision_tokens_full=n, vision_tokens=0, crops=0, kept_index=[]) for n in text.removed],
        )
        out = self.generate(input_ids=text.input_ids, attention_mask=mask, **kwargs)
        # the text prompt's ids come back in front: put the caller's (unpruned) prompt there instead
        if isinstance(out, torch.Tensor):
            return torch.cat([input_ids, out[:, text.input_ids.shape[1] :]], dim=1)
        out.sequences = torch.cat([input_ids, out.sequences[:, text.input_ids.shape[1] :]], dim=1)
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
