"""The LLaVA family: LLaVA-1.5 (`llava`, one 336px crop) and LLaVA-NeXT (`llava_next`, base image + anyres tiles).

Torch-free: only the specs. The code lives beside them: `adapter` (CLIP features, assembly of kept
tokens, the spliced request), `prompts` (the `hf` / `vicuna_v1` prompts and `crop` / `pad` images),
`tiny` (random tiny checkpoints for the tests). See docs/families.md.
"""

from __future__ import annotations

from mmtok.models.spec import FamilySpec

_COMMON = dict(
    traits=frozenset({"cls", "tower_attention", "rope_1d"}),  # tower_attention: the CLS row itself
    rules="mmtok.models.llava.prompts:RULES",
    tiny="mmtok.models.llava.tiny:build_tiny",
    prompt_formats=("hf", "vicuna_v1"),
    image_preprocess=("crop", "pad"),
    option_meanings={"vicuna_v1": "the original LLaVA conversation template", "pad": "LLaVA-1.5's pad-to-square"},
    # MMTok's release on LLaVA: tau_t 0.02 (alpha 0.5 and tau_v 0.2 are the method's own defaults);
    # its in-LLM re-selection (mmtok_llm, the paper's Table 14) keeps MMTok's value
    method_defaults={"mmtok": {"tau_t": 0.02}, "mmtok_llm": {"tau_t": 0.02}},
)

SPECS = (
    FamilySpec(
        model_type="llava",
        hf_class="LlavaForConditionalGeneration",
        label="LLaVA-1.5",
        adapter="mmtok.models.llava.adapter:LlavaAdapter",
        # pad-to-square puts whole rows or columns of padding patches on one 336px crop
        # (`prompts.padding_patches`); NeXT's anyres tiles pad differently and have no rule here
        padding_rule=True,
        **_COMMON,
    ),
    FamilySpec(
        model_type="llava_next",
        hf_class="LlavaNextForConditionalGeneration",
        label="LLaVA-NeXT",
        adapter="mmtok.models.llava.adapter:LlavaNextAdapter",
        anyres_tiles=True,
        **_COMMON,
    ),
)
