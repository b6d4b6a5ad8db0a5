"""MMTok and the pre-LLM baselines inside vLLM: a `vllm.general_plugins` plugin (docs/serving.md).

    pip install --no-deps -e .        # into a vLLM environment; the entry point registers the plugin
    LLM(model=..., hf_overrides={"architectures": ["MMTokLlavaForConditionalGeneration"],
                                 "mmtok_method": "mmtok", "mmtok_budget": 64})
    llm.generate({..., "mm_processor_kwargs": {"mmtok_question": q, "mmtok_budget": 16}})

This package imports only torch, vLLM and `mmtok.selection` (the selection maths shared with the
HF path), so it installs beside vLLM's own transformers without the evaluation stack. vLLM is
imported only when `register()` runs (vLLM calls it in every one of its processes).
"""

from __future__ import annotations

# vLLM architecture name -> "module:class" (imported lazily by vLLM's registry)
ARCHITECTURES = {
    "MMTokLlavaForConditionalGeneration": "mmtok.serving.vllm_llava:MMTokLlavaForConditionalGeneration",
    "MMTokLlavaNextForConditionalGeneration": "mmtok.serving.vllm_llava_next:MMTokLlavaNextForConditionalGeneration",
}


def register() -> None:
    """Entry point of the `vllm.general_plugins` group: make our architectures known to vLLM.
    Idempotent (vLLM runs every plugin in the front end, the engine core and each worker)."""
    from vllm import ModelRegistry

    known = set(ModelRegistry.get_supported_archs())
    for name, target in ARCHITECTURES.items():
        if name not in known:
            ModelRegistry.register_model(name, target)
