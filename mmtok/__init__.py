"""mmtok: vision-token pruning (MMTok and baselines) for unmodified HuggingFace vision-language models."""

__version__ = "0.1.0"
