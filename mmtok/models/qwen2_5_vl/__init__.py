"""The Qwen2.5-VL family (`qwen2_5_vl`): one image = one "crop" of t*h*w merged tokens, 3-row M-RoPE positions.

Torch-free: only the spec. The code lives beside it: `adapter` (image tokens, pruned requests at
the original M-RoPE positions, the release's question rule), `processor` (the processor without
its video part, min/max pixels), `prompts` (lmms-eval's `qwen2_5_vl` prompt, image resize and stop
strings), `tiny` (a random tiny checkpoint for the tests). See docs/families.md.
"""

from __future__ import annotations

from mmtok.models.spec import FamilySpec

SPECS = (
    FamilySpec(
        model_type="qwen2_5_vl",
        hf_class="Qwen2_5_VLForConditionalGeneration",
        label="Qwen2.5-VL",
        # no CLS token in its ViT; 3-row M-RoPE positions. tower_attention: the substitute the VisionZip
        # authors' Qwen2.5-VL port uses, the attention each token receives in the last ViT block
        # (`tower.received_attention`, docs/families.md)
        traits=frozenset({"tower_attention"}),
        adapter="mmtok.models.qwen2_5_vl.adapter:QwenAdapter",
        rules="mmtok.models.qwen2_5_vl.prompts:RULES",
        tiny="mmtok.models.qwen2_5_vl.tiny:build_tiny",
        processor="mmtok.models.qwen2_5_vl.processor:load_qwen_processor",
        # one protocol, lmms-eval's qwen2_5_vl wrappers': the chat template, no crop or pad
        prompt_formats=("hf",),
        image_preprocess=("crop",),
        pixel_bounds=True,
        tokens_follow_image=True,
        # MMTok's release on Qwen2.5-VL: tau_t 0.01 (alpha 0.5, tau_v 0.2 as on LLaVA); the in-LLM
        # re-selection (mmtok_llm) keeps MMTok's value
        method_defaults={"mmtok": {"tau_t": 0.01}, "mmtok_llm": {"tau_t": 0.01}},
    ),
)
