"""The per-sample record: what one answered request produced (a line of samples.jsonl)."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass
class SampleRecord:
    """One answered request, in lmms-eval's request order. Latencies are seconds per batch: every
    sample of a batch carries its batch's values."""

    task: str
    doc_id: int
    question: str  # the task's prompt text (also what the pruner got)
    answer: str  # decoded, cut at the task's stop strings, stripped
    target: object  # what lmms-eval scored against (filled by `evaluate` from its logged sample)
    category: str | None  # POPE split / MME category; None elsewhere
    vision_tokens: int  # what the LLM received
    vision_tokens_full: int  # unpruned
    equivalent_tokens: float | None  # in-LLM methods: layer-averaged vision tokens; else None
    crops: int
    n_images: int  # images the document had (one reached the LLM, chosen by `multi_image`)
    vision_s: float
    select_s: float
    prefill_s: float
    decode_s: float
    total_s: float
    new_tokens: int  # generated, through EOS
    text_tokens: int  # prompt tokens other than the image placeholders and padding
    prefill_tokens: int  # the prompt the LLM prefilled: text + kept vision tokens
    layer_vision_tokens: list[int] | None  # in-LLM methods: vision tokens in each decoder layer's input
    batch_size: int
    prefill_flops: float | None = None  # the LLM's analytic prefill FLOPs, added by the runner

    def as_dict(self) -> dict:
        return asdict(self)
