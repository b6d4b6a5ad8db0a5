"""The valid values of the evaluation protocol switches, in one torch-free place: the config
validator (which must answer before torch loads) and the evaluation layer both read them."""

PROMPT_FORMATS = ("hf", "vicuna_v1")
IMAGE_PREPROCESS = ("crop", "pad")
MULTI_IMAGE = ("error", "first", "middle")
