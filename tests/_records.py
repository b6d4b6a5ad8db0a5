"""Per-sample records for unit tests of code that reads a few of their fields."""

from __future__ import annotations

from mmtok.eval.records import SampleRecord

NEUTRAL = dict(
    task="t", doc_id=0, question="q", answer="", target=None, category=None, vision_tokens=0, vision_tokens_full=0,
    equivalent_tokens=None, crops=1, n_images=1, vision_s=0.0, select_s=0.0, prefill_s=0.0, decode_s=0.0,
    total_s=0.0, new_tokens=0, text_tokens=0, prefill_tokens=0, layer_vision_tokens=None, batch_size=1,
)  # fmt: skip


def sample_record(**given) -> SampleRecord:
    """A SampleRecord with neutral values and the `given` fields."""
    return SampleRecord(**{**NEUTRAL, **given})
